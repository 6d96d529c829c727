"""Tests of the FITS formatters of tasks.image.fits: exposures (our layout and the LSST afw layout),
background lists and kernels."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS
from astropy.wcs import Sip

from butler import Butler
from butler.datasets import StorageClass
from butler.errors import FormatterError
from conftest import populate
from tasks.errors import FitsFormatError
from tasks.image import (
    Amplifier,
    Background,
    BackgroundList,
    Box2I,
    Detector,
    Exposure,
    FilterLabel,
    FixedKernel,
    LinearCombinationKernel,
    MaskedImage,
    PcaPsf,
    PhotoCalib,
    VisitInfo,
)
from tasks.image.fits import BackgroundFitsFormatter, ExposureFitsFormatter, KernelFitsFormatter

NY, NX = 512, 384  # one plane of float32 = 786 kB
XY0 = (1200, -37)
LSST_FILE = "sdss_stripe82_extra/mini-r-3-113_0.fits.gz"
NON_PIXEL_COMPONENTS = ["wcs", "psf", "photoCalib", "visitInfo", "bbox", "detector", "filter", "metadata"]


def formatter(cls=ExposureFitsFormatter, storage_class="ExposureF", pytype="tasks.image.Exposure"):
    return cls(StorageClass(storage_class, pytype))


def make_wcs(xy0: tuple[int, int]) -> WCS:
    """A TAN-SIP WCS of parent pixel coordinates with its reference pixel inside the exposure."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    crpix = [xy0[0] + 190.25, xy0[1] + 260.75]  # FITS 1-based pixel of the reference point
    wcs.wcs.crpix = crpix
    wcs.wcs.crval = [150.123456789, 2.2345678901]
    wcs.wcs.cd = [[-1.1e-4, 2.3e-7], [1.9e-7, 1.1e-4]]
    wcs.sip = Sip(
        np.array([[0, 0, 3e-7], [0, 1e-7, 0], [-2e-7, 0, 0]]),
        np.array([[0, 0, 1e-7], [0, 0, 0], [4e-7, 0, 0]]),
        None,
        None,
        crpix,
    )
    return wcs


@pytest.fixture(scope="module")
def exposure() -> Exposure:
    """A synthetic exposure with every component set, nonzero xy0 and a user mask plane."""
    rng = np.random.default_rng(42)
    image = rng.normal(100.0, 10.0, (NY, NX)).astype(np.float32)
    variance = rng.uniform(90.0, 110.0, (NY, NX)).astype(np.float32)
    masked = MaskedImage(image, None, variance, xy0=XY0)
    masked.mask.set_plane("DETECTED", image > 115)
    masked.mask.set_plane("SAT", image > 130)
    masked.mask.set_plane("STREAK", image < 75)  # a user plane, bit 9
    bbox = masked.bbox
    components = rng.normal(0.0, 1.0, (3, 15, 15))
    components[0] += 30 * np.exp(-((np.arange(15) - 7)[None, :] ** 2 + (np.arange(15) - 7)[:, None] ** 2) / 8.0)
    psf = PcaPsf(components, rng.normal(0.0, 0.1, (3, 6)) + np.array([[1, 0, 0, 0, 0, 0]] * 1 + [[0] * 6] * 2), 2, bbox)
    detector = Detector(
        7,
        "R22_S11",
        Box2I(0, 0, 4000, 4072),
        (1.5, -2.25),
        0.3,
        0.01,
        amplifiers=(Amplifier("C00", Box2I(0, 0, 500, 2036), Box2I(500, 0, 32, 2036), 1.7, 6.5, 90000.0),),
    )
    metadata = fits.Header()
    metadata["OBSERVER"] = ("N. Body", "who observed")
    metadata["HIERARCH LSST TEST VALUE"] = 3.25
    metadata["COMMENT"] = "a comment card"
    metadata["LONGSTR"] = "x" * 150  # CONTINUE cards
    return Exposure(
        masked,
        wcs=make_wcs(XY0),
        psf=psf,
        photo_calib=PhotoCalib(57.5439937337, 0.125),
        visit_info=VisitInfo(
            date=Time("2020-01-02T03:04:05.123456789", scale="tai"),
            exposure_time=30.0,
            airmass=1.234,
            boresight_ra_dec=(150.1, 2.2),
            boresight_rot_angle=12.5,
            id=903334,
            instrument="SimCam",
            observatory=(-70.749, -30.2446, 2663.0),
        ),
        detector=detector,
        filter=FilterLabel(band="r", physical_filter="r-SimCam"),
        metadata=metadata,
    )


