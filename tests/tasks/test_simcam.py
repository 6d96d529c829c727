"""SimCam: camera geometry, header translation, raw formatter, simulator determinism and truth consistency."""

from __future__ import annotations

import filecmp
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner

from butler import Butler
from butler.cli import cli as butler_cli
from tasks.errors import IngestError
from tasks.image import Box2I, Exposure
from tasks.instruments import get_instrument
from tasks.instruments.simcam import (
    PIXEL_SCALE,
    SimCam,
    SimCamRawFormatter,
    SimulationError,
    SimulationTruth,
    ingest_simulation,
    simulate_raws,
)
from tasks.isr import IsrTask

DETECTOR = 4  # S11, the central detector
SEED = 11


def read_raw(path: Path, component: str | None = None):
    return SimCamRawFormatter.__new__(SimCamRawFormatter).read(path, component=component)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimulationTruth:
    return simulate_raws(tmp_path_factory.mktemp("sim"), n_visits=2, seed=SEED, detectors=[DETECTOR])


@pytest.fixture(scope="module")
def calexps(sim: SimulationTruth) -> dict[int, Exposure]:
    """ISR'd exposures (electrons) of both visits of the central detector."""
    return {v: IsrTask().run(read_raw(sim.raw_path(v, DETECTOR))).exposure for v in sim.visit_ids}


def isolated_bright_star(sim: SimulationTruth, visit: int, exposure: Exposure):
    """The brightest unsaturated truth star with no other source within 30 px and a clean aperture."""
    sources = sim.sources_on(visit, DETECTOR)
    sigma = float(sim.detectors[(sim.detectors["visit"] == visit)]["psf_sigma_pixels"][0])
    peak = sources["flux"] / (2 * math.pi * sigma**2)
    stars = sources[(sources["kind"] == "star") & (peak < 40000) & (sources["flux"] > 5e4)]
    stars = stars[(stars["x"] > 40) & (stars["x"] < 984) & (stars["y"] > 40) & (stars["y"] < 984)]
    stars.sort("flux", reverse=True)
    for star in stars:
        distance = np.hypot(sources["x"] - star["x"], sources["y"] - star["y"])
        if np.any((distance > 0) & (distance < 30) & (sources["flux"] > 0.002 * star["flux"])):
            continue
        x0, y0 = int(round(star["x"])), int(round(star["y"]))
        if exposure.mask.array[y0 - 15 : y0 + 16, x0 - 15 : x0 + 16].any():
            continue
        return star
    pytest.fail("the simulation has no isolated bright unsaturated star on the detector")


def aperture(image: np.ndarray, x: float, y: float, radius: float):
    """Background-subtracted pixels within ``radius`` of (x, y), their offsets, and the annulus background."""
    half = int(radius + 12)
    x0, y0 = int(round(x)), int(round(y))
    stamp = image[y0 - half : y0 + half + 1, x0 - half : x0 + half + 1].astype(np.float64)
    yy, xx = np.mgrid[y0 - half : y0 + half + 1, x0 - half : x0 + half + 1]
    dx, dy = xx - x, yy - y
    r = np.hypot(dx, dy)
    background = np.median(stamp[(r > radius + 3) & (r < radius + 10)])
    inside = r < radius
    return stamp[inside] - background, dx[inside], dy[inside], background


# Camera and instrument ----------------------------------------------------------------------------------------


def test_camera_has_nine_detectors_with_two_overscanned_amplifiers():
    camera = SimCam().camera
    assert camera.ids == list(range(9))
    assert [camera[i].name for i in range(9)] == ["S00", "S01", "S02", "S10", "S11", "S12", "S20", "S21", "S22"]
    for det in camera:
        assert det.bbox == Box2I(0, 0, 1024, 1024)
        assert det.raw_bbox == Box2I(0, 0, 1088, 1024)
        assert len(det.amplifiers) == 2
        for amp in det.amplifiers:
            assert amp.overscan_bbox.width == 32 and amp.bbox.width == 512
            assert 1.5 <= amp.gain <= 2.0 and 4.5 <= amp.read_noise <= 5.5 and 950 <= amp.bias_level <= 1050
    # neighbours are one detector width plus a gap apart
    pitch = np.subtract(camera["S01"].focal_plane_center, camera["S00"].focal_plane_center)
    assert pitch[0] == pytest.approx(10.74) and pitch[1] == 0


