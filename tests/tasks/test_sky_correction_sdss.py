"""SDSS: the DR12 frame reader (tasks/instruments/sdss/dr12.py), and SkyCorrectionTask on SDSS frames as
one-detector focal planes: our sky model of the sky-restored DR12 frame against SDSS's own (HDU2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from scipy.interpolate import RegularGridInterpolator

from butler import Butler, FileDataset
from graph import Pipeline
from graph.cli import cli
from tasks.background import SubtractBackgroundTask
from tasks.image import Camera
from tasks.instruments import define_visits, ingest_raws
from tasks.instruments.sdss import Sdss, read_dr12_frame
from tasks.instruments.sdss.dr12 import sdss_gain_dark_variance
from tasks.sky_correction import SkyCorrectionTask

FRAME = "sdss_stripe82_extra/frame-g-000094-1-0131.fits.bz2"
SDSS_PIPELINE = "repo_template/pipelines/Sdss/SkyCorrection.yaml"


@pytest.fixture(scope="module")
def dr12_path(shared_data: Path) -> Path:
    path = shared_data / FRAME
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def dr12(dr12_path: Path):
    return read_dr12_frame(dr12_path)


@pytest.fixture(scope="module")
def hdus(dr12_path: Path):
    with fits.open(dr12_path) as hdul:
        return (hdul[0].header.copy(), np.array(hdul[0].data, dtype=np.float64), np.array(hdul[1].data, np.float64),
                {name: np.array(hdul[2].data[name][0], np.float64) for name in ("ALLSKY", "XINTERP", "YINTERP")})


def test_dr12_counts_undo_the_calibration_and_sky_subtraction(dr12, hdus):
    """(counts - sky) * calibvec[column] gives back the nanomaggy image of HDU0 (float32 precision); the
    PhotoCalib is the header's NMGY in nJy (1 nanomaggy = 3631 nJy), within 1% of the median calibvec."""
    header, image, calibvec, _ = hdus
    exposure, sky = dr12
    assert exposure.image.shape == image.shape == sky.shape == (1489, 2048)
    back = (exposure.image.astype(np.float64) - sky) * calibvec[None, :]
    scale = np.abs(image) + 1e-3 * np.std(image)  # float32 rounding of counts ~110 DN, relative to the pixel noise
    assert np.max(np.abs(back - image) / scale) < 1e-3
    assert exposure.photo_calib.calibration_mean == pytest.approx(header["NMGY"] * 3631.0, rel=1e-9)
    assert np.median(calibvec) == pytest.approx(header["NMGY"], rel=0.01)


def test_dr12_sky_is_the_bilinear_interpolation_of_allsky(dr12, hdus):
    """The sky image is ALLSKY interpolated bilinearly at (XINTERP, YINTERP), positions beyond the grid clamped to
    its edge (an independent scipy evaluation), and its level is a plausible g-band night sky: 20.5-22.5 mag
    per square arcsec at the frame's calibration."""
    header, _, _, sky_hdu = hdus
    _, sky = dr12
    grid = sky_hdu["ALLSKY"]
    interpolator = RegularGridInterpolator((np.arange(grid.shape[0]), np.arange(grid.shape[1])), grid)
    yy, xx = np.meshgrid(np.clip(sky_hdu["YINTERP"], 0, grid.shape[0] - 1),
                         np.clip(sky_hdu["XINTERP"], 0, grid.shape[1] - 1), indexing="ij")
    expected = interpolator(np.column_stack([yy.ravel(), xx.ravel()])).reshape(sky.shape)
    np.testing.assert_allclose(sky, expected, rtol=1e-6)
    surface_brightness = 22.5 - 2.5 * np.log10(np.median(sky) * header["NMGY"] / 0.396**2)
    print(f"sky {np.median(sky):.2f} DN = {surface_brightness:.2f} mag/arcsec^2")
    assert 20.5 < surface_brightness < 22.5


def test_dr12_variance_predicts_the_pixel_noise(dr12):
    """The SDSS noise model (gain 3.32 e-/DN, dark variance 15.6 DN^2 for g1) predicts the pixel noise of the
    sky: the robust scatter of neighbouring-pixel differences is 0.97-1.08 times sqrt(variance)."""
    exposure, sky = dr12
    assert sdss_gain_dark_variance(1, "g", 94) == (3.32, 15.6025)
    residual = exposure.image.astype(np.float64) - sky
    difference = (residual[:, 1:] - residual[:, :-1]) / np.sqrt(2)
    q25, q75 = np.percentile(difference, [25, 75])
    ratio = 0.7413 * (q75 - q25) / np.sqrt(np.median(exposure.variance))
    print(f"measured / predicted pixel noise: {ratio:.3f}")
    assert 0.97 <= ratio <= 1.08


def test_dr12_exposure_metadata(dr12):
    """The WCS puts the frame's centre inside its documented footprint; detector g1 of the SDSS camera."""
    exposure, _ = dr12
    ra, dec = exposure.wcs.pixel_to_world_values(1023.5, 744.0)
    assert 354.390 < ra < 354.554 and -1.043 < dec < -0.818
    assert exposure.detector == Sdss().camera["g1"]
    assert exposure.filter.band == "g"
    assert exposure.visit_info.exposure_time == pytest.approx(53.9, abs=0.01)