@pytest.fixture(scope="module")
def exposure_file(exposure: Exposure, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fits") / "calexp.fits"
    formatter().write(exposure, path)
    return path


def assert_same_wcs(a: WCS, b: WCS, pixels: np.ndarray) -> None:
    assert a.to_header(relax=True) == b.to_header(relax=True)
    sep = a.pixel_to_world(pixels[:, 0], pixels[:, 1]).separation(b.pixel_to_world(pixels[:, 0], pixels[:, 1]))
    assert np.max(sep.to_value("arcsec")) < 1e-9


def sample_pixels(bbox: Box2I) -> np.ndarray:
    return np.array(
        [[bbox.x0, bbox.y0], [bbox.x1 - 1, bbox.y0], [bbox.x0 + 77, bbox.y1 - 1], [bbox.center[0], bbox.center[1]]]
    )


def rchar() -> int:
    with open("/proc/self/io") as stream:
        for line in stream:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


@pytest.fixture
def bytes_read(monkeypatch: pytest.MonkeyPatch):
    """Measure the bytes a call reads from files (read system calls; memory mapping is disabled so
    that mapped pixel data cannot escape the count)."""
    if not os.path.exists("/proc/self/io"):
        pytest.skip("needs /proc/self/io (Linux) to count the bytes read")

    class NoMmap(mmap.mmap):
        def __new__(cls, *args, **kwargs):
            raise OSError("memory mapping disabled by the test")

    monkeypatch.setattr(mmap, "mmap", NoMmap)

    def measure(call):
        before = rchar()
        result = call()
        return result, rchar() - before

    return measure


# ------------------------------------------------------------------------------------------------ our layout


def test_full_read_round_trips_every_component_bit_exactly(exposure, exposure_file):
    got = formatter().read(exposure_file)
    assert got.xy0 == XY0 and got.bbox == exposure.bbox
    assert got.image.dtype == np.float32 and got.image.dtype.isnative
    assert np.array_equal(got.image.view(np.uint32), exposure.image.view(np.uint32))
    assert np.array_equal(got.variance.view(np.uint32), exposure.variance.view(np.uint32))
    assert got.mask == exposure.mask  # array, plane names and bits, xy0
    assert (
        got.mask.planes["STREAK"] == 9 and got.mask.get_plane("STREAK").sum() == exposure.mask.get_plane("STREAK").sum()
    )
    assert_same_wcs(got.wcs, exposure.wcs, sample_pixels(exposure.bbox))
    assert got.psf == exposure.psf
    assert np.array_equal(got.psf.compute_kernel_image(1300.0, 100.0), exposure.psf.compute_kernel_image(1300.0, 100.0))
    assert got.photo_calib == exposure.photo_calib
    assert got.visit_info == exposure.visit_info
    assert got.detector == exposure.detector
    assert got.filter == exposure.filter
    assert got.metadata == exposure.metadata  # same cards, same order, same comments


@pytest.mark.parametrize("component", sorted(ExposureFitsFormatter.supported_components))
def test_each_component_read_equals_the_full_reads_component(exposure_file, component):
    fmt = formatter()
    full = fmt.read(exposure_file)
    part = fmt.read(exposure_file, component=component)
    expected = {
        "image": full.image,
        "mask": full.mask,
        "variance": full.variance,
        "wcs": full.wcs,
        "psf": full.psf,
        "photoCalib": full.photo_calib,
        "visitInfo": full.visit_info,
        "bbox": full.bbox,
        "detector": full.detector,
        "filter": full.filter,
        "metadata": full.metadata,
        "coaddInputs": full.coadd_inputs,
    }[component]
    if component == "wcs":
        assert_same_wcs(part, expected, sample_pixels(full.bbox))
    elif isinstance(expected, np.ndarray):
        assert part.dtype == expected.dtype and np.array_equal(part, expected)
    else:
        assert part == expected


@pytest.mark.parametrize("component", NON_PIXEL_COMPONENTS)
def test_component_reads_do_not_read_the_pixels(exposure, exposure_file, bytes_read, component):
    fmt = formatter()
    plane = NY * NX * 4
    fmt.read(exposure_file, component=component)  # warm up: imports read files too
    full, n_full = bytes_read(lambda: fmt.read(exposure_file))
    assert n_full >= 3 * plane  # the counter sees pixel reads
    part, n_part = bytes_read(lambda: fmt.read(exposure_file, component=component))
    assert part is not None
    assert n_part < 0.12 * plane, f"reading {component!r} read {n_part} bytes; one pixel plane is {plane}"


def test_image_component_reads_one_plane_only(exposure_file, bytes_read):
    fmt = formatter()
    fmt.read(exposure_file, component="image")
    image, n = bytes_read(lambda: fmt.read(exposure_file, component="image"))
    plane = NY * NX * 4
    assert image.shape == (NY, NX)
    assert plane <= n < 1.1 * plane


def test_bbox_parameter_reads_the_sub_exposure_in_parent_coordinates(exposure, exposure_file, bytes_read):
    fmt = formatter()
    box = Box2I(XY0[0] + 50, XY0[1] + 300, 120, 40)
    fmt.read(exposure_file, parameters={"bbox": box})
    sub, n = bytes_read(lambda: fmt.read(exposure_file, parameters={"bbox": box}))
    expected = exposure[box]
    assert sub.bbox == box and sub.xy0 == (box.x0, box.y0)
    assert np.array_equal(sub.image, expected.image)
    assert np.array_equal(sub.variance, expected.variance)
    assert sub.mask == expected.mask
    # The WCS stays a parent-coordinate WCS: the sub-exposure's pixel (x, y) is the parent's (x, y).
    assert_same_wcs(sub.wcs, exposure.wcs, sample_pixels(box))
    assert sub.psf == exposure.psf and sub.visit_info == exposure.visit_info
    # Only the box's rows were read: 40 of 512 rows of three planes.
    assert n < 0.15 * 3 * NY * NX * 4
    assert np.array_equal(fmt.read(exposure_file, component="image", parameters={"bbox": box}), expected.image)
    assert fmt.read(exposure_file, component="mask", parameters={"bbox": box}) == expected.mask
    assert fmt.read(exposure_file, component="bbox", parameters={"bbox": box}) == box


def test_bbox_parameter_outside_the_exposure_is_an_error(exposure_file):
    box = Box2I(XY0[0] - 5, XY0[1], 10, 10)
    with pytest.raises(FormatterError, match="not inside the exposure"):
        formatter().read(exposure_file, parameters={"bbox": box})
    with pytest.raises(FormatterError, match="must be a tasks.image.Box2I"):
        formatter().read(exposure_file, parameters={"bbox": (0, 0, 10, 10)})


def test_unknown_component_lists_the_supported_ones(exposure_file):
    with pytest.raises(FormatterError, match="photoCalib"):
        formatter().read(exposure_file, component="calib")


def test_writing_is_deterministic_and_stamp_free(exposure, tmp_path):
    a, b = tmp_path / "a.fits", tmp_path / "b.fits"
    formatter().write(exposure, a)
    formatter().write(exposure.copy(), b)
    assert a.read_bytes() == b.read_bytes()
    with fits.open(a) as hdul:
        for hdu in hdul:
            assert not any(key.startswith("DATE") or key in ("CHECKSUM", "DATASUM") for key in hdu.header)


def test_file_is_a_standard_lsst_style_fits_file(exposure, exposure_file):
    with fits.open(exposure_file) as hdul:
        hdul.verify("exception")
        assert [h.name for h in hdul] == [
            "PRIMARY",
            "IMAGE",
            "MASK",
            "VARIANCE",
            "PSF",
            "PHOTOCALIB",
            "VISITINFO",
            "DETECTOR",
        ]
        assert all("EXTNAME" in h.header for h in hdul)
        assert hdul[0].data is None and hdul[0].header["FILTER"] == "r-SimCam" and hdul[0].header["BAND"] == "r"
        image, mask = hdul["IMAGE"], hdul["MASK"]
        assert image.data.dtype == np.dtype(">f4") and mask.data.dtype == np.dtype(">i4")
        assert hdul["VARIANCE"].data.dtype == np.dtype(">f4")
        assert mask.header["MP_DETECTED"] == 5 and mask.header["MP_STREAK"] == 9
        assert mask.header["MP_DETECTED_NEGATIVE"] == 6
        header = image.header
        assert (header["LTV1"], header["LTV2"]) == (-XY0[0], -XY0[1])
        # astropy reading the header alone maps file pixel (i, j) to where the exposure maps parent (x0+i, y0+j).
        local = WCS(header)
        i, j = np.array([0, 100, 383]), np.array([0, 400, 511])
        sep = local.pixel_to_world(i, j).separation(exposure.wcs.pixel_to_world(i + XY0[0], j + XY0[1]))
        assert np.max(sep.to_value("arcsec")) < 1e-9
        # The 'A' (physical) WCS gives parent pixel coordinates, as ds9 shows them.
        physical = WCS(header, key="A")
        assert np.allclose(
            physical.wcs_pix2world([[0, 0], [10, 20]], 0), [[XY0[0], XY0[1]], [XY0[0] + 10, XY0[1] + 20]]
        )
        # The tables are ordinary FITS tables.
        assert hdul["PHOTOCALIB"].data["calibration_mean"][0] == 57.5439937337
        assert hdul["VISITINFO"].data["exposure_time"][0] == 30.0


def test_exposure_without_optional_components_round_trips(tmp_path):
    exposure = Exposure(MaskedImage(np.arange(12, dtype=np.float32).reshape(3, 4), xy0=(-2, 5)))
    path = tmp_path / "bare.fits"
    formatter().write(exposure, path)
    got = formatter().read(path)
    assert np.array_equal(got.image, exposure.image) and got.xy0 == (-2, 5) and got.mask == exposure.mask
    assert (got.wcs, got.psf, got.photo_calib, got.visit_info, got.detector, got.filter) == (None,) * 6
    assert len(got.metadata) == 0
    assert formatter().read(path, component="psf") is None
    assert formatter().read(path, component="wcs") is None


def coadd_inputs_table() -> Table:
    table = Table(
        {
            "visit": np.array([903334, 903336, 2**40 + 7], dtype=np.int64),
            "weight": np.array([1.25e-4, 0.5e-4, 3.0e-5]),
            "psf_fwhm": np.array([0.71, 0.83, 0.95]),
            "n_pixels": np.array([4840000, 12, 0], dtype=np.int64),
        }
    )
    table["psf_fwhm"].unit = "arcsec"
    table["weight"].info.description = "1 / median variance of the warp"
    table.meta["COADDNAME"] = "deep"
    return table


def test_coadd_inputs_round_trip_with_units_descriptions_and_meta(exposure, tmp_path):
    coadd = exposure.copy()
    coadd.coadd_inputs = coadd_inputs_table()
    path = tmp_path / "coadd.fits"
    formatter().write(coadd, path)
    for got in (formatter().read(path).coadd_inputs, formatter().read(path, component="coaddInputs")):
        assert got.colnames == ["visit", "weight", "psf_fwhm", "n_pixels"]
        for name in got.colnames:
            assert got[name].dtype == coadd.coadd_inputs[name].dtype and got[name].dtype.isnative
            assert np.array_equal(got[name], coadd.coadd_inputs[name])
        assert got["psf_fwhm"].unit == "arcsec"
        assert got["weight"].info.description == "1 / median variance of the warp"
        assert dict(got.meta) == {"COADDNAME": "deep"}
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert hdul[-1].name == "COADDINPUTS" and hdul[0].header["BPHDUS"].endswith(",COADDINPUTS")
    # copy() and sub-exposures carry the table; copies are independent.
    assert coadd[Box2I(XY0[0], XY0[1], 5, 5)].coadd_inputs is coadd.coadd_inputs
    copied = coadd.copy()
    copied.coadd_inputs["weight"][0] = 0.0
    assert coadd.coadd_inputs["weight"][0] == 1.25e-4
    # Deterministic bytes with the table too; without it the file has no COADDINPUTS HDU.
    again = tmp_path / "again.fits"
    formatter().write(coadd.copy(), again)
    assert again.read_bytes() == path.read_bytes()
    assert formatter().read(tmp_path / "again.fits", component="coaddInputs") is not None
    assert exposure.coadd_inputs is None
    plain = tmp_path / "plain.fits"
    formatter().write(exposure, plain)
    assert formatter().read(plain, component="coaddInputs") is None


def test_coadd_inputs_component_reads_do_not_read_the_pixels(exposure, tmp_path, bytes_read):
    coadd = exposure.copy()
    coadd.coadd_inputs = coadd_inputs_table()
    path = tmp_path / "coadd.fits"
    formatter().write(coadd, path)
    fmt = formatter()
    fmt.read(path, component="coaddInputs")
    table, n = bytes_read(lambda: fmt.read(path, component="coaddInputs"))
    assert len(table) == 3
    assert n < 0.12 * NY * NX * 4


def test_structural_metadata_keywords_are_not_written(tmp_path):
    """A raw frame's header copied into metadata must not corrupt the primary HDU."""
    metadata = fits.Header([("NAXIS1", 2048), ("BZERO", 32768), ("XTENSION", "IMAGE"), ("FILTER", "g"), ("RUN", 4192)])
    exposure = Exposure(
        MaskedImage(np.ones((3, 4), dtype=np.float32)), filter=FilterLabel("r", "r1"), metadata=metadata
    )
    path = tmp_path / "raw_like.fits"
    formatter().write(exposure, path)
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert hdul[0].header["FILTER"] == "r1" and "NAXIS1" not in hdul[0].header
    got = formatter().read(path)
    assert list(got.metadata.items()) == [("RUN", 4192)] and got.filter == FilterLabel("r", "r1")


def test_writing_something_else_is_a_formatter_error(tmp_path):
    with pytest.raises(FormatterError, match="writes tasks.image.Exposure"):
        formatter().write(np.zeros((3, 3)), tmp_path / "x.fits")


# ------------------------------------------------------------------------------------------------ damage


def test_truncated_pixel_data_is_a_clear_error(exposure_file, tmp_path):
    data = exposure_file.read_bytes()
    cut = tmp_path / "cut.fits"
    with fits.open(exposure_file) as hdul:
        variance_start = hdul["VARIANCE"].fileinfo()["datLoc"]
    cut.write_bytes(data[: variance_start + 1000])
    with pytest.raises(FitsFormatError, match=r"cut\.fits.*truncated"):
        formatter().read(cut)
    # Tables after the cut are reported missing, not silently read as None.
    with pytest.raises(FitsFormatError, match=r"cut\.fits.*truncated"):
        formatter().read(cut, component="psf")
    # What lies before the cut still reads.
    assert formatter().read(cut, component="bbox").xy0 == XY0


def test_truncated_header_and_non_fits_files_are_clear_errors(exposure_file, tmp_path):
    cut = tmp_path / "cut.fits"
    cut.write_bytes(exposure_file.read_bytes()[:1000])
    with pytest.raises(FitsFormatError, match=r"cut\.fits"):
        formatter().read(cut)
    text = tmp_path / "notes.fits"
    text.write_text("not a FITS file\n" * 200)
    with pytest.raises(FitsFormatError, match=r"notes\.fits"):
        formatter().read(text, component="wcs")
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    with pytest.raises(FitsFormatError, match=r"empty\.fits"):
        formatter().read(empty)


def test_a_fits_file_without_exposure_planes_is_rejected(tmp_path):
    path = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "D", array=[1.0])])]).writeto(path)
    with pytest.raises(FitsFormatError, match="has no IMAGE HDU"):
        formatter().read(path)


