"""The sky-correction acceptance on SimCam (issue 8): sky frames built from some visits, certified into a CALIBRATION
collection, and the full-focal-plane sky correction of the other visits, checked against the simulation's truth.

Eight r-band visits of the nine detectors with sky frames on (``simulate_raws(..., sky_frames=True)``): every
visit's sky is ``sky0 (1 + gx fx + gy fy) + s_v P_d(x, y)`` [e-], a focal-plane gradient plus a fixed pattern per
detector scaled by a per-visit ``s_v`` (1-4% of the sky).  The pipeline, as a user runs it:

1. SimCam/ProcessCcd.yaml on every visit (calexp, calexpBackground);
2. SimCam/SkyFrame.yaml on the first five visits -> ``skyFrame`` per detector, then
   ``butler certify-calibrations ... SimCam/calib skyFrame``;
3. SimCam/SkyCorrection.yaml on the last three visits with ``-i processed,SimCam/calib`` (the sky frames are
   found as a calibration prerequisite), and once more on one of them without detector 4.

Truth: the sky frame is the mean over the sky-frame visits of ``s_w R(P) / L_w`` (``R``: what the large-scale
focal-plane model leaves of a pattern; ``L_w`` the sky level the skyFrameVisit quanta recorded), so the scale
SkyCorrection must find for a visit is ``k_v = s_v / mean_w(s_w / L_w)``; the sky model ``calexpBackground +
skyCorr`` must be the true sky; sigma is the per-pixel noise, sqrt of the calexp variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from butler import Butler
from butler.cli import cli as butler_cli
from graph.cli import cli
from tasks.image import Exposure, FocalPlaneBackground, MaskedImage
from tasks.instruments.simcam import SimCam, SimulationTruth, ingest_simulation, simulate_raws, sky_frame
from tasks.sky_frame import SkyFrameVisitConfig

PROCESS_CCD = "repo_template/pipelines/SimCam/ProcessCcd.yaml"
SKY_FRAME = "repo_template/pipelines/SimCam/SkyFrame.yaml#skyFrames"
SKY_CORRECTION = "repo_template/pipelines/SimCam/SkyCorrection.yaml#skyCorr"
N_VISITS = 8
N_SKY_FRAME_VISITS = 5
SEED = 31
MISSING_DETECTOR = 4
# Strips along the two sides of every boundary between adjacent detectors, in mosaic pixels (8 detector pixels):
# 8 (64 detector pixels, within a quarter of bgModel2's 256-pixel superpixels) for the noisy corrected image, whose
# strip medians then scatter by ~0.007 sigma; 4 for the noise-free model.
STRIP = 8
MODEL_STRIP = 4
STRIP_END_MARGIN = 8  # mosaic pixels left out at both ends of a boundary (the corners of the gaps)
PAIRS = [(d, d + 1) for d in range(9) if d % 3 < 2] + [(d, d + 3) for d in range(6)]  # (left, right), (below, above)

pytestmark = pytest.mark.slow


@dataclass
class SkyRun:
    truth: SimulationTruth
    repo: Path
    sky_frame_visits: list[int]
    corrected_visits: list[int]
    logs: list[str]


def _invoke(command, args: list[str]) -> str:
    result = CliRunner().invoke(command, args)
    print(result.output)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def sky_run(tmp_path_factory: pytest.TempPathFactory) -> SkyRun:
    root = tmp_path_factory.mktemp("sky_correction_simcam")
    truth = simulate_raws(root / "sim", n_visits=N_VISITS, seed=SEED, sky_frames=True)
    repo = root / "repo"
    with Butler.create(repo) as butler:
        ingest_simulation(butler, truth)
    visits = truth.visit_ids
    sky_frame_visits, corrected = visits[:N_SKY_FRAME_VISITS], visits[N_SKY_FRAME_VISITS:]
    b = ["-b", str(repo), "--register-dataset-types"]
    logs = [
        _invoke(cli, ["run", *b, "-p", PROCESS_CCD, "-i", "SimCam/raw/all,refcats", "-o", "processed", "-j", "2"]),
        _invoke(cli, ["run", *b, "-p", SKY_FRAME, "-i", "processed", "-o", "SimCam/skyFrames", "-j", "2",
                      "-d", f"visit IN ({', '.join(map(str, sky_frame_visits))})"]),
        _invoke(butler_cli, ["certify-calibrations", str(repo), "SimCam/skyFrames", "SimCam/calib", "skyFrame"]),
        _invoke(cli, ["run", *b, "-p", SKY_CORRECTION, "-i", "processed,SimCam/calib", "-o", "skyCorr", "-j", "2",
                      "-d", f"visit IN ({', '.join(map(str, corrected))})"]),
        _invoke(cli, ["run", *b, "-p", SKY_CORRECTION, "-i", "processed,SimCam/calib", "-o", "skyCorrMissing",
                      "-d", f"visit = {corrected[0]} AND detector != {MISSING_DETECTOR}"]),
    ]
    return SkyRun(truth, repo, sky_frame_visits, corrected, logs)


def _sky_levels(butler: Butler, visits: list[int]) -> dict[int, float]:
    return {v: float(butler.get("skyFrameVisit_metadata", instrument="SimCam", visit=v,
                                collections="SimCam/skyFrames")["skyFrameVisit.skyLevel"]) for v in visits}


def _frame_normalisation(run: SkyRun, butler: Butler) -> float:
    """mean_w(s_w / L_w) over the sky-frame visits: the amplitude of the pattern in the sky frame."""
    levels = _sky_levels(butler, run.sky_frame_visits)
    return float(np.mean([run.truth.visit(v)["sky_frame_scale"] / levels[v] for v in run.sky_frame_visits]))


def test_every_quantum_succeeds_and_sky_frames_are_certified(sky_run):
    processed, frames, certified, corrected, missing = sky_run.logs
    for log in (processed, frames, corrected, missing):
        assert "all quanta succeeded" in log
    assert "Certified 9 'skyFrame' dataset(s)" in certified


def test_sky_frames_are_the_normalised_high_passed_pattern(sky_run):
    """Each detector's sky frame correlates (r > 0.99) with R(P), the true pattern less the large-scale
    focal-plane model of it (bgModel1, evaluated on the noiseless pattern), binned like the frame, and its
    amplitude is mean_w(s_w / L_w) within 3%."""
    camera = SimCam().camera
    config = SkyFrameVisitConfig()
    yy, xx = np.mgrid[0:1024, 0:1024]
    patterns = [Exposure(MaskedImage(sky_frame(d.id, xx, yy).astype(np.float32)), detector=d) for d in camera]
    model = FocalPlaneBackground.fromCamera(config.bgModel, camera)
    for exposure in patterns:
        model.addCcd(exposure)
    n = 1024 // config.binning
    with Butler(sky_run.repo, writeable=False) as butler:
        normalisation = _frame_normalisation(sky_run, butler)
        results = {}
        for exposure in patterns:
            detector = exposure.detector
            high_passed = exposure.image - model.toCcdBackground(detector, exposure.bbox).get_image()
            expected = high_passed.reshape(n, config.binning, n, config.binning).mean(axis=(1, 3))
            frame = butler.get("skyFrame", instrument="SimCam", physical_filter="SimCam-r", detector=detector.id,
                               collections="SimCam/skyFrames")[0].values
            r = np.corrcoef(frame.ravel(), expected.ravel())[0, 1]
            amplitude = np.sum(frame * expected) / np.sum(expected**2) / normalisation
            results[detector.id] = (round(float(r), 4), round(float(amplitude), 4))
    print("detector: (r, amplitude / truth)", results)
    assert all(r > 0.99 and abs(a - 1) <= 0.03 for r, a in results.values()), results


def test_sky_frame_scale_matches_truth(sky_run):
    """Acceptance: the recovered sky-frame scale of every corrected visit is within 2% of
    k_v = s_v / mean_w(s_w / L_w)."""
    errors = {}
    with Butler(sky_run.repo, writeable=False) as butler:
        normalisation = _frame_normalisation(sky_run, butler)
        for visit in sky_run.corrected_visits:
            metadata = butler.get("skyCorr_metadata", instrument="SimCam", visit=visit, collections="skyCorr")
            truth = sky_run.truth.visit(visit)["sky_frame_scale"] / normalisation
            errors[visit] = float(metadata["skyCorr.skyFrameScale"]) / truth - 1.0
    print("sky frame scale / truth - 1:", {k: round(v, 4) for k, v in errors.items()})
    assert max(abs(e) for e in errors.values()) <= 0.02, errors


def _model_residual_rms(run: SkyRun, butler: Butler, visit: int, detector: int, collection: str) -> float:
    """RMS over the detector's pixels of (calexpBackground + skyCorr - true sky) / sqrt(median calexp variance)."""
    calexp = butler.get("calexp", instrument="SimCam", visit=visit, detector=detector, collections=collection)
    model = butler.get("calexpBackground", instrument="SimCam", visit=visit, detector=detector,
                       collections=collection).get_image(calexp.bbox).astype(np.float64)
    model += butler.get("skyCorr", instrument="SimCam", visit=visit, detector=detector,
                        collections=collection).get_image(calexp.bbox)
    yy, xx = np.mgrid[calexp.bbox.y0:calexp.bbox.y1, calexp.bbox.x0:calexp.bbox.x1]
    sky = run.truth.sky_model(visit, detector, xx, yy)
    return float(np.sqrt(np.mean((model - sky) ** 2)) / np.sqrt(np.median(calexp.variance)))


