"""The DRP pipeline (SimCam/DRP.yaml: ProcessCcd, makeWarp, matchBackgrounds, assembleCoadd) on six simulated
SimCam visits whose skies differ by an offset and a gradient, checked against the simulation's truth."""

from __future__ import annotations


import numpy as np
import pytest
from click.testing import CliRunner

from butler import Butler
from graph import Pipeline
from graph.builder import build_quantum_graph
from graph.cli import cli
from tasks.image import SkyMap
from tasks.instruments.simcam import SimCam, ingest_simulation, simulate_raws
from tasks.instruments.simcam._camera import DETECTOR_SIZE, detector_wcs

PIPELINE = "repo_template/pipelines/SimCam/DRP.yaml"
SKYMAP = "repo_template/skymaps/simcam.yaml"
INPUTS = "SimCam/raw/all,refcats,skymaps"
N_VISITS = 6
SEED = 23


def _missing(truth) -> set[tuple[int, int]]:
    """(visit, detector) raws left out: the central detector of the visit with the darkest sky (the least
    noisy visit, which would otherwise be the best reference) is missing."""
    darkest = min(truth.visit_ids, key=lambda v: truth.visit(v)["sky0"])
    return {(darkest, 4)}


@pytest.fixture(scope="module")
def sim_repo(tmp_path_factory: pytest.TempPathFactory):
    """Six r-band visits (nine detectors, no sky frames; one detector of the darkest visit missing), ingested
    with visits, a reference catalogue and the SimCam skymap."""
    root = tmp_path_factory.mktemp("drp_simcam")
    truth = simulate_raws(root / "sim", n_visits=N_VISITS, seed=SEED, sky_frames=False)
    for visit, detector in _missing(truth):
        truth.raw_path(visit, detector).unlink()
    repo = root / "repo"
    with Butler.create(repo) as butler:
        ingest_simulation(butler, truth)
        SkyMap.from_yaml(SKYMAP).register(butler)
    return truth, repo


def _footprints(truth) -> dict[int, dict[int, tuple[float, float, float, float]]]:
    """Per visit and detector, the box (x_min, x_max, y_min, y_max) of the detector's corners in tract pixels."""
    tract = SkyMap.from_yaml(SKYMAP)[0]
    camera = SimCam().camera
    edge = np.array([-0.5, DETECTOR_SIZE - 0.5])
    cx, cy = np.meshgrid(edge, edge)
    out: dict[int, dict[int, tuple[float, float, float, float]]] = {}
    for visit in truth.visit_ids:
        row = truth.visit(visit)
        out[visit] = {}
        for det in camera:
            wcs = detector_wcs(det, row["ra"], row["dec"], row["rotation"])
            ra, dec = wcs.pixel_to_world_values(cx.ravel(), cy.ravel())
            tx, ty = tract.wcs.world_to_pixel_values(ra, dec)
            out[visit][det.id] = (tx.min(), tx.max(), ty.min(), ty.max())
    return out


def test_warp_quanta_are_the_patches_each_visit_overlaps(sim_repo):
    """makeWarp has a quantum for every (patch, visit) whose detectors overlap the patch, each reading exactly
    the overlapping detectors' calexps; matchBackgrounds one quantum with all of them; assembleCoadd one per
    patch with warps."""
    truth, repo = sim_repo
    tract = SkyMap.from_yaml(SKYMAP)[0]
    footprints = _footprints(truth)
    expected: dict[tuple[int, int], set[int]] = {}
    for visit, boxes in footprints.items():
        for det, (x0, x1, y0, y1) in boxes.items():
            if (visit, det) in _missing(truth):
                continue
            for patch in tract:
                box = patch.outer_bbox
                if x0 < box.x1 - 0.5 and x1 > box.x0 - 0.5 and y0 < box.y1 - 0.5 and y1 > box.y0 - 0.5:
                    expected.setdefault((patch.id, visit), set()).add(det)
    pipeline_graph = Pipeline.from_file(PIPELINE).to_graph()
    with Butler(repo, writeable=False) as butler:
        graph, _ = build_quantum_graph(pipeline_graph, butler, input_collections=INPUTS.split(","), output_run="u/qg")
    got = {
        (q.data_id["patch"], q.data_id["visit"]): {r.data_id["detector"] for r in q.inputs["calExpList"]}
        for q in graph.quanta_for("makeWarp")
    }
    assert got == expected
    (match,) = graph.quanta_for("matchBackgrounds")
    assert len(match.inputs["warps"]) == len(expected)
    patches = {q.data_id["patch"] for q in graph.quanta_for("assembleCoadd")}
    assert patches == {p for p, _ in expected}
    assert len(patches) < len(tract)  # the field covers only part of the tract


@pytest.fixture(scope="module")
def drp_run(sim_repo):
    truth, repo = sim_repo
    result = CliRunner().invoke(
        cli, ["run", "-b", str(repo), "-p", PIPELINE, "-i", INPUTS, "-o", "drp", "--register-dataset-types", "-j", "2"]
    )
    print(result.output)
    assert result.exit_code == 0, result.output
    return truth, repo, result.output


@pytest.mark.slow
def test_every_quantum_succeeds(drp_run):
    _, _, output = drp_run
    assert "all quanta succeeded" in output


def _warp_calibration(butler: Butler, visit: int) -> float:
    """The calibration [nJy / e-] the warps of a visit used: the visit's, from its visitSummary."""
    summary = butler.get("visitSummary", instrument="SimCam", visit=visit, collections="drp")
    return float(summary["visit_calibration_mean"][0])


