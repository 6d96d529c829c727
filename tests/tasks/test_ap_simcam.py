"""The AP pipeline (SimCam/AP.yaml: ProcessCcd, getTemplate, subtractImages, detectAndMeasure) on simulated
SimCam visits with injected transients, against a template coadd of the good-seeing transient-free visits, checked
against the simulation's truth.

Eight r-band visits of the nine detectors: the first six hold no transients (``transients_from=6``); the three
of them with the best seeing (0.70-0.77 arcsec with seed 23) make the template coadd (SimCam/DRP.yaml's template
coaddition run on them), and the last two (1.06 and 1.27 arcsec) are the science visits, so the template is
convolved (the science-convolving direction is exercised on the DECam stamps and SDSS).  Every transient of the
simulation is in the last visit, about half of them in the one before.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.spatial import cKDTree

from butler import Butler
from graph.cli import cli
from tasks.image import SkyMap
from tasks.instruments.simcam import ingest_simulation, simulate_raws

DRP = "repo_template/pipelines/SimCam/DRP.yaml"
AP = "repo_template/pipelines/SimCam/AP.yaml"
SKYMAP = "repo_template/skymaps/simcam.yaml"
RAW_INPUTS = "SimCam/raw/all,refcats,skymaps"
N_VISITS = 8
TEMPLATE_VISITS = 6
SEED = 23
DETECTORS = range(9)
# Pixels of the difference that are not sky for the noise criterion (besides the truth's source-free mask).
NOT_SKY = ["NO_DATA", "BAD", "SAT", "SAT_TEMPLATE", "EDGE", "CR", "INTRP", "SUSPECT"]


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(cli, ["run", *args])
    print(result.output)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def ap_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ap_simcam")
    truth = simulate_raws(root / "sim", n_visits=N_VISITS, seed=SEED, sky_frames=False, transients_from=TEMPLATE_VISITS)
    repo = root / "repo"
    with Butler.create(repo) as butler:
        ingest_simulation(butler, truth)
        SkyMap.from_yaml(SKYMAP).register(butler)
    visits = truth.visit_ids
    template_visits = visits[:TEMPLATE_VISITS]
    science_visits = visits[TEMPLATE_VISITS:]
    good_seeing = sorted(template_visits, key=lambda v: truth.visit(v)["fwhm0"])[:3]
    drp_log = _run([
        "-b", str(repo), "-p", f"{DRP}#isr,characterizeImage,calibrate,templateCoaddition", "-i", RAW_INPUTS,
        "-o", "templates", "-d", f"visit IN ({', '.join(map(str, good_seeing))})",
        "--register-dataset-types", "-j", "2",
    ])
    ap_log = _run([
        "-b", str(repo), "-p", AP, "-i", f"{RAW_INPUTS},templates", "-o", "ap",
        "-d", f"visit IN ({', '.join(map(str, science_visits))})", "--register-dataset-types", "-j", "2",
    ])
    return truth, repo, science_visits, drp_log + ap_log


@pytest.mark.slow
def test_every_quantum_succeeds(ap_run):
    *_, log = ap_run
    assert log.count("all quanta succeeded") == 2, log


@pytest.mark.slow
def test_decorrelated_difference_noise_matches_its_variance_plane(ap_run):
    """Acceptance: on the truth's source-free pixels, std(difference) / sqrt(variance) is in [0.97, 1.05] on
    every science detector."""
    truth, repo, science_visits, _ = ap_run
    ratios = {}
    with Butler(repo, writeable=False) as butler:
        for visit in science_visits:
            for det in DETECTORS:
                diff = butler.get("difference", instrument="SimCam", visit=visit, detector=det, collections="ap")
                free = truth.source_free_mask(visit, det)
                free &= ~diff.mask.get_plane(NOT_SKY, missing_ok=True)
                free &= np.isfinite(diff.image) & (diff.variance > 0)
                z = diff.image[free] / np.sqrt(diff.variance[free])
                ratios[(visit, det)] = float(np.std(z))
    print("noise / sqrt(variance):", {k: round(v, 3) for k, v in ratios.items()})
    assert all(0.97 <= r <= 1.05 for r in ratios.values()), ratios


def _dia_sources(butler: Butler, visit: int, det: int):
    return butler.get("diaSrc", instrument="SimCam", visit=visit, detector=det, collections="ap")


@pytest.mark.slow
def test_transients_are_detected_with_their_true_fluxes(ap_run):
    """Acceptance: >= 95% of the transients with S/N >= 10 are detected (a positive DIA source within 2 px) with
    a PSF flux within 3 sigma of the truth [e-]."""
    truth, repo, science_visits, _ = ap_run
    found = good = total = 0
    misses = []
    with Butler(repo, writeable=False) as butler:
        for visit in science_visits:
            for det in DETECTORS:
                rows = truth.sources_on(visit, det)
                transients = rows[rows["kind"] == "transient"]
                if not len(transients):
                    continue
                dia = _dia_sources(butler, visit, det)
                positive = dia[np.asarray(dia["psfFlux"]) > 0]
                tree = cKDTree(np.column_stack([positive["centroid_x"], positive["centroid_y"]]))
                for tr in transients:
                    distance, index = tree.query([tr["x"], tr["y"]])
                    if not np.isfinite(distance) or distance > 2.0:
                        total += 1
                        misses.append((visit, det, int(tr["id"]), "not detected"))
                        continue
                    source = positive[index]
                    if not source["psfFlux"] / source["psfFluxErr"] >= 10:
                        continue
                    total += 1
                    found += 1
                    pull = (source["psfFlux"] - tr["flux"]) / source["psfFluxErr"]
                    if abs(pull) <= 3.0:
                        good += 1
                    else:
                        misses.append((visit, det, int(tr["id"]), f"flux {source['psfFlux']:.0f} vs {tr['flux']:.0f} "
                                       f"+- {source['psfFluxErr']:.0f} (pull {pull:.1f})"))
    print(f"{found}/{total} transients detected, {good} within 3 sigma; misses: {misses}")
    assert total >= 20
    assert good >= 0.95 * total, misses


@pytest.mark.slow
def test_few_false_detections(ap_run):
    """Acceptance: <= 5 DIA sources above 5 sigma per million pixels that are neither a transient nor a variable
    star of the truth (unflagged sources; 3 px match radius)."""
    truth, repo, science_visits, _ = ap_run
    false, pixels = 0, 0
    listed = []
    with Butler(repo, writeable=False) as butler:
        for visit in science_visits:
            for det in DETECTORS:
                rows = truth.sources_on(visit, det)
                real = rows[np.isin(rows["kind"], ["transient", "variable"])]
                dia = _dia_sources(butler, visit, det)
                significant = np.abs(np.asarray(dia["snr"])) >= 5
                flags = np.zeros(len(dia), bool)
                for name in ("flag_edge", "flag_saturated", "flag_bad"):
                    flags |= np.asarray(dia[name], bool)
                candidates = dia[significant & ~flags]
                if len(real):
                    tree = cKDTree(np.column_stack([real["x"], real["y"]]))
                    distance, _ = tree.query(np.column_stack([candidates["centroid_x"], candidates["centroid_y"]]))
                    candidates = candidates[distance > 3.0]
                false += len(candidates)
                listed += [(visit, det, round(float(s["centroid_x"])), round(float(s["centroid_y"])),
                            round(float(s["snr"]), 1), bool(s["isDipole"])) for s in candidates]
                diff = butler.get("difference", instrument="SimCam", visit=visit, detector=det, collections="ap")
                pixels += int(np.isfinite(diff.image).sum())
    rate = false / (pixels / 1e6)
    print(f"{false} false detections over {pixels / 1e6:.1f} Mpix = {rate:.2f} per Mpix: {listed}")
    assert rate <= 5.0


@pytest.mark.slow
def test_kernel_sum_equals_the_true_flux_ratio(ap_run):
    """Acceptance: the kernel sum is the true ratio of the science counts [e-] to the template's nJy within 1%."""
    truth, repo, science_visits, _ = ap_run
    errors = {}
    with Butler(repo, writeable=False) as butler:
        for visit in science_visits:
            calib = float(truth.visit(visit)["calib_nJy_per_count"])
            for det in DETECTORS:
                metadata = butler.get("subtractImages_metadata", instrument="SimCam", visit=visit, detector=det,
                                      collections="ap")
                assert metadata["subtractImages.mode"] == "convolveTemplate"
                expected = 1.0 / calib
                errors[(visit, det)] = float(metadata["subtractImages.kernelSum"]) / expected - 1.0
    print("kernel sum / truth - 1:", {k: round(v, 4) for k, v in errors.items()})
    assert max(abs(e) for e in errors.values()) <= 0.01, errors