def test_sky_model_matches_truth(sky_run):
    """Acceptance: on every detector of every corrected visit, calexpBackground + skyCorr differs from the true sky
    by <= 0.1 sigma RMS."""
    rms = {}
    with Butler(sky_run.repo, writeable=False) as butler:
        for visit in sky_run.corrected_visits:
            for detector in range(9):
                rms[(visit, detector)] = _model_residual_rms(sky_run, butler, visit, detector, "skyCorr")
    print("residual RMS / sigma:", {k: round(v, 3) for k, v in rms.items()})
    assert max(rms.values()) <= 0.1, rms


def _mosaic_blocks(detector, binning: int, origin: tuple[float, float], pixel: float) -> tuple[np.ndarray, np.ndarray]:
    """Mosaic row and column of every binning x binning block of a detector (the block centre's mosaic pixel)."""
    n = detector.bbox.height // binning, detector.bbox.width // binning
    yc = detector.bbox.y0 + (np.arange(n[0]) + 0.5) * binning - 0.5
    xc = detector.bbox.x0 + (np.arange(n[1]) + 0.5) * binning - 0.5
    fx, fy = detector.pixels_to_focal_plane(*np.meshgrid(xc, yc))
    return np.floor((fy - origin[1]) / pixel).astype(int), np.floor((fx - origin[0]) / pixel).astype(int)