def _true_sky_njy(truth, butler: Butler, visit: int, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    """The true sky of a visit [nJy, with the warps' calibration] at tract pixels; NaN off its detectors."""
    tract = SkyMap.from_yaml(SKYMAP)[0]
    row = truth.visit(visit)
    ra, dec = tract.wcs.pixel_to_world_values(tx, ty)
    sky = np.full(tx.shape, np.nan)
    calib = _warp_calibration(butler, visit)
    for det in SimCam().camera:
        if (visit, det.id) in _missing(truth):
            continue
        wcs = detector_wcs(det, row["ra"], row["dec"], row["rotation"])
        x, y = wcs.world_to_pixel_values(ra, dec)
        on = (x > -0.5) & (x < DETECTOR_SIZE - 0.5) & (y > -0.5) & (y < DETECTOR_SIZE - 0.5)
        sky[on] = truth.sky_model(visit, det.id, x[on], y[on]) * calib
    return sky


def _reference_visit(butler: Butler) -> int:
    metadata = butler.get("matchBackgrounds_metadata", skymap="simcam", tract=0, band="r", collections="drp")
    return int(metadata["matchBackgrounds.refVisitId"])


@pytest.mark.slow
def test_matched_backgrounds_equal_the_reference_within_a_tenth_of_the_sky_noise(drp_run):
    """Acceptance: after matching, every visit's background minus the reference's, RMS over the tract pixels
    both cover, is <= 0.1 of the per-pixel sky noise.  The backgrounds are the truth sky [e-] times the
    warps' calibration [nJy/e-], plus the fitted difference model for the matched visit."""
    truth, repo, _ = drp_run
    step = 16
    tract = SkyMap.from_yaml(SKYMAP)[0]
    ty, tx = np.mgrid[0 : tract.bbox.height : step, 0 : tract.bbox.width : step].astype(float)
    with Butler(repo, writeable=False) as butler:
        ref = _reference_visit(butler)
        models = {r.data_id["visit"]: r for r in butler.registry.query_datasets("psfMatchedWarpBackgroundDiff",
                                                                                 collections="drp")}
        ref_sky = _true_sky_njy(truth, butler, ref, tx, ty)
        calexp = butler.get("calexp", instrument="SimCam", visit=ref, detector=0, collections="drp")
        noise = float(np.nanmedian(np.sqrt(calexp.variance))) * _warp_calibration(butler, ref)
        ratios, before = {}, {}
        for visit, model_ref in models.items():
            if visit == ref:
                continue
            offset = butler.get(model_ref).get_image(tract.bbox)[::step, ::step]
            sky = _true_sky_njy(truth, butler, visit, tx, ty)
            both = np.isfinite(sky) & np.isfinite(ref_sky)
            ratios[visit] = float(np.sqrt(np.mean((sky + offset - ref_sky)[both] ** 2))) / noise
            before[visit] = float(np.sqrt(np.mean((sky - ref_sky)[both] ** 2))) / noise
    print("background RMS / sky noise after matching:", ratios, "before:", before)
    assert len(ratios) == N_VISITS - 1
    assert max(before.values()) > 1.0  # the visits' skies really differ
    assert max(ratios.values()) <= 0.1, ratios


@pytest.mark.slow
def test_the_automatic_reference_is_a_visit_with_full_coverage(drp_run):
    """The darkest (least noisy) visit lacks its central detector: the reference must be another visit."""
    truth, repo, _ = drp_run
    with Butler(repo, writeable=False) as butler:
        ref = _reference_visit(butler)
    assert not any(visit == ref for visit, _ in _missing(truth))
    assert ref in truth.visit_ids


@pytest.mark.slow
def test_coadd_fluxes_of_isolated_stars_match_the_truth(drp_run):
    """Acceptance: the deepCoadd aperture flux (12 px radius, > 5 PSF sigma; local background from an annulus)
    of isolated r = 17-21 stars agrees with the truth within 1% (median)."""
    truth, repo, _ = drp_run
    tract = SkyMap.from_yaml(SKYMAP)[0]
    objects = truth.objects
    mag = np.asarray(objects["mag_r"])
    tx, ty = tract.wcs.world_to_pixel_values(np.asarray(objects["ra"]), np.asarray(objects["dec"]))
    stars = np.flatnonzero((np.asarray(objects["kind"]) == "star") & (mag > 17) & (mag < 21))
    yy, xx = np.mgrid[-30:31, -30:31]
    ratios = []
    with Butler(repo, writeable=False) as butler:
        for ref in butler.registry.query_datasets("deepCoadd", collections="drp"):
            coadd = butler.get(ref)
            inner = tract.patch_info(ref.data_id["patch"]).inner_bbox
            x0, y0 = coadd.xy0
            for i in stars:
                if not (inner.x0 + 40 <= tx[i] < inner.x1 - 40 and inner.y0 + 40 <= ty[i] < inner.y1 - 40):
                    continue
                distance = np.hypot(tx - tx[i], ty - ty[i])
                if np.any((distance > 0) & (distance < 40) & (mag < mag[i] + 5)):
                    continue  # a neighbour brighter than 1% of the star
                cx, cy = int(round(tx[i])) - x0, int(round(ty[i])) - y0
                stamp = coadd.image[cy - 30 : cy + 31, cx - 30 : cx + 31].astype(float)
                if not np.all(np.isfinite(stamp)):
                    continue
                radius = np.hypot(xx - (tx[i] - x0 - cx), yy - (ty[i] - y0 - cy))
                background = np.median(stamp[(radius > 20) & (radius < 30)])
                flux = float((stamp[radius < 12] - background).sum())
                ratios.append(flux / 10 ** (-0.4 * (mag[i] - 31.4)))
    print(f"{len(ratios)} stars, median coadd/truth flux {np.median(ratios):.4f}")
    assert len(ratios) >= 20
    assert abs(np.median(ratios) - 1.0) <= 0.01