# SkyCorrectionTask on SDSS frames -------------------------------------------------------------------------------


def _sdss_sky_correction_config():
    """The skyCorr configuration SDSS users run: that of repo_template/pipelines/Sdss/SkyCorrection.yaml."""
    return Pipeline.from_file(SDSS_PIPELINE).to_graph().tasks["skyCorr"].config


def test_sky_model_of_the_dr12_frame_agrees_with_sdss(dr12):
    """Acceptance: the DR12 frame with its sky restored, as a one-detector focal plane through
    SkyCorrectionTask.run (Sdss/SkyCorrection.yaml's configuration: doSky false, objects masked), after a
    first 128-pixel background as ProcessCcd would subtract; our sky model (calexpBackground + skyCorr) agrees
    with SDSS's (HDU2) within 0.2 sigma RMS over the frame (sigma: sqrt of the median variance, 7.0 DN)."""
    exposure, sky = dr12
    config = _sdss_sky_correction_config()
    assert not config.doSky and config.doMaskObjects
    camera = Camera("SDSS-frame", [exposure.detector], Sdss().camera.plate_scale)
    calexp = exposure.copy()
    calexp_background = SubtractBackgroundTask().run(calexp).background
    task = SkyCorrectionTask(config=config)
    result = task.run([calexp], [calexp_background], [], camera)
    model = calexp_background.get_image(exposure.bbox).astype(np.float64) + result.skyCorr[0].get_image(exposure.bbox)
    sigma = np.sqrt(np.median(exposure.variance))
    rms = np.sqrt(np.mean((model - sky) ** 2)) / sigma
    print(f"our sky - SDSS sky: RMS {rms:.3f} sigma, mean {np.mean(model - sky) / sigma:+.3f} sigma")
    assert rms <= 0.2
    assert result.missingDetectors == [] and result.skyFrameScale == 0.0


@pytest.mark.slow
def test_sdss_sky_correction_pipeline_on_the_demo_frames(tmp_path: Path, shared_data: Path):
    """Sdss/SkyCorrection.yaml from raws on the r-band frames test_drp_sdss.py processes (runs 4192 and 6377,
    CCD r4): every quantum succeeds; each visit is a one-detector focal plane (the other 29 SDSS CCDs reported
    missing); the new sky model agrees with ProcessCcd's calexpBackground within 0.1 sigma RMS and the
    corrected mosaic is flat to 0.1 sigma (residualRmsPixelSigma)."""
    demo = shared_data / "sdss_stripe82_lsst_demo"
    repo = tmp_path / "repo"
    with Butler.create(repo) as butler:
        butler.register_dataset_type("refcat", [], "AstropyFitsTable")
        butler.ingest(FileDataset(demo / "ref_cat" / "stars.fits", "refcat", {}), transfer="symlink",
                      run="refcats/stripe82")
        butler.collection_chain("refcats", ["refcats/stripe82"])
        assert ingest_raws(butler, [demo / "input"], transfer="symlink").ok
        define_visits(butler, "Sdss")
    result = CliRunner().invoke(cli, ["run", "-b", str(repo), "-p", SDSS_PIPELINE, "-i", "SDSS/raw/all,refcats",
                                      "-o", "skyCorr", "-d", "band = 'r'", "--register-dataset-types", "-j", "2"])
    print(result.output)
    assert result.exit_code == 0 and "all quanta succeeded" in result.output, result.output
    with Butler(repo, writeable=False) as butler:
        refs = butler.query_datasets("skyCorr", collections="skyCorr")
        assert sorted(int(ref.data_id["visit"]) for ref in refs) == [419220300, 637720399]
        for ref in refs:
            data_id = {"instrument": "SDSS", "visit": ref.data_id["visit"], "detector": ref.data_id["detector"]}
            metadata = butler.get("skyCorr_metadata", instrument="SDSS", visit=data_id["visit"], collections="skyCorr")
            assert int(metadata["skyCorr.nDetectors"]) == 1
            assert len(str(metadata["skyCorr.missingDetectors"]).split(",")) == 29
            calexp = butler.get("calexp", data_id, collections="skyCorr")
            old = butler.get("calexpBackground", data_id, collections="skyCorr").get_image(calexp.bbox)
            new = old + butler.get(ref).get_image(calexp.bbox)
            sigma = np.sqrt(np.median(calexp.variance))
            rms = float(np.sqrt(np.mean((new - old) ** 2)) / sigma)
            print(f"visit {data_id['visit']}: new - calexpBackground RMS {rms:.3f} sigma, corrected mosaic RMS "
                  f"{metadata['skyCorr.residualRmsPixelSigma']:.3f} sigma")
            assert rms <= 0.1
            assert float(metadata["skyCorr.residualRmsPixelSigma"]) <= 0.1