def _strip_steps(blocks: dict[int, np.ndarray], sigma: dict[int, float], strip: int) -> dict[tuple[int, int], float]:
    """Per pair of adjacent detectors: median of the strip of ``strip`` blocks on the far side of the boundary minus
    that on the near side, in units of the mean of the two detectors' sigma (NaN blocks ignored)."""
    inner = slice(STRIP_END_MARGIN, -STRIP_END_MARGIN)
    steps = {}
    for a, b in PAIRS:
        if b == a + 1:  # b on the right of a (+x)
            side_a, side_b = blocks[a][inner, -strip:], blocks[b][inner, :strip]
        else:  # b above a (+y)
            side_a, side_b = blocks[a][-strip:, inner], blocks[b][:strip, inner]
        steps[(a, b)] = float((np.nanmedian(side_b) - np.nanmedian(side_a)) / (0.5 * (sigma[a] + sigma[b])))
    return steps


def _boundary_steps(run: SkyRun, mosaic_name: str, strip: int) -> dict[tuple[int, int, int], float]:
    """Steps at every detector boundary of every corrected visit (`_strip_steps`), from the mosaic ``mosaic_name``:
    the corrected image (its mosaic pixels less than 90% free of simulated objects left out), or the sky model
    minus the true sky binned the same way."""
    camera = SimCam().camera
    steps = {}
    with Butler(run.repo, writeable=False) as butler:
        for visit in run.corrected_visits:
            mosaic = np.array(butler.get(mosaic_name, instrument="SimCam", visit=visit, collections="skyCorr"),
                              dtype=np.float64)
            metadata = butler.get("skyCorr_metadata", instrument="SimCam", visit=visit, collections="skyCorr")
            origin = (float(metadata["skyCorr.mosaicOriginX"]), float(metadata["skyCorr.mosaicOriginY"]))
            pixel = float(metadata["skyCorr.mosaicPixelSize"])
            binning = round(pixel / camera[0].pixel_size)
            blocks, sigma = {}, {}
            for detector in camera:
                rows, cols = _mosaic_blocks(detector, binning, origin, pixel)
                n = detector.bbox.height // binning
                if mosaic_name == "calexp_skyCorr_visit_mosaic":
                    free = run.truth.source_free_mask(visit, detector.id).reshape(n, binning, n, binning)
                    blocks[detector.id] = np.where(free.mean(axis=(1, 3)) >= 0.9, mosaic[rows, cols], np.nan)
                else:
                    yy, xx = np.mgrid[0 : n * binning, 0 : n * binning]
                    sky = run.truth.sky_model(visit, detector.id, xx, yy).reshape(n, binning, n, binning)
                    blocks[detector.id] = mosaic[rows, cols] - sky.mean(axis=(1, 3))
                variance = butler.get("calexp.variance", instrument="SimCam", visit=visit, detector=detector.id,
                                      collections="skyCorr")
                sigma[detector.id] = float(np.sqrt(np.median(variance)))
            steps.update({(visit, a, b): step for (a, b), step in _strip_steps(blocks, sigma, strip).items()})
    return steps