def test_get_instrument_finds_simcam_by_short_name():
    inst = get_instrument("SimCam")
    assert isinstance(inst, SimCam)
    assert inst.filters == {"SimCam-g": "g", "SimCam-r": "r", "SimCam-i": "i"}
    assert all(box.width <= 2 and box.height >= 400 for d in range(9) for box in inst.get_defects(d))


def test_translate_header_gives_exposure_record(sim):
    path = sim.raw_path(sim.visit_ids[1], DETECTOR)
    header = fits.getheader(path)
    info = SimCam().translate_header(header, path)
    visit = sim.visit(sim.visit_ids[1])
    record = info.exposure
    assert info.detector == DETECTOR and info.exposure_id == 2001
    assert info.formatter == SimCam.raw_formatter
    assert record["physical_filter"] == "SimCam-r" and record["observation_type"] == "science"
    assert record["day_obs"] == 20240314 and record["obs_id"] == "SC_20240314_002001"
    assert record["exposure_time"] == 30.0
    assert record["datetime_begin"].scale == "tai"
    assert (record["datetime_end"] - record["datetime_begin"]).sec == pytest.approx(30.0, abs=1e-3)
    assert record["tracking_ra"] == pytest.approx(visit["ra"]) and record["tracking_dec"] == pytest.approx(visit["dec"])


def test_translate_header_names_missing_keyword(sim, tmp_path):
    header = fits.getheader(sim.raw_paths[0])
    del header["EXPID"]
    with pytest.raises(IngestError, match="EXPID"):
        SimCam().translate_header(header, tmp_path / "broken.fits")


def test_raw_formatter_reads_raw_layout_with_camera_geometry(sim):
    path = sim.raw_path(sim.visit_ids[0], DETECTOR)
    raw = read_raw(path)
    visit = sim.visit(sim.visit_ids[0])
    assert raw.bbox == Box2I(0, 0, 1088, 1024) and raw.image.dtype == np.float32
    assert raw.detector.id == DETECTOR and len(raw.detector.amplifiers) == 2
    assert raw.filter.band == "r" and raw.filter.physical_filter == "SimCam-r"
    assert raw.visit_info.exposure_time == 30.0 and raw.visit_info.id == 2000
    # the central detector's centre is the boresight; 0.2 arcsec pixels
    centre = raw.wcs.pixel_to_world(511.5, 511.5)
    assert centre.ra.deg == pytest.approx(visit["ra"], abs=1e-9) and centre.dec.deg == pytest.approx(visit["dec"], abs=1e-9)
    step = raw.wcs.pixel_to_world(611.5, 511.5).separation(centre).arcsec
    assert step == pytest.approx(100 * PIXEL_SCALE, rel=1e-6)
    # known bad columns are flagged in the raw mask; overscan bias ~1000 ADU
    bad = raw.mask.get_plane("BAD")
    assert all(bad[box.slices(raw.bbox)].all() for box in SimCam().get_defects(DETECTOR))
    assert 950 < np.median(raw.image[:, 1024:]) < 1050
    # header-only components
    assert read_raw(path, "bbox") == raw.bbox
    assert read_raw(path, "detector") == raw.detector


# Simulator --------------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(sim, tmp_path):
    again = simulate_raws(tmp_path / "again", n_visits=2, seed=SEED, detectors=[DETECTOR])
    other = simulate_raws(tmp_path / "other", n_visits=2, seed=SEED + 1, detectors=[DETECTOR])
    files = sorted(p.relative_to(sim.root) for p in sim.root.rglob("*") if p.is_file())
    assert len(files) == 2 + 8  # raws + 6 tables + refcat + summary
    for rel in files:
        assert filecmp.cmp(sim.root / rel, again.root / rel, shallow=False), f"{rel} differs for the same seed"
    for rel in sim.raw_paths:
        name = rel.relative_to(sim.root)
        assert not np.array_equal(fits.getdata(sim.root / name), fits.getdata(other.root / name))


