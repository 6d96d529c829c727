"""The SDSS acceptance of the DRP pipeline: repo_template/pipelines/Sdss/DRP.yaml run with `pipetask run` on the
two r-band frames of ../shared/data/sdss_stripe82_lsst_demo (runs 4192 and 6377, CCD r4) and the stripe82_demo
skymap, then the AP pipeline (repo_template/pipelines/Sdss/AP.yaml) on the run-6377 detector against the run-4192
template coadd: its template (GetTemplateTask), difference image and DIA sources.

One module-scoped fixture builds the repository and runs both pipelines once (about a minute); the tests only
read the outputs.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from butler import Butler, FileDataset
from graph.cli import cli
from graph.execute import report_from_registry
from tasks.image import PhotoCalib, SkyMap
from tasks.instruments import define_visits, ingest_raws

PIPELINE = "repo_template/pipelines/Sdss/DRP.yaml"
SKYMAP = "repo_template/skymaps/stripe82_demo.yaml"
SKYMAP_NAME = "stripe82_demo"
INPUTS = "SDSS/raw/all,refcats,skymaps"
R4 = 15  # detector id of CCD r4
VISIT_A, VISIT_B = 419220300, 637720399  # runs 4192 and 6377, r band (SDSS visit ids equal exposure ids)
N_PATCHES = 9  # 3 x 3 patches; both frames overlap every patch
DRP_CONFIG = [f"assembleTemplateCoadd:selectVisits=[{VISIT_A}]"]
AP_PIPELINE = "repo_template/pipelines/Sdss/AP.yaml"
# Pixels with any of these planes (in either image) are not sky.
NOT_SKY = ("DETECTED", "DETECTED_NEGATIVE", "NO_DATA", "BAD", "SAT", "EDGE", "CR", "INTRP", "SUSPECT", "CLIPPED")
MATCH_TOLERANCE = 0.05  # |median(A - B)| of source-free sky / per-pixel noise
STAR_APERTURE = 12.0  # pixels (4.75"; the r PSF FWHM is 1.1-1.2")
STAR_ANNULUS = (20.0, 30.0)  # pixels: local sky of the aperture photometry


def _report_counts(output: str) -> dict[str, dict[str, int]]:
    """The per-label status counts of the result table `pipetask run` prints."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["task", "succeeded"])
    columns = lines[header].split()[1:]
    counts = {}
    for line in lines[header + 1 :]:
        fields = line.split()
        if len(fields) == len(columns) + 1 and all(re.fullmatch(r"\d+", f) for f in fields[1:]):
            counts[fields[0]] = dict(zip(columns, map(int, fields[1:]), strict=True))
    return counts


def _run(args: list[str]) -> tuple[str, float]:
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["run", *args])
    elapsed = time.perf_counter() - start
    print(result.output)
    assert result.exit_code == 0, result.output
    return result.output, elapsed


@dataclass
class DrpRun:
    root: Path
    drp_output: str
    template_output: str
    drp_log: str
    template_log: str


