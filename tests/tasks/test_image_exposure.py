"""Tests of tasks/image/exposure.py, photo_calib.py, visit_info.py, camera.py and ccddata.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.nddata import CCDData, StdDevUncertainty, VarianceUncertainty
from astropy.time import Time
from astropy.wcs import WCS

from tasks.errors import CameraError, ImageError
from tasks.image import (
    Amplifier,
    Box2I,
    Camera,
    Detector,
    Exposure,
    FilterLabel,
    GaussianPsf,
    MaskedImage,
    PhotoCalib,
    VisitInfo,
    from_ccddata,
    to_ccddata,
)


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [1025.0, 745.0]  # 1-based FITS convention inside the WCS object
    wcs.wcs.cd = [[-1.1e-4, 0.0], [0.0, 1.1e-4]]
    return wcs


def _detector(yaw: float = 0.0) -> Detector:
    amps = (
        Amplifier("C0", Box2I(0, 0, 1024, 1489), Box2I(1024, 0, 20, 1489), 4.5, 5.0, 65535.0, bias_level=1000.0),
        Amplifier("C1", Box2I(1044, 0, 1024, 1489), Box2I(2068, 0, 20, 1489), 4.6, 5.5, 65535.0),
    )
    return Detector(
        id=3,
        name="r3",
        bbox=Box2I(0, 0, 2048, 1489),
        focal_plane_center=(12.0, -40.0),
        yaw=yaw,
        pixel_size=0.024,
        amplifiers=amps,
        raw_bbox=Box2I(0, 0, 2088, 1489),
    )


def _exposure() -> Exposure:
    rng = np.random.default_rng(5)
    mi = MaskedImage(rng.normal(size=(40, 60)), variance=np.full((40, 60), 2.0), xy0=(1000, 700))
    mi.mask.set_plane("SAT", Box2I(1010, 705, 3, 2))
    mi.mask.set_plane("DETECTED_NEGATIVE", Box2I(1050, 730, 1, 1))
    exposure = Exposure(
        mi,
        wcs=_wcs(),
        psf=GaussianPsf(15, 15, 1.8),
        photo_calib=PhotoCalib(3.5, 0.1),
        visit_info=VisitInfo(exposure_time=53.9, id=94),
        detector=_detector(),
        filter=FilterLabel(band="r", physical_filter="r-SDSS"),
    )
    exposure.metadata["OBSERVER"] = "test"
    return exposure


# ---------------------------------------------------------------- PhotoCalib
def test_one_count_at_one_njy_per_count_is_ab_31_4():
    calib = PhotoCalib(1.0)
    assert calib.instflux_to_magnitude(1.0) == pytest.approx(31.4, abs=1e-12)
    assert calib.instrumental_zero_point == pytest.approx(31.4)


def test_photo_calib_conversions_and_zero_point():
    calib = PhotoCalib.from_zero_point(27.0)
    assert calib.calibration_mean == pytest.approx(10 ** ((31.4 - 27.0) / 2.5))
    assert calib.instflux_to_magnitude(100.0) == pytest.approx(22.0)
    assert calib.magnitude_to_instflux(22.0) == pytest.approx(100.0)
    np.testing.assert_allclose(
        calib.instflux_to_nanojansky(np.array([1.0, 2.0])), [calib.calibration_mean, 2 * calib.calibration_mean]
    )
    assert np.isnan(calib.instflux_to_magnitude(-5.0))


def test_photo_calib_error_propagation():
    calib = PhotoCalib(2.0, 0.1)
    flux, err = calib.instflux_to_nanojansky(100.0, 5.0)
    assert flux == 200.0 and err == pytest.approx(np.hypot(5.0 * 2.0, 100.0 * 0.1))
    mag, mag_err = calib.instflux_to_magnitude(100.0, 5.0)
    assert mag_err == pytest.approx(1.0857362 * err / flux)


def test_calibrate_image_scales_image_and_variance():
    mi = MaskedImage(np.full((2, 2), 10.0), variance=np.full((2, 2), 4.0), xy0=(3, 4))
    calibrated = PhotoCalib(2.5).calibrate_image(mi)
    assert calibrated.image[0, 0] == 25.0 and calibrated.variance[0, 0] == 25.0 and calibrated.xy0 == (3, 4)
    assert mi.image[0, 0] == 10.0


def test_photo_calib_rejects_non_positive_mean_and_round_trips():
    with pytest.raises(ImageError, match="calibration_mean"):
        PhotoCalib(0.0)
    calib = PhotoCalib(0.123456789, 1e-3)
    assert PhotoCalib.from_dict(json.loads(json.dumps(calib.to_dict()))) == calib


# ---------------------------------------------------------------- VisitInfo
def test_visit_info_dict_round_trip_is_json_safe_and_keeps_nanoseconds():
    info = VisitInfo(
        date=Time("2021-03-04T05:06:07.123456789", scale="utc"),
        exposure_time=30.0,
        airmass=1.21,
        boresight_ra_dec=(150.1, 2.2),
        boresight_rot_angle=90.0,
        id=12345,
        instrument="SimCam",
        observatory=(-105.82, 32.78, 2788.0),
    )
    data = json.loads(json.dumps(info.to_dict()))
    assert data["date"] == "2021-03-04T05:06:44.123456789"  # TAI = UTC + 37 s
    restored = VisitInfo.from_dict(data)
    assert restored == info
    assert abs((restored.date - info.date).to_value("s")) < 1e-9
    assert restored.date.scale == "tai" and restored.boresight_ra_dec == (150.1, 2.2)


def test_visit_info_defaults_and_unknown_keys():
    assert VisitInfo.from_dict(VisitInfo().to_dict()) == VisitInfo()
    with pytest.raises(ImageError, match="unknown VisitInfo keys"):
        VisitInfo.from_dict({"exposure": 3})


# ---------------------------------------------------------------- camera geometry
def test_detector_centre_maps_to_focal_plane_centre():
    detector = _detector(yaw=30.0)
    fx, fy = detector.pixels_to_focal_plane(*detector.bbox.center)
    assert (fx, fy) == pytest.approx((12.0, -40.0))


@pytest.mark.parametrize("yaw", [0.0, 30.0, 90.0, -137.5])
def test_detector_pixel_focal_plane_round_trip(yaw):
    detector = _detector(yaw)
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 2048, 50), rng.uniform(0, 1489, 50)
    fx, fy = detector.pixels_to_focal_plane(x, y)
    x2, y2 = detector.focal_plane_to_pixels(fx, fy)
    np.testing.assert_allclose(x2, x, atol=1e-9)
    np.testing.assert_allclose(y2, y, atol=1e-9)


def test_detector_yaw_rotates_pixel_axes():
    detector = _detector(yaw=90.0)
    cx, cy = detector.bbox.center
    # one pixel step along +x moves the focal-plane position by +pixel_size along +y when yaw = 90 deg
    fx0, fy0 = detector.pixels_to_focal_plane(cx, cy)
    fx1, fy1 = detector.pixels_to_focal_plane(cx + 100, cy)
    assert (fx1 - fx0, fy1 - fy0) == pytest.approx((0.0, 2.4), abs=1e-12)
    unrotated = _detector(yaw=0.0)
    assert unrotated.pixels_to_focal_plane(cx + 100, cy)[0] - 12.0 == pytest.approx(2.4)


def test_camera_lookup_and_dict_round_trip():
    other = Detector(7, "r7", Box2I(0, 0, 10, 10), (0.0, 0.0), 0.0, 0.015)
    camera = Camera("Test", [_detector(12.0), other], plate_scale=16.5)
    assert camera["r3"] is camera[3] and len(camera) == 2 and camera.ids == [3, 7]
    assert [d.id for d in camera] == [3, 7]
    with pytest.raises(CameraError, match=r"no detector 99; detector ids: \[3, 7\]"):
        camera[99]
    restored = Camera.from_dict(json.loads(json.dumps(camera.to_dict())))
    assert restored == camera and restored[3] == camera[3]
    assert restored[3].get_amplifier("C0").bias_level == 1000.0
    with pytest.raises(CameraError, match="duplicate|used twice"):
        Camera("Bad", [other, other], 1.0)


# ---------------------------------------------------------------- Exposure
def test_sub_exposure_shares_pixels_and_components_in_parent_coordinates():
    exposure = _exposure()
    box = Box2I(1020, 710, 10, 5)
    sub = exposure[box]
    assert sub.bbox == box and sub.xy0 == (1020, 710)
    assert sub.wcs is exposure.wcs and sub.psf is exposure.psf and sub.detector is exposure.detector
    sub.image[0, 0] = 99.0
    assert exposure.image[10, 20] == 99.0
    # the WCS works in parent coordinates for both
    assert sub.wcs.pixel_to_world(1024, 744).ra.deg == pytest.approx(150.0)


def test_exposure_copy_is_deep():
    exposure = _exposure()
    copy = exposure.copy()
    copy.image[:] = 0.0
    copy.metadata["OBSERVER"] = "other"
    copy.wcs.wcs.crval = [0.0, 0.0]
    assert exposure.image.any() and exposure.metadata["OBSERVER"] == "test"
    assert exposure.wcs.wcs.crval[0] == 150.0
    assert copy.psf == exposure.psf and copy.filter == FilterLabel("r", "r-SDSS")


def test_exposure_requires_a_masked_image():
    with pytest.raises(ImageError, match="needs a MaskedImage"):
        Exposure(np.zeros((3, 3)))


# ---------------------------------------------------------------- CCDData
def test_ccddata_round_trip_preserves_pixels_variance_mask_and_coordinates():
    exposure = _exposure()
    ccd = to_ccddata(exposure)
    assert isinstance(ccd, CCDData) and isinstance(ccd.uncertainty, VarianceUncertainty)
    np.testing.assert_array_equal(ccd.mask, exposure.mask.array != 0)
    # CCDData has no xy0: its WCS is re-based to array indices
    assert ccd.wcs.pixel_to_world(24, 44).ra.deg == pytest.approx(150.0)
    back = from_ccddata(ccd)
    assert back.xy0 == exposure.xy0
    np.testing.assert_array_equal(back.image, exposure.image)
    np.testing.assert_array_equal(back.variance, exposure.variance)
    np.testing.assert_array_equal(back.mask.array != 0, exposure.mask.array != 0)
    assert back.mask.planes == exposure.mask.planes
    assert back.metadata["OBSERVER"] == "test" and "LTV1" not in back.metadata
    world = back.wcs.pixel_to_world(1024, 744)
    assert (world.ra.deg, world.dec.deg) == pytest.approx((150.0, 2.0))


def test_from_ccddata_accepts_standard_deviation():
    ccd = CCDData(np.ones((3, 4)), unit="adu", uncertainty=StdDevUncertainty(np.full((3, 4), 3.0)))
    exposure = from_ccddata(ccd)
    assert exposure.variance[0, 0] == 9.0 and exposure.xy0 == (0, 0) and exposure.wcs is None