# ------------------------------------------------------------------------------------------------ afw layout


def test_lsst_afw_file_reads_with_mask_planes_wcs_and_calibration(shared_data):
    path = shared_data / LSST_FILE
    got = formatter().read(path)
    with fits.open(path) as hdul:
        raw_image, raw_mask = hdul[1].data, hdul[2].data
        header = hdul[1].header
        local = WCS(header)
    x0 = -header["LTV1"]
    assert got.bbox == Box2I(231324, 0, 512, 512) and x0 == 231324
    assert np.array_equal(got.image, raw_image)
    # Planes as the file's MP_* keywords say (the same names and bits as ours), plus our default planes.
    for name, bit in {
        "BAD": 0,
        "SAT": 1,
        "INTRP": 2,
        "CR": 3,
        "EDGE": 4,
        "DETECTED": 5,
        "DETECTED_NEGATIVE": 6,
    }.items():
        assert got.mask.planes[name] == bit
    assert np.array_equal(got.mask.array, raw_mask.astype(np.int32))
    assert 0.01 < got.mask.get_plane("DETECTED").mean() < 0.2 and got.mask.get_plane("INTRP").any()
    # The WCS maps parent pixels where astropy maps the file's pixels (CEA projection, LTV shift).
    i, j = np.array([0, 511, 200, 0]), np.array([0, 0, 300, 511])
    sep = got.wcs.pixel_to_world(i + x0, j).separation(local.pixel_to_world(i, j))
    assert np.max(sep.to_value("arcsec")) < 1e-8
    sky = got.wcs.pixel_to_world(x0 + 256, 256)
    assert 334.55 < sky.ra.deg < 334.62 and -0.64 < sky.dec.deg < -0.58
    # FLUXMAG0 = 6.31e10 counts for an AB magnitude-0 source: 10**(31.4/2.5) / FLUXMAG0 nJy per count.
    assert got.photo_calib.calibration_mean == pytest.approx(10 ** (31.4 / 2.5) / 63095734448.0194, rel=1e-12)
    assert got.photo_calib.instrumental_zero_point == pytest.approx(27.0, abs=1e-9)
    assert got.filter == FilterLabel(band="r", physical_filter="r")
    assert got.psf is None and got.detector is None and got.visit_info is None  # unset in this old file
    assert "FLUXMAG0" not in got.metadata and "CRPIX1" not in got.metadata