@pytest.fixture(scope="module")
def drp(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> DrpRun:
    """The 10 SDSS frames, their visits, the reference catalogue and the stripe82_demo skymap in a new
    repository; Sdss/DRP.yaml run on the r band (template coadd of run 4192 only); then Sdss/AP.yaml on the
    run-6377 r4 detector."""
    demo = shared_data / "sdss_stripe82_lsst_demo"
    tmp = tmp_path_factory.mktemp("drp_sdss")
    root = tmp / "repo"
    with Butler.create(root) as butler:
        butler.register_dataset_type("refcat", [], "AstropyFitsTable")
        butler.ingest(
            FileDataset(demo / "ref_cat" / "stars.fits", "refcat", {}), transfer="symlink", run="refcats/stripe82"
        )
        butler.collection_chain("refcats", ["refcats/stripe82"])
        report = ingest_raws(butler, [demo / "input"], transfer="symlink")
        assert report.ok, report.failures
        define_visits(butler, "Sdss")
        SkyMap.from_yaml(SKYMAP).register(butler)
    overrides = [arg for config in DRP_CONFIG for arg in ("-c", config)]
    drp_log, drp_time = _run(
        ["-b", str(root), "-p", PIPELINE, "-i", INPUTS, "-o", "drp", "-d", "band = 'r'",
         "--register-dataset-types", "-j", "2", *overrides]
    )
    template_log, template_time = _run(
        ["-b", str(root), "-p", AP_PIPELINE, "-i", "drp", "-o", "ap",
         "-d", f"visit = {VISIT_B} AND detector = {R4}", "--register-dataset-types"]
    )
    print(f"wall time: DRP {drp_time:.1f} s, AP {template_time:.1f} s")
    return DrpRun(root, "drp", "ap", drp_log, template_log)


def _not_sky(exposure) -> np.ndarray:
    mask = exposure.mask
    planes = [name for name in NOT_SKY if name in mask.planes]
    return ((mask.array & mask.get_plane_bitmask(planes)) != 0) | ~np.isfinite(exposure.image) | ~(
        exposure.variance > 0
    )


def _warp_differences(butler: Butler, dataset_type: str, collections: str) -> dict[int, tuple[np.ndarray, float]]:
    """Per patch: the source-free sky pixels of (visit A - visit B) [nJy] and the per-pixel noise sigma (the
    smaller of the two warps' median sqrt(variance) over those pixels)."""
    out = {}
    for patch in range(N_PATCHES):
        warps = [
            butler.get(dataset_type, instrument="SDSS", visit=visit, skymap=SKYMAP_NAME, tract=0, patch=patch,
                       collections=collections)
            for visit in (VISIT_A, VISIT_B)
        ]
        assert warps[0].bbox == warps[1].bbox
        assert all(w.photo_calib == PhotoCalib(1.0) for w in warps)  # nJy
        sky = ~_not_sky(warps[0]) & ~_not_sky(warps[1])
        sigma = min(float(np.median(np.sqrt(w.variance[sky]))) for w in warps)
        out[patch] = ((warps[0].image[sky] - warps[1].image[sky]).astype(np.float64), sigma)
    return out


def _median_offsets(differences: dict[int, tuple[np.ndarray, float]]) -> tuple[dict[int, float], float]:
    """Per patch and overall: median(A - B) / sigma (overall: all patches' pixels, the median sigma)."""
    per_patch = {p: float(np.median(d)) / s for p, (d, s) in differences.items()}
    overall = float(np.median(np.concatenate([d for d, _ in differences.values()])))
    sigma = float(np.median([s for _, s in differences.values()]))
    return per_patch, overall / sigma


def _print_offsets(title: str, differences: dict[int, tuple[np.ndarray, float]]) -> tuple[dict[int, float], float]:
    per_patch, overall = _median_offsets(differences)
    print(title)
    for patch, (d, sigma) in differences.items():
        print(f"  patch {patch}: {d.size:7d} px  median(A-B) {np.median(d):8.3f} nJy  sigma {sigma:6.2f} nJy  "
              f"-> {per_patch[patch]:+.4f} sigma")
    print(f"  overall: {overall:+.4f} sigma")
    return per_patch, overall


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_quantum_succeeds(drp):
    """Acceptance 1: every quantum of the r-band DRP (and of the AP pipeline) succeeds; none fails, none has no
    work.  (The graph builder prunes 58 of the 60 (visit, detector) data IDs of characterizeImage: the r
    visits' other detectors have no r-band raw -- they are not quanta.)"""
    counts = _report_counts(drp.drp_log)
    print(counts)
    expected = {"isr": 2, "characterizeImage": 2, "calibrate": 2, "makeWarp": 2 * N_PATCHES, "matchBackgrounds": 1,
                "assembleCoadd": N_PATCHES, "assembleTemplateCoadd": N_PATCHES}
    for label, n in expected.items():
        assert counts[label]["succeeded"] == n, (label, counts[label])
    for label, row in counts.items():
        assert row["failed"] == row["blocked"] == row["no_work"] == row["not_run"] == 0, (label, row)
    assert "all quanta succeeded" in drp.drp_log
    ap_counts = _report_counts(drp.template_log)
    for label in ("isr", "characterizeImage", "calibrate", "getTemplate", "subtractImages", "detectAndMeasure"):
        assert ap_counts[label]["succeeded"] == 1, (label, ap_counts)
    assert "all quanta succeeded" in drp.template_log
    with Butler(drp.root, writeable=False) as butler:
        run = butler.registry.get_collection_chain(drp.drp_output)[0]
        rows = {row["task"]: row for row in report_from_registry(butler, output_run=run)}
        assert all(rows[label]["succeeded"] == n and rows[label]["failed"] == 0 for label, n in expected.items())
        # The template coadd has run 4192 only, the deep coadd both runs.
        for patch in range(N_PATCHES):
            ids = dict(skymap=SKYMAP_NAME, tract=0, patch=patch, band="r", collections=drp.drp_output)
            assert sorted(butler.get("templateCoadd.coaddInputs", **ids)["visit"]) == [VISIT_A]
            assert sorted(butler.get("deepCoadd.coaddInputs", **ids)["visit"]) == [VISIT_A, VISIT_B]


@pytest.mark.slow
def test_background_matched_warps_agree_in_source_free_sky(drp):
    """Acceptance 2: in the pixels both runs' psfMatchedWarpMatched cover and neither marks (no DETECTED,
    NO_DATA, BAD, SAT, ...), median(run 4192 - run 6377) is within 0.05 sigma of zero in every patch and
    overall (sigma: the per-pixel noise, median sqrt(variance) of a warp).  Before matching (psfMatchedWarp,
    skies restored) the runs differ by ~415 nJy = 27 sigma."""
    with Butler(drp.root, writeable=False) as butler:
        metadata = butler.get("matchBackgrounds_metadata", skymap=SKYMAP_NAME, tract=0, band="r",
                              collections=drp.drp_output)["matchBackgrounds"]
        print(f"reference visit {metadata['refVisitId']}; matched model degree "
              f"{metadata[f'visit_{VISIT_A}_order']}, {metadata[f'visit_{VISIT_A}_nGoodBins']} bins, reduced "
              f"chi2 {metadata[f'visit_{VISIT_A}_chi2']:.1f}, mean offset {metadata[f'visit_{VISIT_A}_meanOffset']:.1f}")
        before = _warp_differences(butler, "psfMatchedWarp", drp.drp_output)
        after = _warp_differences(butler, "psfMatchedWarpMatched", drp.drp_output)
    _, overall_before = _print_offsets("before matching (psfMatchedWarp):", before)
    per_patch, overall = _print_offsets("after matching (psfMatchedWarpMatched):", after)
    assert all(d.size > 50_000 for d, _ in after.values())
    assert abs(overall_before) > 1.0  # the skies really differ (measured 26.7 sigma)
    assert abs(overall) <= MATCH_TOLERANCE  # measured -0.004
    assert max(abs(v) for v in per_patch.values()) <= MATCH_TOLERANCE, per_patch  # measured <= 0.022


def _template_and_calexp(drp: DrpRun):
    data_id = {"instrument": "SDSS", "visit": VISIT_B, "detector": R4}
    with Butler(drp.root, writeable=False) as butler:
        template = butler.get("template", data_id, collections=drp.template_output)
        calexp = butler.get("calexp", data_id, collections=drp.drp_output)
        src = butler.get("src", data_id, collections=drp.drp_output)
        metadata = butler.get("getTemplate_metadata", data_id, collections=drp.template_output)["getTemplate"]
    return template, calexp, src, metadata


@pytest.mark.slow
def test_template_covers_the_detector_in_njy(drp):
    """Acceptance 3a: the run-4192 template of the run-6377 r4 frame covers most of it (the runs are offset by
    ~33 px along and ~4 px across the scan), is on the detector's pixel grid and in nJy."""
    template, calexp, _, metadata = _template_and_calexp(drp)
    coverage = float(metadata["coverageFraction"])
    no_data = template.mask.get_plane("NO_DATA")
    print(f"template coverage {coverage:.4f} from {metadata['numPatches']} patches; NO_DATA {no_data.mean():.4f}")
    assert coverage > 0.9  # measured 0.961
    assert coverage == pytest.approx(1.0 - no_data.mean())
    assert np.isnan(template.image[no_data]).all() and np.isfinite(template.image[~no_data]).all()
    assert template.bbox == calexp.bbox
    assert template.photo_calib == PhotoCalib(1.0)
    assert template.filter.band == "r"
    # Per-pixel noise of a single-visit template in nJy: that of a calibrated SDSS r frame (run 6377's here).
    sky = ~_not_sky(template) & ~_not_sky(calexp)
    template_sigma = float(np.median(np.sqrt(template.variance[sky])))
    calexp_sigma = float(np.median(np.sqrt(calexp.variance[sky]))) * calexp.photo_calib.calibration_mean
    print(f"per-pixel noise: template {template_sigma:.1f} nJy, calexp {calexp_sigma:.1f} nJy")
    assert 0.5 < template_sigma / calexp_sigma < 2.0


def _aperture_flux(image: np.ndarray, x: float, y: float) -> float:
    """Sum within STAR_APERTURE of (x, y) minus the median of the STAR_ANNULUS times the aperture area (NaN when
    a pixel is missing)."""
    r_out = int(STAR_ANNULUS[1])
    xi, yi = int(round(x)), int(round(y))
    cut = image[yi - r_out : yi + r_out + 1, xi - r_out : xi + r_out + 1]
    yy, xx = np.mgrid[-r_out : r_out + 1, -r_out : r_out + 1]
    r = np.hypot(xx + xi - x, yy + yi - y)
    aperture = r <= STAR_APERTURE
    annulus = (r >= STAR_ANNULUS[0]) & (r <= STAR_ANNULUS[1])
    if not np.isfinite(cut).all():
        return float("nan")
    return float(cut[aperture].sum() - np.median(cut[annulus]) * aperture.sum())


@pytest.mark.slow
def test_template_agrees_with_the_calexp_in_bright_isolated_stars(drp):
    """Acceptance 3b: large-aperture fluxes (12 px = 4.75") of bright (S/N > 100), unsaturated, isolated
    (no other source within 40 px) stars (PSF candidates) agree between the template and the run-6377 calexp
    calibrated to nJy: median ratio within 5% of 1."""
    template, calexp, src, _ = _template_and_calexp(drp)
    science = calexp.photo_calib.calibrate_image(calexp.masked_image).image
    x = np.asarray(src["centroid_x"], dtype=float)
    y = np.asarray(src["centroid_y"], dtype=float)
    separation = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(separation, np.inf)
    height, width = science.shape
    margin = STAR_ANNULUS[1] + 1
    stars = (
        np.asarray(src["calib_psf_candidate"], dtype=bool)
        & (np.asarray(src["psfFlux_nJy"]) > 100 * np.asarray(src["psfFlux_nJyErr"]))
        & ~np.asarray(src["flag_saturated"], dtype=bool)
        & ~np.asarray(src["flag_edge"], dtype=bool)
        & (separation.min(axis=1) > 40)
        & (x > margin) & (x < width - margin) & (y > margin) & (y < height - margin)
    )
    ratios, fluxes = [], []
    for i in np.flatnonzero(stars):
        f_science = _aperture_flux(science, x[i], y[i])
        f_template = _aperture_flux(template.image, x[i], y[i])
        if np.isfinite(f_science) and np.isfinite(f_template):
            ratios.append(f_template / f_science)
            fluxes.append(f_science)
    ratios = np.array(ratios)
    median = float(np.median(ratios))
    print(f"{len(ratios)} stars ({min(fluxes):.3g}-{max(fluxes):.3g} nJy): template / calexp flux median "
          f"{median:.4f}, 16-84% {np.percentile(ratios, 16):.4f}-{np.percentile(ratios, 84):.4f}")
    assert len(ratios) >= 10  # measured 17
    assert median == pytest.approx(1.0, abs=0.05)  # measured 1.004


@pytest.mark.slow
def test_template_and_calexp_sky_levels_are_near_zero(drp):
    """Acceptance 3c: both are background-subtracted: the median of the source-free pixels both cover is within
    0.05 sigma (per-pixel noise of the calexp in nJy) of zero in each, and they agree to that level."""
    template, calexp, _, _ = _template_and_calexp(drp)
    science = calexp.photo_calib.calibrate_image(calexp.masked_image)
    sky = ~_not_sky(template) & ~_not_sky(calexp)
    sigma = float(np.median(np.sqrt(science.variance[sky])))
    template_sky = float(np.median(template.image[sky]))
    calexp_sky = float(np.median(science.image[sky]))
    difference = float(np.median(template.image[sky] - science.image[sky]))
    print(f"sky over {sky.sum()} px: template {template_sky:.2f} nJy, calexp {calexp_sky:.2f} nJy, median "
          f"difference {difference:.2f} nJy; sigma {sigma:.1f} nJy")
    assert sky.mean() > 0.5
    assert abs(template_sky) < MATCH_TOLERANCE * sigma  # measured -0.95 nJy = 0.010 sigma
    assert abs(calexp_sky) < MATCH_TOLERANCE * sigma  # measured 1.44 nJy = 0.015 sigma
    assert abs(difference) < MATCH_TOLERANCE * sigma


@pytest.mark.slow
def test_ap_difference_noise_matches_its_variance_plane(drp):
    """Issue 7 acceptance on SDSS: the decorrelated run-6377 - run-4192 difference image's noise over sky
    pixels (no source detected on the calexp or the difference, no bad planes in either) is within [0.97, 1.05]
    of sqrt(variance) (robust: 1.4826 MAD of difference / sqrt(variance))."""
    data_id = {"instrument": "SDSS", "visit": VISIT_B, "detector": R4}
    with Butler(drp.root, writeable=False) as butler:
        measured = butler.get("subtractedMeasuredExposure", data_id, collections=drp.template_output)
        calexp = butler.get("calexp", data_id, collections=drp.template_output)
        metadata = butler.get("subtractImages_metadata", data_id, collections=drp.template_output)
        dia = butler.get("diaSrc", data_id, collections=drp.template_output)
    sky = ~_not_sky(measured) & ~_not_sky(calexp)
    z = measured.image[sky] / np.sqrt(measured.variance[sky])
    ratio = 1.4826 * float(np.median(np.abs(z - np.median(z))))
    print(f"{sky.sum()} sky px: noise / sqrt(variance) {ratio:.3f}; mode {metadata['subtractImages.mode']}, kernel "
          f"sum {metadata['subtractImages.kernelSum']:.4f}, spatial order "
          f"{metadata['subtractImages:makeKernel.spatialKernelOrder']}, star residual "
          f"{metadata['subtractImages.differenceFootprintRatioMean']:.3f}; {len(dia)} DIA sources")
    assert sky.mean() > 0.5
    assert 0.97 <= ratio <= 1.05