def test_without_sky_frames_the_sky_is_an_offset_and_gradient_and_nothing_else_changes(sim, tmp_path):
    plain = simulate_raws(tmp_path / "plain", n_visits=2, seed=SEED, detectors=[DETECTOR], sky_frames=False)
    assert np.all(np.asarray(plain.visits["sky_frame_scale"]) == 0.0)
    assert np.all(np.asarray(sim.visits["sky_frame_scale"]) > 0.0)
    for name in ("ra", "dec", "fwhm0", "sky0", "sky_grad_x", "sky_grad_y", "zero_point", "bias_phase"):
        assert np.array_equal(plain.visits[name], sim.visits[name]), name
    x, y = np.meshgrid(np.arange(0, 1024, 64.0), np.arange(0, 1024, 64.0))
    visit = plain.visit_ids[0]
    det = SimCam().camera[DETECTOR]
    fx, fy = det.pixels_to_focal_plane(x, y)
    row = plain.visit(visit)
    planar = row["sky0"] * (1 + row["sky_grad_x"] * fx + row["sky_grad_y"] * fy)
    assert np.allclose(plain.sky_model(visit, DETECTOR, x, y), planar, rtol=1e-12)
    assert np.ptp(sim.sky_model(visit, DETECTOR, x, y) - planar) > 0.01 * row["sky0"]


def test_reference_catalog_lists_bright_stars_and_galaxies_with_true_magnitudes(sim):
    refcat = sim.reference_catalog(mag_limit=22.0)
    objects = sim.objects
    expected = objects[(objects["kind"] != "variable") & (objects["mag_r"] < 22.0)]
    assert list(refcat["id"]) == list(expected["id"])
    assert np.array_equal(refcat["r"], expected["mag_r"]) and np.array_equal(refcat["g"], expected["mag_g"])
    assert np.array_equal(refcat["starnotgal"] == 1, expected["kind"] == "star")
    on_disk = Table.read(sim.root / "truth" / "refcat.fits")
    assert len(on_disk) == len(sim.reference_catalog()) and set(on_disk.colnames) == set(refcat.colnames)


def test_truth_round_trips_through_files(sim):
    loaded = SimulationTruth.load(sim.root)
    assert loaded.visit_ids == sim.visit_ids and loaded.band == "r" and loaded.seed == SEED
    assert len(loaded.sources) == len(sim.sources) and loaded.raw_paths == sim.raw_paths


def test_simulation_rejects_unknown_band_and_detector(tmp_path):
    with pytest.raises(SimulationError, match="band 'z'"):
        simulate_raws(tmp_path, n_visits=1, seed=0, band="z")
    with pytest.raises(SimulationError, match="detector"):
        simulate_raws(tmp_path, n_visits=1, seed=0, detectors=[9])


def test_sky_in_source_free_pixels_matches_truth_sky_model(sim, calexps):
    visit = sim.visit_ids[0]
    exposure = calexps[visit]
    sky = sim.sky_model(visit, DETECTOR, np.arange(1024)[None, :], np.arange(1024)[:, None])
    free = sim.source_free_mask(visit, DETECTOR)
    assert free.mean() > 0.5
    residual = (exposure.image - sky)[free]
    noise = float(np.sqrt(np.median(exposure.variance[free])))
    assert abs(residual.mean()) < 5 * noise / math.sqrt(residual.size) + 0.2
    # the sky-frame pattern and gradients are reproduced block by block (16x16 blocks of 64x64 pixels)
    blocks = np.where(free, exposure.image - sky, np.nan).reshape(16, 64, 16, 64).transpose(0, 2, 1, 3).reshape(256, -1)
    counts = np.sum(np.isfinite(blocks), axis=1)
    means = np.nanmean(blocks[counts > 1000], axis=1)
    assert np.std(means) < 3 * noise / math.sqrt(1000)
    assert np.ptp(sky) > 20 * np.std(means)  # the pattern being tested is much larger than the residuals


def test_bright_isolated_star_aperture_flux_matches_truth(sim, calexps):
    visit = sim.visit_ids[0]
    star = isolated_bright_star(sim, visit, calexps[visit])
    sigma = star["psf_fwhm"] / PIXEL_SCALE / 2.3548
    pixels, *_ = aperture(calexps[visit].image, star["x"], star["y"], 4 * sigma)
    assert pixels.sum() / star["flux"] == pytest.approx(1.0, abs=0.05)