def test_lsst_afw_file_components_and_bbox_parameter(shared_data):
    path = shared_data / LSST_FILE
    fmt = formatter()
    full = fmt.read(path)
    assert fmt.read(path, component="bbox") == full.bbox
    assert_same_wcs(fmt.read(path, component="wcs"), full.wcs, sample_pixels(full.bbox))
    assert fmt.read(path, component="mask") == full.mask
    box = Box2I(231324 + 100, 37, 64, 48)
    sub = fmt.read(path, parameters={"bbox": box})
    assert sub.xy0 == (box.x0, box.y0)
    assert np.array_equal(sub.image, full[box].image) and sub.mask == full[box].mask
    assert np.array_equal(sub.variance, full[box].variance)


def test_afw_mask_planes_are_mapped_by_name(tmp_path):
    """An afw-style file whose plane bits differ from ours: bits are moved, unknown planes added."""
    mask = np.zeros((4, 5), dtype=np.int32)
    mask[0, 0] = 1  # CR in the file's bit 0
    mask[1, 1] = 2  # BAD in bit 1
    mask[2, 2] = 4 | 1  # CLIPPED (unknown to us) and CR
    primary = fits.PrimaryHDU()
    hdus = [primary]
    for kind, data in (
        ("IMAGE", np.ones((4, 5), np.float32)),
        ("MASK", mask),
        ("VARIANCE", np.ones((4, 5), np.float32)),
    ):
        hdu = fits.ImageHDU(data)
        hdu.header["EXTTYPE"] = kind
        hdu.header["LTV1"], hdu.header["LTV2"] = -10, -20
        if kind == "MASK":
            hdu.header["MP_CR"], hdu.header["MP_BAD"], hdu.header["HIERARCH MP_CLIPPED"] = 0, 1, 2
        hdus.append(hdu)
    path = tmp_path / "afw.fits"
    fits.HDUList(hdus).writeto(path)
    got = formatter().read(path)
    assert got.xy0 == (10, 20)
    planes = got.mask.planes
    assert planes["CR"] == 3 and planes["BAD"] == 0 and planes["CLIPPED"] == 9
    assert got.mask.interpret(got.mask.array[0, 0]) == ["CR"]
    assert got.mask.interpret(got.mask.array[1, 1]) == ["BAD"]
    assert got.mask.interpret(got.mask.array[2, 2]) == ["CR", "CLIPPED"]
    assert got.wcs is None and got.photo_calib is None


