"""Generic ISR: step functions on synthetic raws, and IsrTask on SimCam raws with known truth."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from graph import Pipeline
from tasks.errors import IsrError
from tasks.image import Amplifier, Box2I, Detector, Exposure, MaskedImage
from tasks.instruments.simcam import SimCam, SimCamRawFormatter, SimulationTruth, detector_defects, simulate_raws
from tasks.isr import (
    IsrTask,
    IsrTaskConfig,
    amplifier_assembled_boxes,
    fit_overscan,
    interpolate_over_mask,
    set_variance_plane,
)

DETECTOR = 4
PIPELINE = "repo_template/pipelines/SimCam/ISR.yaml"


# Synthetic raws -------------------------------------------------------------------------------------------------
# Two amplifiers with the overscans *between* the data sections, so assembly must move amplifier B left:
#   x: 0..99 A data | 100..109 A overscan | 110..119 B overscan | 120..219 B data


def synthetic_detector(saturation: float = 1e9) -> Detector:
    amps = (
        Amplifier("A", Box2I(0, 0, 100, 50), Box2I(100, 0, 10, 50), gain=2.0, read_noise=5.0, saturation=saturation),
        Amplifier("B", Box2I(120, 0, 100, 50), Box2I(110, 0, 10, 50), gain=1.5, read_noise=4.0, saturation=saturation),
    )
    return Detector(0, "T", Box2I(0, 0, 200, 50), (0.0, 0.0), 0.0, 0.01, amplifiers=amps, raw_bbox=Box2I(0, 0, 220, 50))


def synthetic_raw(signal: np.ndarray, bias_rows: np.ndarray, detector: Detector) -> Exposure:
    """Raw ADU: bias per row + signal [e-] / gain in each data section, bias in the overscans."""
    raw = np.zeros((50, 220))
    for amp, box in zip(detector.amplifiers, amplifier_assembled_boxes(detector), strict=True):
        raw[amp.bbox.slices(detector.raw_bbox)] = bias_rows[:, None] + signal[box.slices(detector.bbox)] / amp.gain
        raw[amp.overscan_bbox.slices(detector.raw_bbox)] = bias_rows[:, None]
    return Exposure(MaskedImage(raw.astype(np.float32)), detector=detector)


@pytest.fixture
def signal() -> np.ndarray:
    y, x = np.mgrid[0:50, 0:200]
    return 100.0 + 2.0 * x + 0.5 * y  # electrons, different in every column so assembly errors show


def test_assembly_places_amplifiers_side_by_side(signal):
    det = synthetic_detector()
    assert amplifier_assembled_boxes(det) == [Box2I(0, 0, 100, 50), Box2I(100, 0, 100, 50)]
    bias = 1000.0 + 3.0 * np.sin(np.arange(50) / 5.0)
    result = IsrTask().run(synthetic_raw(signal, bias, det)).exposure
    assert result.bbox == det.bbox
    np.testing.assert_allclose(result.image, signal, atol=1e-3)  # overscan removed, gains applied, assembled


def test_constant_overscan_fit_leaves_row_structure_that_per_row_median_removes(signal):
    det = synthetic_detector()
    bias = 1000.0 + 3.0 * np.sin(np.arange(50) / 5.0)
    config = IsrTaskConfig()
    config.overscanFitType = "MEDIAN"
    constant = IsrTask(config=config).run(synthetic_raw(signal, bias, det)).exposure
    assert np.ptp((constant.image - signal)[:, 0]) > 5.0  # 6 ADU peak to peak x gain 2
    config.overscanFitType = "POLY"
    config.overscanOrder = 1
    ramp = 1000.0 + 0.2 * np.arange(50)
    poly = IsrTask(config=config).run(synthetic_raw(signal, ramp, det)).exposure
    np.testing.assert_allclose(poly.image, signal, atol=1e-3)


def test_fit_overscan_rejects_unknown_fit_type():
    with pytest.raises(IsrError, match="MEDIAN_PER_ROW"):
        fit_overscan(np.ones((4, 3)), fit_type="SPLINE")  # type: ignore[arg-type]


def test_saturated_pixels_are_masked_at_their_assembled_position(signal):
    det = synthetic_detector(saturation=1500.0)
    signal = signal.copy()
    signal[20, 150] = 2e5  # amplifier B (gain 1.5): 1000 + 133333 ADU >= 1500
    config = IsrTaskConfig()
    config.growSaturationFootprintSize = 0
    task = IsrTask(config=config)
    result = task.run(synthetic_raw(signal, np.full(50, 1000.0), det)).exposure
    sat = result.mask.get_plane("SAT")
    assert sat[20, 150] and sat.sum() == 1
    assert task.metadata["nSaturated"] == 1


def test_defects_are_masked_bad_and_interpolated(signal):
    det = synthetic_detector()
    raw = synthetic_raw(signal, np.full(50, 1000.0), det)
    raw.image[:, 130] += 5000.0  # a hot column in amplifier B (assembled x = 110)
    result = IsrTask().run(raw, defects=[Box2I(110, 0, 1, 50)]).exposure
    assert result.mask.get_plane("BAD")[:, 110].all() and result.mask.get_plane("INTRP")[:, 110].all()
    np.testing.assert_allclose(result.image[:, 110], signal[:, 110], atol=1e-3)  # linear signal: exact


def test_variance_is_electrons_plus_read_noise_squared(signal):
    det = synthetic_detector()
    result = IsrTask().run(synthetic_raw(signal, np.full(50, 1000.0), det)).exposure
    np.testing.assert_allclose(result.variance[:, :100], signal[:, :100] + 5.0**2, rtol=1e-5)
    np.testing.assert_allclose(result.variance[:, 100:], signal[:, 100:] + 4.0**2, rtol=1e-5)


def test_set_variance_plane_in_adu_divides_by_gain():
    mi = MaskedImage(np.full((3, 3), 100.0, dtype=np.float32))
    set_variance_plane(mi, gain=2.0, read_noise=4.0)
    np.testing.assert_allclose(mi.variance, 100.0 / 2.0 + (4.0 / 2.0) ** 2)


def test_interpolate_over_mask_skips_rows_without_good_pixels():
    mi = MaskedImage(np.arange(12, dtype=np.float32).reshape(3, 4))
    mi.mask.set_plane("BAD", Box2I(1, 0, 2, 1))
    mi.mask.set_plane("BAD", Box2I(0, 2, 4, 1))
    assert interpolate_over_mask(mi, ["BAD"]) == 2
    np.testing.assert_allclose(mi.image[0], [0, 1, 2, 3])
    assert not mi.mask.get_plane("INTRP")[2].any()


def test_mismatched_geometry_is_an_isr_error(signal):
    det = synthetic_detector()
    broken = Detector(0, "T", Box2I(0, 0, 150, 50), (0.0, 0.0), 0.0, 0.01, amplifiers=det.amplifiers)
    with pytest.raises(IsrError, match="assemble to shape"):
        amplifier_assembled_boxes(broken)
    no_detector = Exposure(MaskedImage(np.zeros((50, 220), dtype=np.float32)))
    with pytest.raises(IsrError, match="no Detector"):
        IsrTask().run(no_detector)


def test_config_rejects_gains_without_overscan():
    config = IsrTaskConfig()
    config.doOverscan = False
    with pytest.raises(ValueError, match="doApplyGains"):
        config.validate()


# SimCam raws ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simcam(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulationTruth, Exposure, Exposure, IsrTask]:
    truth = simulate_raws(tmp_path_factory.mktemp("isr_sim"), n_visits=1, seed=21, detectors=[DETECTOR])
    raw = SimCamRawFormatter.__new__(SimCamRawFormatter).read(truth.raw_paths[0])
    task = IsrTask()
    return truth, raw, task.run(raw).exposure, task


def _residual(truth: SimulationTruth, exposure: Exposure) -> tuple[np.ndarray, np.ndarray]:
    visit = truth.visit_ids[0]
    sky = truth.sky_model(visit, DETECTOR, np.arange(1024)[None, :], np.arange(1024)[:, None])
    return exposure.image - sky, truth.source_free_mask(visit, DETECTOR)


def test_output_is_assembled_in_electrons(simcam):
    truth, raw, exposure, _ = simcam
    assert exposure.bbox == Box2I(0, 0, 1024, 1024) and exposure.image.dtype == np.float32
    assert exposure.metadata["BUNIT"] == "electron"
    assert exposure.wcs is not None and exposure.visit_info == raw.visit_info and exposure.filter == raw.filter
    residual, free = _residual(truth, exposure)
    sky = float(truth.visit(truth.visit_ids[0])["sky0"])
    assert abs(np.median(exposure.image[free]) / sky - 1.0) < 0.02  # ADU would be off by the gain (1.5-2)


def test_overscan_removes_bias_to_better_than_one_adu(simcam):
    truth, _, exposure, task = simcam
    residual, free = _residual(truth, exposure)
    det_truth = truth.detectors[0]
    for amp in SimCam().camera[DETECTOR].amplifiers:
        region = amp.bbox.slices(exposure.bbox)  # SimCam data sections sit at their assembled position
        r, f = residual[region], free[region]
        assert abs(r[f].mean() / amp.gain) < 1.0
        # the row-dependent bias is followed: 64-row block means agree to well under 1 ADU
        blocks = [r[i : i + 64][f[i : i + 64]].mean() / amp.gain for i in range(0, 1024, 64)]
        assert np.std(blocks) < 0.5
        assert task.metadata[f"overscanMean.{amp.name}"] == pytest.approx(det_truth[f"bias_offset_{amp.name}"], abs=0.5)


def test_variance_matches_measured_sky_noise(simcam):
    truth, _, exposure, _ = simcam
    residual, free = _residual(truth, exposure)
    r = residual[free]
    robust_sigma = 1.4826 * np.median(np.abs(r - np.median(r)))
    assert np.median(exposure.variance[free]) / robust_sigma**2 == pytest.approx(1.0, abs=0.10)


def test_bad_columns_are_masked_and_interpolated(simcam):
    truth, _, exposure, _ = simcam
    bad = exposure.mask.get_plane("BAD")
    sky = float(truth.detectors[0]["sky_center"])
    for box, kind in detector_defects(DETECTOR):
        assert bad[box.slices(exposure.bbox)].all()
        column = exposure.image[box.slices(exposure.bbox)]
        assert np.median(column) == pytest.approx(sky, rel=0.1), f"{kind} column not repaired"
    assert bad.sum() == sum(box.area for box, _ in detector_defects(DETECTOR))


def test_saturated_star_cores_are_masked_sat(simcam):
    truth, _, exposure, task = simcam
    sat = exposure.mask.get_plane("SAT")
    sources = truth.sources_on(truth.visit_ids[0], DETECTOR)
    bright = sources[sources["flux"] > 2e6]
    assert len(bright) >= 1
    for star in bright:
        assert sat[int(round(star["y"])), int(round(star["x"]))]
    assert task.metadata["nSaturated"] == sat.sum() > 10
    # nothing saturates away from the bright stars
    yy, xx = np.nonzero(sat)
    distance = np.min(np.hypot(xx[:, None] - bright["x"][None, :], yy[:, None] - bright["y"][None, :]), axis=1)
    assert distance.max() < 40


def test_isr_pipeline_runs_on_ingested_simcam_raws(simcam, tmp_path):
    pytest.importorskip("tasks.instruments.ingest")
    from butler import Butler
    from graph.cli import cli as pipetask
    from tasks.instruments.ingest import ingest_raws
    from tasks.instruments.visits import define_visits

    truth = simcam[0]
    pipeline = Pipeline.from_file(PIPELINE)
    assert pipeline.instrument == "tasks.instruments.simcam.SimCam"
    Butler.create(tmp_path / "repo").close()
    with Butler(tmp_path / "repo", writeable=True) as butler:
        ingest_raws(butler, truth.raw_paths)
        define_visits(butler, "SimCam")
    result = CliRunner().invoke(
        pipetask,
        ["run", "-b", str(tmp_path / "repo"), "-i", "SimCam/raw/all", "-o", "u/test/isr", "-p", PIPELINE,
         "--register-dataset-types"],
    )
    assert result.exit_code == 0, result.output
    with Butler(tmp_path / "repo") as butler:
        out = butler.get("postISRCCD", instrument="SimCam", exposure=truth.visit_ids[0], detector=DETECTOR,
                         collections="u/test/isr")
    np.testing.assert_allclose(out.image, simcam[2].image)
    assert out.mask.get_plane("SAT").sum() == simcam[2].mask.get_plane("SAT").sum()