def test_psf_fwhm_from_second_moments_matches_truth(sim, calexps):
    for visit in sim.visit_ids:
        star = isolated_bright_star(sim, visit, calexps[visit])
        sigma = star["psf_fwhm"] / PIXEL_SCALE / 2.3548
        w, dx, dy, _ = aperture(calexps[visit].image, star["x"], star["y"], 4 * sigma)
        ixx = np.sum(w * dx**2) / w.sum() - 1 / 12
        iyy = np.sum(w * dy**2) / w.sum() - 1 / 12
        ixy = np.sum(w * dx * dy) / w.sum()
        fwhm = 2.3548 * (ixx * iyy - ixy**2) ** 0.25 * PIXEL_SCALE
        assert fwhm / star["psf_fwhm"] == pytest.approx(1.0, abs=0.10)
    # per-visit seeing differs, so the comparison above is not trivially satisfied
    fwhm0 = [float(sim.visit(v)["fwhm0"]) for v in sim.visit_ids]
    assert 0.6 <= min(fwhm0) and max(fwhm0) <= 1.4


def test_transients_appear_only_in_their_visits(sim, calexps):
    first, second = sim.visit_ids
    on_detector = sim.sources[(sim.sources["kind"] == "transient") & (sim.sources["detector"] == DETECTOR)]
    assert len(on_detector) == 2 and set(on_detector["visit"]) == {second}
    assert np.all(sim.transients["first_visit"] == second)  # never in the first visit
    isolated = sim.transients[sim.transients["host_id"] == 0]
    rows = on_detector[np.isin(on_detector["id"], isolated["id"])]
    (row,) = rows
    # the same sky position in the first visit (no transient) is blank sky
    from tasks.instruments.simcam import detector_wcs

    det = SimCam().camera[DETECTOR]
    v0 = sim.visit(first)
    x0, y0 = detector_wcs(det, v0["ra"], v0["dec"]).world_to_pixel_values(
        isolated[isolated["id"] == row["id"]]["ra"][0], isolated[isolated["id"] == row["id"]]["dec"][0]
    )
    radius = 4 * row["psf_fwhm"] / PIXEL_SCALE / 2.3548
    on, *_ = aperture(calexps[second].image, row["x"], row["y"], radius)
    off, *_ = aperture(calexps[first].image, float(x0), float(y0), radius)
    assert (on.sum() - off.sum()) / row["flux"] == pytest.approx(1.0, abs=0.1)


def test_transients_from_keeps_earlier_visits_transient_free(sim, tmp_path):
    late = simulate_raws(tmp_path / "late", n_visits=5, seed=SEED, detectors=[DETECTOR], transients_from=3)
    visits = late.visit_ids
    kinds = np.asarray(late.sources["kind"])
    in_visit = np.asarray(late.sources["visit"])
    assert not np.any((kinds == "transient") & np.isin(in_visit, visits[:3]))
    assert np.all(np.asarray(late.transients["first_visit"]) >= visits[3])
    assert np.count_nonzero(kinds == "transient") >= 2  # the transients do appear later
    # the static sky and the visits do not depend on transients_from
    default = simulate_raws(tmp_path / "default", n_visits=5, seed=SEED, detectors=[DETECTOR])
    assert np.array_equal(default.transients["ra"], late.transients["ra"])
    assert np.any(np.asarray(default.transients["first_visit"]) < visits[3])
    static_late = late.sources[kinds != "transient"]
    static_default = default.sources[np.asarray(default.sources["kind"]) != "transient"]
    assert np.array_equal(static_late["flux"], static_default["flux"])


def test_transients_from_out_of_range_is_rejected(tmp_path):
    for bad in (-1, 2):
        with pytest.raises(SimulationError, match=r"transients_from .* 0\.\.1"):
            simulate_raws(tmp_path, n_visits=2, seed=0, detectors=[0], transients_from=bad)
    args = ["simulate-raws", str(tmp_path / "cli"), "--visits", "1", "--detectors", "0", "--transients-from", "1"]
    result = CliRunner().invoke(butler_cli, args)
    assert result.exit_code == 2 and "transients_from" in result.output


def test_variable_star_flux_changes_between_visits_as_truth(sim, calexps):
    rows = sim.sources[(sim.sources["kind"] == "variable") & (sim.sources["detector"] == DETECTOR)]
    assert len(rows) == 2
    measured = []
    for row in rows:
        pixels, *_ = aperture(calexps[int(row["visit"])].image, row["x"], row["y"], 4 * row["psf_fwhm"] / PIXEL_SCALE / 2.3548)
        measured.append(pixels.sum())
    assert measured[1] / measured[0] == pytest.approx(rows["flux"][1] / rows["flux"][0], rel=0.05)
    # counts and nJy agree through each visit's photometric calibration
    for row in rows:
        calib = sim.visit(int(row["visit"]))["calib_nJy_per_count"]
        assert row["flux_nJy"] == pytest.approx(row["flux"] * calib, rel=1e-9)