# ------------------------------------------------------------------------------------------------ butler


def test_round_trip_through_a_butler(exposure, tmp_path):
    butler = Butler.create(tmp_path / "repo", run="run1")
    try:
        populate(butler)
        butler.register_dataset_type("calexp", ["visit", "detector"], "ExposureF")
        data_id = {"instrument": "Cam", "visit": 3, "detector": 1}
        ref = butler.put(exposure, "calexp", data_id)
        assert butler.datastore.abspath(butler._stored_info(ref)).suffix == ".fits"
        got = butler.get("calexp", data_id)
        assert np.array_equal(got.image, exposure.image) and got.mask == exposure.mask and got.xy0 == XY0
        assert got.psf == exposure.psf and got.detector == exposure.detector
        assert_same_wcs(butler.get("calexp.wcs", data_id), exposure.wcs, sample_pixels(exposure.bbox))
        assert butler.get("calexp.bbox", data_id) == exposure.bbox
        assert butler.get("calexp.visitInfo", data_id) == exposure.visit_info
        box = Box2I(XY0[0] + 10, XY0[1] + 20, 30, 40)
        sub = butler.get("calexp", data_id, parameters={"bbox": box})
        assert sub.bbox == box and np.array_equal(sub.image, exposure[box].image)
        background = BackgroundList([Background(exposure.bbox, 128, np.full((4, 3), 100.0))])
        butler.register_dataset_type("calexpBackground", ["visit", "detector"], "Background")
        butler.put(background, "calexpBackground", data_id)
        assert butler.get("calexpBackground", data_id)[0] == background[0]
    finally:
        butler.close()