def test_no_step_at_detector_boundaries(sky_run):
    """Acceptance: in calexp_skyCorr_visit_mosaic (the corrected image, binned 8x8, masked pixels excluded), the
    medians of the strips on the two sides of every boundary between adjacent detectors differ by <= 0.05 sigma."""
    steps = _boundary_steps(sky_run, "calexp_skyCorr_visit_mosaic", STRIP)
    print("corrected-image steps / sigma:", {k: round(v, 4) for k, v in steps.items()})
    assert max(abs(s) for s in steps.values()) <= 0.05, steps


def test_sky_model_is_continuous_where_the_true_sky_is(sky_run):
    """The noise-free version: calexpBackground_skyCorr_visit_mosaic (the new sky model) minus the true sky binned
    the same way steps by <= 0.05 sigma at every detector boundary (the true sky itself steps there, by the
    difference of the detectors' sky-frame patterns)."""
    steps = _boundary_steps(sky_run, "calexpBackground_skyCorr_visit_mosaic", MODEL_STRIP)
    print("(model - truth) steps / sigma:", {k: round(v, 4) for k, v in steps.items()})
    assert max(abs(s) for s in steps.values()) <= 0.05, steps


def test_a_missing_detector_is_recorded_and_the_others_corrected(sky_run):
    """Without detector 4 the visit still runs: metadata and outputs list it as missing, the other 8 detectors
    get a skyCorr whose sky model matches the truth within 0.1 sigma RMS."""
    visit = sky_run.corrected_visits[0]
    with Butler(sky_run.repo, writeable=False) as butler:
        metadata = butler.get("skyCorr_metadata", instrument="SimCam", visit=visit, collections="skyCorrMissing")
        assert str(metadata["skyCorr.missingDetectors"]) == str(MISSING_DETECTOR)
        assert int(metadata["skyCorr.nDetectors"]) == 8
        written = {ref.data_id["detector"] for ref in butler.query_datasets("skyCorr", collections="skyCorrMissing")}
        assert written == set(range(9)) - {MISSING_DETECTOR}
        rms = {d: _model_residual_rms(sky_run, butler, visit, d, "skyCorrMissing") for d in sorted(written)}
    print("residual RMS / sigma without detector 4:", {k: round(v, 3) for k, v in rms.items()})
    assert max(rms.values()) <= 0.1, rms