def test_cli_simulate_raws_writes_raws_and_truth(tmp_path):
    result = CliRunner().invoke(
        butler_cli, ["simulate-raws", str(tmp_path / "out"), "--visits", "1", "--seed", "5", "--band", "g", "--detectors", "0"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "raw" / "SimCam_g_001000_S00.fits").is_file()
    assert (tmp_path / "out" / "truth" / "summary.yaml").is_file()
    assert "SimCam-g" in result.output
    bad = CliRunner().invoke(butler_cli, ["simulate-raws", str(tmp_path / "bad"), "--detectors", "12"])
    assert bad.exit_code == 2 and "detector ids are" in bad.output


# Ingest ---------------------------------------------------------------------------------------------------


def _ingest_and_define(root: Path, raws: list[Path]) -> Butler:
    from tasks.instruments.ingest import ingest_raws
    from tasks.instruments.visits import define_visits

    Butler.create(root).close()
    butler = Butler(root, writeable=True)
    report = ingest_raws(butler, raws)
    assert not report.failures, report.failures
    define_visits(butler, "SimCam")
    return butler


def test_ingested_raw_reads_back_with_the_simcam_formatter(sim, tmp_path):
    pytest.importorskip("tasks.instruments.ingest")
    butler = _ingest_and_define(tmp_path / "repo", sim.raw_paths)
    raw = butler.get("raw", instrument="SimCam", exposure=2000, detector=DETECTOR, collections="SimCam/raw/all")
    assert raw.bbox == Box2I(0, 0, 1088, 1024) and raw.detector.name == "S11"
    regions = list(butler.registry.query_dimension_records("visit_detector_region"))
    assert len(regions) == 2
    butler.close()


@pytest.mark.slow
def test_ingest_and_define_visits_give_nine_detectors_per_visit_with_regions(tmp_path):
    pytest.importorskip("tasks.instruments.ingest")
    truth = simulate_raws(tmp_path / "sim", n_visits=2, seed=3)
    butler = _ingest_and_define(tmp_path / "repo", [truth.root / "raw"])
    regions = list(butler.registry.query_dimension_records("visit_detector_region"))
    assert sorted((r.visit, r.detector) for r in regions) == [(v, d) for v in truth.visit_ids for d in range(9)]
    visits = {r.id: r for r in butler.registry.query_dimension_records("visit")}
    assert sorted(visits) == truth.visit_ids
    # each detector region holds the sky position of its detector's centre
    from lsst.sphgeom import LonLat, UnitVector3d

    from tasks.instruments.simcam import detector_wcs

    camera = SimCam().camera
    for region in regions:
        v = truth.visit(region.visit)
        ra, dec = detector_wcs(camera[region.detector], v["ra"], v["dec"]).pixel_to_world_values(511.5, 511.5)
        assert region.region.contains(UnitVector3d(LonLat.fromDegrees(float(ra), float(dec))))
    butler.close()


def test_ingest_simulation_gives_process_ccd_its_inputs(sim, tmp_path):
    """Raws in SimCam/raw/all, one visit per exposure, the reference catalogue through the ``refcats`` chain."""
    with Butler.create(tmp_path / "repo") as butler:
        ingest_simulation(butler, sim)
        raws = butler.query_datasets("raw", collections="SimCam/raw/all")
        assert sorted((r.data_id["exposure"], r.data_id["detector"]) for r in raws) == [
            (v, DETECTOR) for v in sim.visit_ids
        ]
        visits = {r.id for r in butler.query_dimension_records("visit", instrument="SimCam")}
        assert visits == set(sim.visit_ids)
        refcat = butler.get("refcat", collections="refcats")
        assert len(refcat) == len(sim.reference_catalog())


def test_ingest_simulation_refuses_an_unreadable_raw(sim, tmp_path):
    shutil.copytree(sim.root, tmp_path / "sim")
    broken = SimulationTruth.load(tmp_path / "sim")
    broken.raw_path(sim.visit_ids[0], DETECTOR).write_bytes(b"not a FITS file")
    with Butler.create(tmp_path / "repo") as butler, pytest.raises(IngestError, match="could not all be ingested"):
        ingest_simulation(butler, broken)
