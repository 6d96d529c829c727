"""The SDSS instrument: registration, header translation, visits and regions, fpM masks, and ISR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from conftest import table_counts
from lsst.sphgeom import LonLat, UnitVector3d
from scipy import ndimage

from butler import Butler
from butler.cli import cli
from graph.testing import assert_valid_output, make_quantum, run_test_quantum
from tasks.errors import InstrumentError, IsrError
from tasks.image import Box2I
from tasks.instruments import define_visits, get_instrument, ingest_raws, read_primary_header
from tasks.instruments.sdss import Sdss, SdssFrame, detector_id, exposure_id, parse_exposure_id
from tasks.instruments.sdss.formatters import fpm_spans, kl_psf_image, read_fpc, read_fpm, read_psfield, read_tsfield
from tasks.instruments.sdss.isr import SdssIsrTask, photo_calib_from_flux20

FIELDS = {4192: 300, 6377: 399}
R_VISITS = (419220300, 637720399)
R4 = 15  # detector id of CCD r4: 6 * filter_index(r)=2 + camcol 4 - 1


def _dir(shared_data: Path, run: int) -> Path:
    return shared_data / "sdss_stripe82_lsst_demo" / "input" / str(run) / "40"


def _files(shared_data: Path, run: int, band: str) -> dict[str, Path]:
    d, field = _dir(shared_data, run), FIELDS[run]
    return {
        "fpC": d / f"corr/4/fpC-{run:06d}-{band}4-{field:04d}.fit.gz",
        "fpM": d / f"objcs/4/fpM-{run:06d}-{band}4-{field:04d}.fit",
        "psField": d / f"objcs/4/psField-{run:06d}-4-{field:04d}.fit",
        "tsField": d / f"calibChunks/4/tsField-{run:06d}-4-40-{field:04d}.fit",
    }


@pytest.fixture(scope="module")
def sdss_repo(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Butler:
    """All 10 frames ingested (symlinks) and their visits defined."""
    butler = Butler.create(tmp_path_factory.mktemp("sdss") / "repo")
    report = ingest_raws(butler, [shared_data / "sdss_stripe82_lsst_demo" / "input"], transfer="symlink")
    assert report.ok, report.failures
    define_visits(butler, "Sdss")
    yield butler
    butler.close()


# Instrument and ID schemes -------------------------------------------------------------------------------


def test_id_schemes_round_trip():
    assert exposure_id(4192, "r", 300) == 419220300
    assert parse_exposure_id(637740399) == (6377, "z", 399)
    assert detector_id("r", 4) == R4
    assert sorted(d.id for d in Sdss().camera) == list(range(30))
    assert Sdss().camera[R4].name == "r4"


def test_camera_rows_are_in_scan_order_and_camcols_across():
    camera = Sdss().camera
    y = {band: camera[detector_id(band, 1)].focal_plane_center[1] for band in "riuzg"}
    assert list(y.values()) == sorted(y.values(), reverse=True)  # r leads, g trails
    x = [camera[detector_id("r", c)].focal_plane_center[0] for c in range(1, 7)]
    assert np.allclose(np.diff(x), 91.6)


def test_get_instrument_by_short_registry_and_dotted_names():
    for name in ("Sdss", "sdss", "SDSS", "tasks.instruments.sdss.Sdss"):
        assert isinstance(get_instrument(name), Sdss)
    with pytest.raises(InstrumentError, match="known short names: Sdss, SimCam"):
        get_instrument("Hsc")


def test_register_is_idempotent(tmp_path):
    with Butler.create(tmp_path / "repo") as butler:
        assert Sdss().register(butler.registry) is True
        counts = table_counts(butler)
        assert Sdss().register(butler.registry) is False
        assert table_counts(butler) == counts
        detectors = butler.registry.query_dimension_records("detector")
        assert len(detectors) == 30 and {d.full_name for d in detectors} >= {"u1", "r4", "z6"}
        filters = butler.registry.query_dimension_records("physical_filter")
        assert {(f.name, f.band) for f in filters} == {(b, b) for b in "ugriz"}


def test_field_comes_from_frame_and_camera_row(shared_data):
    """The g4 frame of field 300 has FRAME = 308: the g row sees a field 8 frames after the r row."""
    path = _files(shared_data, 4192, "g")["fpC"]
    header = read_primary_header(path)
    assert header["FRAME"] == 308
    info = Sdss().translate_header(header, path)
    assert info.exposure_id == 419210300 and info.detector == detector_id("g", 4)
    assert {fd.dataset_type for fd in info.auxiliary} == {"fpM", "psField", "tsField"}


def test_exposure_record_matches_header_and_tsfield(sdss_repo, shared_data):
    record = sdss_repo.registry.get_dimension_record("exposure", {"instrument": "SDSS", "exposure": 419220300})
    assert record.obs_id == "4192-r-0300" and record.physical_filter == "r" and record.day_obs == 20031019
    assert record.exposure_time == pytest.approx(53.907456)
    tsfield = read_tsfield(_files(shared_data, 4192, "r")["tsField"])
    assert record.datetime_begin.tai.mjd == pytest.approx(tsfield["bands"]["r"]["mjd"], abs=1e-6)
    assert (record.datetime_end - record.datetime_begin).sec == pytest.approx(53.907456, abs=1e-3)
    other = sdss_repo.registry.get_dimension_record("exposure", {"instrument": "SDSS", "exposure": 637720399})
    assert other.day_obs == 20060920


# Visits and regions -------------------------------------------------------------------------------------


def test_define_visits_makes_one_visit_per_exposure(sdss_repo):
    reg = sdss_repo.registry
    visits = reg.query_dimension_records("visit")
    exposures = reg.query_dimension_records("exposure")
    assert sorted(v.id for v in visits) == sorted(e.id for e in exposures)
    assert len(visits) == 10
    assert {(v.id, v.physical_filter) for v in visits} == {(e.id, e.physical_filter) for e in exposures}
    definitions = reg.query_dimension_records("visit_definition")
    assert sorted((d.exposure, d.visit) for d in definitions) == sorted((e.id, e.id) for e in exposures)
    regions = reg.query_dimension_records("visit_detector_region")
    assert len(regions) == 10
    assert {(r.visit, r.detector) for r in regions} == {(e.id, detector_id(e.physical_filter, 4)) for e in exposures}


def test_define_visits_again_changes_nothing(sdss_repo):
    before = table_counts(sdss_repo)
    report = define_visits(sdss_repo, "SDSS")
    assert (report.new_visits, report.new_regions, report.stale) == (0, 0, [])
    assert table_counts(sdss_repo) == before


def _unit(ra: float, dec: float) -> UnitVector3d:
    return UnitVector3d(LonLat.fromDegrees(float(ra), float(dec)))


def test_detector_region_contains_the_frame_corners(sdss_repo, shared_data):
    for visit in R_VISITS:
        region = sdss_repo.registry.get_dimension_record(
            "visit_detector_region", {"instrument": "SDSS", "visit": visit, "detector": R4}
        ).region
        run = visit // 100_000
        wcs = read_fpc(_files(shared_data, run, "r")["fpC"], component="wcs")
        inside = np.array([[0, 0], [2047, 0], [2047, 1488], [0, 1488], [1024, 744]], dtype=float)
        outside = np.array([[-30, 744], [2077, 744], [1024, -30], [1024, 1518]], dtype=float)
        for (x, y), expected in [(p, True) for p in inside] + [(p, False) for p in outside]:
            sky = wcs.pixel_to_world(x, y)
            assert region.contains(_unit(sky.ra.deg, sky.dec.deg)) is expected, (visit, x, y)
        visit_region = sdss_repo.registry.get_dimension_record("visit", {"instrument": "SDSS", "visit": visit}).region
        assert visit_region.contains(region)


def test_both_runs_r_regions_overlap(sdss_repo):
    a, b = (
        sdss_repo.registry.get_dimension_record("visit_detector_region", {"instrument": "SDSS", "visit": v, "detector": R4})
        for v in R_VISITS
    )
    assert a.region.overlaps(b.region)


def test_cli_register_and_define_visits(sdss_repo):
    runner = CliRunner()
    result = runner.invoke(cli, ["register-instrument", str(sdss_repo.config.root), "Sdss"])
    assert result.exit_code == 0 and "already registered" in result.output
    result = runner.invoke(cli, ["define-visits", str(sdss_repo.config.root), "Sdss", "-d", "exposure.day_obs = 20060920"])
    assert result.exit_code == 0, result.output
    assert "5 visits defined (0 new" in result.output
    result = runner.invoke(cli, ["define-visits", str(sdss_repo.config.root), "Hsc"])
    assert result.exit_code == 1 and "Error: instrument 'Hsc' is not registered" in result.output


# Formatters ------------------------------------------------------------------------------------------------


def test_raw_components_read_from_the_header_agree_with_the_full_read(sdss_repo):
    data_id = {"instrument": "SDSS", "exposure": 419220300, "detector": R4}
    full = sdss_repo.get("raw", data_id, collections="SDSS/raw/all")
    assert full.image.shape == (1489, 2048) and full.image.dtype == np.float32
    assert 1100 < np.median(full.image) < 1200  # soft bias 1000 + sky ~145 DN
    for component in ("wcs", "bbox", "visitInfo", "detector", "filter"):
        part = sdss_repo.get(f"raw.{component}", data_id, collections="SDSS/raw/all")
        if component == "wcs":
            assert np.allclose(part.wcs.cd, full.wcs.wcs.cd) and np.allclose(part.wcs.crval, full.wcs.wcs.crval)
        else:
            assert part == {"bbox": full.bbox, "visitInfo": full.visit_info, "detector": full.detector,
                            "filter": full.filter}[component]
    assert full.visit_info.exposure_time == pytest.approx(53.907456) and full.filter.band == "r"
    cutout = sdss_repo.get("raw", data_id, collections="SDSS/raw/all", parameters={"bbox": Box2I(100, 200, 50, 40)})
    assert np.array_equal(cutout.image, full.image[200:240, 100:150]) and cutout.xy0 == (100, 200)


def test_fpm_planes_are_the_union_of_the_spans(shared_data):
    path = _files(shared_data, 4192, "r")["fpM"]
    mask = read_fpm(path)
    with fits.open(path) as hdul:
        for hdu_index, plane in ((1, "INTRP"), (2, "SAT"), (10, "CR"), (4, "OBJECT")):
            table = hdul[hdu_index].data
            pixels = {(y, x) for y, x0, x1 in fpm_spans(table) for x in range(x0, x1 + 1)}
            assert int(mask.get_plane(plane).sum()) == len(pixels), plane
            ys, xs = np.nonzero(mask.get_plane(plane))
            assert set(zip(ys.tolist(), xs.tolist())) == pixels
            # each object's spans lie in its bounding box, and hold its npix pixels
            assert len(pixels) <= int(table["npix"].sum())
            assert ys.min() >= table["rmin"].min() and xs.max() <= table["cmax"].max()
    assert mask.get_plane("SAT").sum() > 100  # saturated stars in r
    assert mask.get_plane("OBJECT").sum() > mask.get_plane("SAT").sum()


def test_psfield_and_tsfield_values(shared_data):
    files = _files(shared_data, 4192, "r")
    psfield = read_psfield(files["psField"])
    r = psfield["bands"]["r"]
    assert (r["gain"], r["dark_variance"]) == pytest.approx((4.76, 1.3225), rel=1e-5)
    assert r["psf_width"] == pytest.approx(1.18, abs=0.01)  # PROVENANCE: r PSF 1.18"
    kernel = kl_psf_image(psfield, "r", 1024.0, 744.0)
    assert kernel.shape == (51, 51) and np.unravel_index(kernel.argmax(), kernel.shape) == (25, 25)
    tsfield = read_tsfield(files["tsField"])
    assert tsfield["bands"]["r"]["aa"] == pytest.approx(-24.0029, abs=1e-3)


# ISR ------------------------------------------------------------------------------------------------------


def _isr_inputs(shared_data: Path, run: int, band: str):
    files = _files(shared_data, run, band)
    return (read_fpc(files["fpC"]), read_fpm(files["fpM"]), read_psfield(files["psField"], kl_psf=False),
            read_tsfield(files["tsField"]))


def _measured_sky_variance(image: np.ndarray, sources: np.ndarray, box: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Variance of the pixels in source-free boxes: 3-sigma clipped, corrected for the clipping.

    Returns the per-box measured variances and the boxes' selectors (y, x slices flattened to indices).
    """
    ny, nx = image.shape[0] // box * box, image.shape[1] // box * box
    blocks = image[:ny, :nx].reshape(ny // box, box, nx // box, box).swapaxes(1, 2).reshape(-1, box * box)
    clean = ~sources[:ny, :nx].reshape(ny // box, box, nx // box, box).swapaxes(1, 2).reshape(-1, box * box).any(axis=1)
    values = blocks[clean].astype(np.float64)
    keep = np.ones_like(values, dtype=bool)
    for _ in range(5):
        masked = np.where(keep, values, np.nan)
        centre, std = np.nanmedian(masked, axis=1, keepdims=True), np.nanstd(masked, axis=1, keepdims=True)
        keep = np.abs(values - centre) < 3 * std
    truncated_gaussian = 0.97334  # variance of a unit Gaussian clipped at +-3 sigma
    return np.nanvar(np.where(keep, values, np.nan), axis=1) / truncated_gaussian, clean


def _variance_ratio(shared_data: Path, run: int, band: str) -> float:
    raw, fpm, psfield, tsfield = _isr_inputs(shared_data, run, band)
    exposure = SdssIsrTask().run(raw, fpm, psfield, tsfield).exposure
    sources = ndimage.binary_dilation(
        fpm.get_plane(["OBJECT", "BRIGHTOBJECT", "BINOBJECT", "NOTCHECKED", "SAT", "INTRP", "CR"]), iterations=5
    )
    measured, clean = _measured_sky_variance(exposure.image, sources)
    assert clean.sum() > 300  # enough empty sky
    box = 32
    ny, nx = 1489 // box * box, 2048 // box * box
    variance = exposure.variance[:ny, :nx].reshape(ny // box, box, nx // box, box).swapaxes(1, 2).reshape(-1, box * box)
    return float(np.median(variance[clean]) / np.median(measured))


@pytest.mark.parametrize("run", [4192, 6377])
def test_isr_variance_matches_the_measured_sky_noise(shared_data, run):
    """Acceptance: the variance plane's median is the sky noise squared measured from the pixels (10%)."""
    assert 0.9 <= _variance_ratio(shared_data, run, "r") <= 1.1


@pytest.mark.slow
@pytest.mark.parametrize("band", ["u", "g", "i"])
@pytest.mark.parametrize("run", [4192, 6377])
def test_isr_variance_matches_the_measured_sky_noise_other_bands(shared_data, run, band):
    # z is left out: its measured sky noise exceeds the psField noise model by ~12% in both runs.
    assert 0.9 <= _variance_ratio(shared_data, run, band) <= 1.1


def test_isr_removes_soft_bias_copies_masks_and_calibrates(shared_data):
    raw, fpm, psfield, tsfield = _isr_inputs(shared_data, 4192, "r")
    exposure = SdssIsrTask().run(raw, fpm, psfield, tsfield).exposure
    sky = psfield["bands"]["r"]["sky"]  # 145.4 DN
    assert np.median(exposure.image) == pytest.approx(sky, rel=0.02)
    for plane in ("SAT", "INTRP", "CR"):
        assert np.array_equal(exposure.mask.get_plane(plane), fpm.get_plane(plane))
    assert "OBJECT" not in exposure.mask.planes
    # tsField calibration agrees with the frame's FLUX20 zero point to 1%
    flux20 = photo_calib_from_flux20(raw.metadata["FLUX20"])
    assert exposure.photo_calib.calibration_mean == pytest.approx(flux20.calibration_mean, rel=0.01)
    assert exposure.photo_calib.calibration_mean == pytest.approx(18.28, abs=0.01)  # nJy per DN
    assert exposure.visit_info.airmass == pytest.approx(tsfield["bands"]["r"]["airmass"])


def test_isr_needs_the_psfield_for_the_variance(shared_data):
    raw, fpm, _, tsfield = _isr_inputs(shared_data, 4192, "r")
    with pytest.raises(IsrError, match="needs the gain and dark variance"):
        SdssIsrTask().run(raw, fpm, None, tsfield)


def test_isr_in_electrons_keeps_calibrated_fluxes(shared_data):
    raw, fpm, psfield, tsfield = _isr_inputs(shared_data, 4192, "r")
    dn = SdssIsrTask().run(raw, fpm, psfield, tsfield).exposure
    config = SdssIsrTask.ConfigClass()
    config.doConvertToElectrons = True
    electrons = SdssIsrTask(config=config).run(raw, fpm, psfield, tsfield).exposure
    gain = psfield["bands"]["r"]["gain"]
    assert np.allclose(electrons.image, dn.image * gain, rtol=1e-5)
    assert np.allclose(electrons.variance, dn.variance * gain**2, rtol=1e-5)
    assert electrons.photo_calib.calibration_mean * gain == pytest.approx(dn.photo_calib.calibration_mean)


def test_isr_runs_as_a_quantum_on_the_ingested_repo(sdss_repo):
    butler = Butler(sdss_repo.config.root, collections=["SDSS/raw/all"], run="u/test/isr")
    task = SdssIsrTask()
    data_id = {"instrument": "SDSS", "exposure": 637720399, "detector": R4}
    quantum = make_quantum(task, butler, data_id, {name: data_id for name in ("ccdExposure", "fpM", "psField", "tsField", "exposure")})
    run_mock = run_test_quantum(task, butler, quantum)
    run_mock.assert_called_once()
    assert set(run_mock.call_args.kwargs) == {"ccdExposure", "fpM", "psField", "tsField"}
    refs = run_test_quantum(task, butler, quantum, mock_run=False)
    assert [r.dataset_type.name for r in refs] == ["postISRCCD"]
    out = butler.get("postISRCCD", data_id, collections="u/test/isr")
    assert out.photo_calib is not None and float(np.median(out.variance)) > 20
    assert_valid_output(task, task.run(**run_mock.call_args.kwargs))
    butler.close()


def test_sdss_frame_requires_its_keywords():
    header = fits.Header({"RUN": 4192, "CAMCOL": 4, "FILTER": "r"})
    with pytest.raises(Exception, match="no FRAME keyword"):
        SdssFrame.from_header(header, "x.fit")