# ------------------------------------------------------------------------------------------------ backgrounds, kernels


def test_background_list_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(3)
    bbox = Box2I(-5, 17, 300, 200)
    backgrounds = BackgroundList(
        [
            Background(
                bbox,
                (64, 128),
                rng.normal(100, 5, (4, 3)),
                counts=rng.integers(0, 5000, (4, 3)).astype(float),
                variances=rng.uniform(0, 1, (4, 3)),
                interpolation="akima",
            ),
            Background(bbox, 50, rng.normal(0, 1, (4, 6)), interpolation="constant"),
        ]
    )
    path = tmp_path / "bg.fits"
    fmt = formatter(BackgroundFitsFormatter, "Background", "tasks.image.BackgroundList")
    fmt.write(backgrounds, path)
    got = fmt.read(path)
    assert isinstance(got, BackgroundList) and len(got) == 2
    assert got[0] == backgrounds[0] and got[1] == backgrounds[1]
    assert np.array_equal(got.get_image(), backgrounds.get_image())
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "BACKGROUND", "BACKGROUND"]
    fmt.write(BackgroundList(), tmp_path / "empty.fits")
    assert len(fmt.read(tmp_path / "empty.fits")) == 0
    with pytest.raises(FormatterError, match="BackgroundList"):
        fmt.write(backgrounds[0], tmp_path / "single.fits")


