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

from butler import Butler
from graph.cli import cli
from tasks.image import SkyMap
from tasks.instruments.simcam import ingest_simulation, simulate_raws
from tasks.instruments.simcam.metrics import NOT_SKY, difference_noise_ratios, false_detections, transient_recovery

DRP = "repo_template/pipelines/SimCam/DRP.yaml"
AP = "repo_template/pipelines/SimCam/AP.yaml"
SKYMAP = "repo_template/skymaps/simcam.yaml"
RAW_INPUTS = "SimCam/raw/all,refcats,skymaps"
N_VISITS = 8
TEMPLATE_VISITS = 6
SEED = 23
DETECTORS = range(9)


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
    with Butler(repo, writeable=False) as butler:
        ratios = difference_noise_ratios(butler, truth, "ap", science_visits, DETECTORS)
    print("noise / sqrt(variance):", {k: round(v, 3) for k, v in ratios.items()})
    assert all(0.97 <= r <= 1.05 for r in ratios.values()), ratios


def _dia_sources(butler: Butler, visit: int, det: int):
    return butler.get("diaSrc", instrument="SimCam", visit=visit, detector=det, collections="ap")


@pytest.mark.slow
def test_transients_are_detected_with_their_true_fluxes(ap_run):
    """Acceptance: >= 95% of the transients with S/N >= 10 are detected (a positive DIA source within 2 px) with
    a PSF flux within 3 sigma of the truth [e-]."""
    truth, repo, science_visits, _ = ap_run
    with Butler(repo, writeable=False) as butler:
        recovery = transient_recovery(butler, truth, "ap", science_visits, DETECTORS, match_radius=2.0, min_snr=10.0,
                                      max_pull=3.0)
    print(f"{recovery.detected}/{recovery.total} transients detected, {recovery.good} within 3 sigma; misses: "
          f"{recovery.misses}")
    assert recovery.total >= 20
    assert recovery.good >= 0.95 * recovery.total, recovery.misses


@pytest.mark.slow
def test_few_false_detections(ap_run):
    """Acceptance: <= 5 DIA sources above 5 sigma per million pixels that are neither a transient nor a variable
    star of the truth (unflagged sources; 3 px match radius)."""
    truth, repo, science_visits, _ = ap_run
    with Butler(repo, writeable=False) as butler:
        false = false_detections(butler, truth, "ap", science_visits, DETECTORS, min_snr=5.0, match_radius=3.0)
    print(f"{false.count} false detections over {false.pixels / 1e6:.1f} Mpix = {false.per_megapixel:.2f} per Mpix: "
          f"{false.sources}")
    assert false.per_megapixel <= 5.0


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


@pytest.mark.slow
def test_html_report_shows_the_butler_outputs(ap_run, tmp_path):
    """Acceptance: ``pipetask report --html`` over the ``ap`` chain (the AP run and the template run) shows every
    section, in < 20 s, with the DIA-source count, the per-detector difference noise ratio and the PSF FWHM that
    the butler outputs give (computed here without the report's code) and FWHMs near the simulated seeing."""
    import time

    from astropy.wcs.utils import proj_plane_pixel_scales

    from graph.html_report import read_report_data

    truth, repo, science_visits, _ = ap_run
    out = tmp_path / "report.html"
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["report", "-b", str(repo), "--output-run", "ap", "--html", str(out)])
    seconds = time.perf_counter() - start
    print(result.output, f"report made in {seconds:.1f} s")
    assert result.exit_code == 0, result.output
    sections = read_report_data(out)["sections"]
    assert {key: s["status"] for key, s in sections.items() if s["status"] != "shown"} == {}
    assert seconds < 20
    with Butler(repo, writeable=False) as butler:
        dia_count, ratios = 0, {}
        for visit in science_visits:
            for det in DETECTORS:
                dia_count += len(_dia_sources(butler, visit, det))
                diff = butler.get("subtractedMeasuredExposure", instrument="SimCam", visit=visit, detector=det,
                                  collections="ap")
                sky = ~diff.mask.get_plane(NOT_SKY + ["DETECTED", "DETECTED_NEGATIVE"], missing_ok=True)
                sky &= np.isfinite(diff.image) & (diff.variance > 0)
                ratios[(visit, det)] = float(np.std(diff.image[sky] / np.sqrt(diff.variance[sky])))
        fwhm = {}
        for ref in butler.query_datasets("calexp", collections="ap", find_first=False):
            calexp = butler.get(ref)
            ixx, iyy, ixy = calexp.psf.compute_shape(*calexp.bbox.center)
            scale = 3600.0 * float(np.sqrt(np.prod(proj_plane_pixel_scales(calexp.wcs.celestial))))
            fwhm[(ref.run, ref.data_id["visit"], ref.data_id["detector"])] = 2.3548 * (ixx * iyy - ixy**2) ** 0.25 * scale
    assert sections["dia_sources"]["data"]["count"] == dia_count > 0
    shown_ratios = {(r["visit"], r["detector"]): r["ratio"] for r in sections["noise_ratio"]["data"]["rows"]}
    assert shown_ratios == pytest.approx(ratios, rel=1e-6)
    shown_fwhm = {(r["run"], r["visit"], r["detector"]): r["fwhm_arcsec"] for r in sections["psf_fwhm"]["data"]["rows"]}
    assert len(shown_fwhm) == (3 + len(science_visits)) * len(DETECTORS)  # the template run has 3 visits
    assert shown_fwhm == pytest.approx(fwhm, rel=1e-3)
    for visit in {v for _, v, _ in shown_fwhm}:
        median = np.median([f for (_, v, _), f in shown_fwhm.items() if v == visit])
        assert median == pytest.approx(truth.visit(visit)["fwhm0"], rel=0.05), visit