@pytest.mark.parametrize("kind", ["fixed", "linear_combination"])
def test_kernel_round_trips_exactly(tmp_path, kind):
    rng = np.random.default_rng(5)
    if kind == "fixed":
        kernel = FixedKernel(rng.normal(size=(11, 13)))
    else:
        kernel = LinearCombinationKernel(
            rng.normal(size=(4, 9, 9)), rng.normal(size=(4, 6)), 2, Box2I(10, 20, 500, 400)
        )
    path = tmp_path / "kernel.fits"
    fmt = formatter(KernelFitsFormatter, "MatchingKernel", "tasks.image.Kernel")
    fmt.write(kernel, path)
    got = fmt.read(path)
    assert type(got) is type(kernel) and got == kernel
    assert np.array_equal(got.compute_image(100.0, 200.0), kernel.compute_image(100.0, 200.0))


def test_reading_a_file_with_the_wrong_formatter_is_an_error(tmp_path):
    path = tmp_path / "kernel.fits"
    formatter(KernelFitsFormatter, "MatchingKernel", "tasks.image.Kernel").write(FixedKernel(np.ones((3, 3))), path)
    with pytest.raises(FitsFormatError, match="does not hold a BackgroundList"):
        formatter(BackgroundFitsFormatter, "Background", "tasks.image.BackgroundList").read(path)
    with pytest.raises(FitsFormatError, match="holds a Kernel, not an exposure"):
        formatter().read(path, component="wcs")
