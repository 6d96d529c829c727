"""Tests of GetTemplateTask (tasks/get_template.py): mosaicking coadd patches and warping them onto a detector."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.wcs import WCS

from graph.errors import NoWorkFound
from graph.testing import make_quantum, make_test_repo, run_test_quantum
from tasks.get_template import GetTemplateTask
from tasks.image import (
    Box2I,
    Exposure,
    FilterLabel,
    GaussianPsf,
    MaskedImage,
    PhotoCalib,
    SkyMap,
)

PIXEL_SCALE = 0.2  # arcsec, tract pixels
DETECTOR_SCALE = 0.21  # arcsec, detector pixels
CENTER = (150.0, 2.0)
SKY_CONFIG = {
    "name": "test",
    "type": "discrete",
    "pixel_scale": PIXEL_SCALE,
    "patch_inner_dimensions": [200, 200],
    "patch_border": 20,
    "tracts": [{"ra": CENTER[0], "dec": CENTER[1], "radius": 0.03}],
}
COADD_SIGMA = 2.0  # PSF sigma of the coadds [tract pixels]
DETECTOR_BOX = Box2I(10, 20, 320, 240)

# Smooth sky: blobs of surface brightness [nJy / arcsec^2] at offsets (arcsec) from CENTER, sigma 0.8 arcsec.
_rng = np.random.default_rng(2024)
BLOBS = np.column_stack([_rng.uniform(-45, 45, 40), _rng.uniform(-40, 40, 40), _rng.uniform(500, 3000, 40)])
BLOB_SIGMA = 0.8  # arcsec
SKY_LEVEL = 200.0  # nJy / arcsec^2


def surface_brightness(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """The synthetic sky [nJy / arcsec^2] at (ra, dec) [deg]."""
    dx = (np.asarray(ra) - CENTER[0]) * math.cos(math.radians(CENTER[1])) * 3600.0
    dy = (np.asarray(dec) - CENTER[1]) * 3600.0
    out = np.full(np.shape(dx), SKY_LEVEL)
    for bx, by, amp in BLOBS:
        out += amp * np.exp(-0.5 * ((dx - bx) ** 2 + (dy - by) ** 2) / BLOB_SIGMA**2)
    return out


def pixel_sky(wcs: WCS, bbox: Box2I, scale: float) -> np.ndarray:
    """The sky sampled at the pixel centres of ``bbox`` [nJy per pixel of ``scale`` arcsec]."""
    yy, xx = np.mgrid[bbox.y0 : bbox.y1, bbox.x0 : bbox.x1]
    ra, dec = wcs.wcs_pix2world(xx, yy, 0)
    return surface_brightness(ra, dec) * scale**2


@pytest.fixture(scope="module")
def skymap() -> SkyMap:
    return SkyMap.from_config(SKY_CONFIG)


def make_coadd(patch) -> Exposure:
    bbox = patch.outer_bbox
    image = pixel_sky(patch.wcs, bbox, PIXEL_SCALE).astype(np.float32)
    variance = np.full(bbox.shape, 4.0, dtype=np.float32)
    return Exposure(
        MaskedImage(image, None, variance, xy0=bbox.xy0),
        wcs=patch.wcs,
        psf=GaussianPsf(21, 21, COADD_SIGMA),
        photo_calib=PhotoCalib(1.0),
        filter=FilterLabel(band="r"),
    )


@pytest.fixture(scope="module")
def coadds(skymap) -> dict[int, Exposure]:
    return {patch.id: make_coadd(patch) for patch in skymap[0]}


def detector_wcs(offset_arcsec: tuple[float, float] = (0.0, 0.0), rotation_deg: float = 30.0) -> WCS:
    """A TAN WCS of the detector: 0.21 arcsec pixels rotated by ``rotation_deg``, centred near CENTER."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    cx, cy = DETECTOR_BOX.center
    wcs.wcs.crpix = [
        cx + 1.0,
        cy + 1.0,
    ]  # 1-based: the box centre is the reference pixel
    cos_dec = math.cos(math.radians(CENTER[1]))
    wcs.wcs.crval = [
        CENTER[0] + offset_arcsec[0] / 3600.0 / cos_dec,
        CENTER[1] + offset_arcsec[1] / 3600.0,
    ]
    t = math.radians(rotation_deg)
    s = DETECTOR_SCALE / 3600.0
    wcs.wcs.cd = [
        [-s * math.cos(t), s * math.sin(t)],
        [s * math.sin(t), s * math.cos(t)],
    ]
    return wcs


def overlapping(skymap, coadds, wcs: WCS, bbox: Box2I, drop: set[int] = frozenset()):
    corners = bbox.corners()
    ra, dec = wcs.wcs_pix2world(corners[:, 0], corners[:, 1], 0)
    patches = [p.id for p in skymap[0].find_patch_list(ra, dec) if p.id not in drop]
    return [coadds[p] for p in patches], [{"tract": 0, "patch": p} for p in patches]


def tract_position(skymap, wcs: WCS, bbox: Box2I) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[bbox.y0 : bbox.y1, bbox.x0 : bbox.x1]
    ra, dec = wcs.wcs_pix2world(xx, yy, 0)
    return skymap[0].sky_to_pixel(ra, dec)


# ---------------------------------------------------------------------------------------------------------------


def test_template_reproduces_the_sky_on_a_rotated_detector(skymap, coadds):
    wcs = detector_wcs()
    exposures, data_ids = overlapping(skymap, coadds, wcs, DETECTOR_BOX)
    assert len(exposures) >= 4  # the detector spans several patches
    task = GetTemplateTask()
    template = task.run(exposures, DETECTOR_BOX, wcs, skymap, dataIds=data_ids, physicalFilter="r1").template
    assert template.bbox == DETECTOR_BOX and template.wcs is wcs
    assert template.photo_calib == PhotoCalib(1.0) and template.filter == FilterLabel("r", "r1")
    truth = pixel_sky(wcs, DETECTOR_BOX, DETECTOR_SCALE)
    assert not template.mask.get_plane("NO_DATA").any() and np.isfinite(template.image).all()
    error = template.image - truth
    peak = truth.max()
    assert np.max(np.abs(error)) < 0.005 * peak  # measured 0.0028
    assert np.sqrt(np.mean(error**2)) < 0.0005 * peak  # measured 0.0002
    # Flux is conserved: the total agrees to 1e-4.
    assert template.image.sum() / truth.sum() == pytest.approx(1.0, abs=1e-4)
    # The variance scales with the squared pixel-area ratio (and the kernel's sum of squared weights <= 1).
    assert (
        0.3 * 4.0 * (DETECTOR_SCALE / PIXEL_SCALE) ** 4
        < np.median(template.variance)
        < 4.0 * (DETECTOR_SCALE / PIXEL_SCALE) ** 4
    )
    assert task.metadata["coverageFraction"] == 1.0
    assert task.metadata["numPatches"] == len(exposures)


def test_template_psf_is_the_coadd_psf_in_detector_pixels(skymap, coadds):
    wcs = detector_wcs(rotation_deg=-65.0)
    exposures, data_ids = overlapping(skymap, coadds, wcs, DETECTOR_BOX)
    template = GetTemplateTask().run(exposures, DETECTOR_BOX, wcs, skymap, dataIds=data_ids).template
    expected = COADD_SIGMA * PIXEL_SCALE / DETECTOR_SCALE
    for x, y in [DETECTOR_BOX.center, (DETECTOR_BOX.x0 + 15.0, DETECTOR_BOX.y0 + 15.0)]:
        assert template.psf.determinant_radius(x, y) == pytest.approx(expected, rel=0.02)
        ixx, iyy, ixy = template.psf.compute_shape(x, y)
        assert abs(ixx - iyy) < 0.02 * expected**2 and abs(ixy) < 0.02 * expected**2


def test_no_data_where_no_coadd_covers_the_detector(skymap, coadds):
    # The detector overhangs the tract's lower-left corner, and one overlapping patch is missing.
    tract_box = skymap[0].bbox
    corner = skymap[0].wcs.wcs_pix2world([[tract_box.x0 + 60.0, tract_box.y0 + 80.0]], 0)[0]
    dx = (corner[0] - CENTER[0]) * math.cos(math.radians(CENTER[1])) * 3600.0
    dy = (corner[1] - CENTER[1]) * 3600.0
    wcs = detector_wcs(offset_arcsec=(dx, dy), rotation_deg=20.0)
    missing_patch = skymap[0].patch_info((1, 0))
    exposures, data_ids = overlapping(skymap, coadds, wcs, DETECTOR_BOX, drop={missing_patch.id})
    task = GetTemplateTask()
    template = task.run(exposures, DETECTOR_BOX, wcs, skymap, dataIds=data_ids).template
    tx, ty = tract_position(skymap, wcs, DETECTOR_BOX)
    # Where data exists: the union of the given patches' outer boxes.
    covered = np.zeros(DETECTOR_BOX.shape, bool)
    inside = np.zeros(DETECTOR_BOX.shape, bool)
    for d in data_ids:
        box = skymap[0].patch_info(d["patch"]).outer_bbox
        covered |= box.contains_point(tx, ty)
        inside |= box.dilated(-5).contains_point(tx, ty)  # 5 px from the edge: the kernel sees only data
    nodata = template.mask.get_plane("NO_DATA")
    assert nodata[~covered].all() and np.isnan(template.image[~covered]).all()
    assert np.isnan(template.variance[nodata]).all()
    interior = inside
    assert not nodata[interior].any()
    truth = pixel_sky(wcs, DETECTOR_BOX, DETECTOR_SCALE)
    assert np.max(np.abs(template.image[interior] - truth[interior])) < 0.01 * truth.max()
    expected_fraction = (~nodata).mean()
    assert task.metadata["coverageFraction"] == pytest.approx(expected_fraction)
    assert 0.2 < expected_fraction < 0.9  # the test covers both cases substantially
    # The missing patch's inner box, beyond its neighbours' borders, has no data.
    hole = missing_patch.inner_bbox.dilated(-(SKY_CONFIG["patch_border"] + 5)).contains_point(tx, ty)
    assert hole.sum() > 100 and nodata[hole].all()


def test_each_pixel_comes_from_the_patch_whose_inner_box_owns_it(skymap, coadds):
    wcs = detector_wcs(rotation_deg=10.0)
    exposures, data_ids = overlapping(skymap, coadds, wcs, DETECTOR_BOX)
    marked = []
    for exposure, d in zip(exposures, data_ids):
        copy = exposure.copy()
        copy.image[...] += np.float32(10.0 * (d["patch"] + 1))  # a patch-specific offset [nJy per tract pixel]
        marked.append(copy)
    template = GetTemplateTask().run(marked, DETECTOR_BOX, wcs, skymap, dataIds=data_ids).template
    offset = template.image - pixel_sky(wcs, DETECTOR_BOX, DETECTOR_SCALE)
    tx, ty = tract_position(skymap, wcs, DETECTOR_BOX)
    area = (DETECTOR_SCALE / PIXEL_SCALE) ** 2
    n_checked = 0
    for d in data_ids:
        owned = skymap[0].patch_info(d["patch"]).inner_bbox.dilated(-4).contains_point(tx, ty)
        if owned.any():
            # (atol: the warp's interpolation error of the sky, ~0.4; neighbouring patches differ by >= 11)
            assert np.allclose(offset[owned], 10.0 * (d["patch"] + 1) * area, atol=1.0)
            n_checked += 1
    assert n_checked >= 4


def test_no_work_found_when_no_coadd_overlaps(skymap, coadds):
    wcs = detector_wcs(offset_arcsec=(600.0, 0.0))  # 10 arcmin away: outside the tract
    with pytest.raises(NoWorkFound, match="covers the detector"):
        GetTemplateTask().run([coadds[0]], DETECTOR_BOX, wcs, skymap, dataIds=[{"tract": 0, "patch": 0}])


def test_get_template_runs_as_a_quantum_from_calexp_components(tmp_path, skymap, coadds):
    from butler import Butler

    wcs = detector_wcs()
    exposures, data_ids = overlapping(skymap, coadds, wcs, DETECTOR_BOX)
    butler = make_test_repo(tmp_path / "repo", {"visit": [7], "detector": [3]}, run="inputs")
    skymap.register(butler, run="skymaps")
    butler.register_dataset_type("calexp", ("instrument", "visit", "detector"), "ExposureF")
    butler.register_dataset_type("templateCoadd", ("skymap", "tract", "patch", "band"), "ExposureF")
    calexp = Exposure(MaskedImage.from_bbox(DETECTOR_BOX), wcs=wcs)
    visit = {"instrument": "TestCam", "visit": 7, "detector": 3}
    butler.put(calexp, "calexp", visit)
    for exposure, d in zip(exposures, data_ids):
        butler.put(exposure, "templateCoadd", {"skymap": "test", "band": "r", **d})
    butler.close()

    butler = Butler(tmp_path / "repo", collections=["inputs", "skymaps"], run="templates")
    task = GetTemplateTask()
    io = {
        "calexp": {},
        "skyMap": {"skymap": "test"},
        "coaddExposures": [{"skymap": "test", "band": "r", **d} for d in data_ids],
        "template": {},
    }
    quantum = make_quantum(task, butler, visit, io)
    refs = run_test_quantum(task, butler, quantum, mock_run=False)
    assert [r.dataset_type.name for r in refs] == ["template"]
    template = butler.get("template", visit, collections="templates")
    direct = GetTemplateTask().run(exposures, DETECTOR_BOX, wcs, skymap, dataIds=data_ids).template
    assert template.bbox == DETECTOR_BOX
    assert np.array_equal(template.image, direct.image)
    assert np.array_equal(template.mask.array, direct.mask.array)
    assert template.filter.band == "r"
    butler.close()


def test_tracts_are_merged_lowest_tract_first():
    east = CENTER[0] + 0.035 / math.cos(math.radians(CENTER[1]))
    two = SkyMap.from_config(
        {
            **SKY_CONFIG,
            "name": "two",
            "tracts": [
                {"ra": CENTER[0], "dec": CENTER[1], "radius": 0.02},
                {"ra": east, "dec": CENTER[1], "radius": 0.02},
            ],
        }
    )
    offset_arcsec = (0.0175 * 3600.0, 0.0)  # the detector straddles the edge of tract 0's box
    wcs = detector_wcs(offset_arcsec=offset_arcsec, rotation_deg=15.0)
    corners = DETECTOR_BOX.corners()
    ra, dec = wcs.wcs_pix2world(corners[:, 0], corners[:, 1], 0)
    exposures, data_ids = [], []
    for tract in two:
        for patch in tract.find_patch_list(ra, dec):
            coadd = make_coadd(patch)
            coadd.image[...] += np.float32(10.0 * tract.id)  # tract 1 is marked by +10 nJy per tract pixel
            exposures.append(coadd)
            data_ids.append({"tract": tract.id, "patch": patch.id})
    assert {d["tract"] for d in data_ids} == {0, 1}
    task = GetTemplateTask()
    template = task.run(exposures, DETECTOR_BOX, wcs, two, dataIds=data_ids).template
    assert not template.mask.get_plane("NO_DATA").any()
    assert task.metadata["numTracts"] == 2 and task.metadata["coverageFraction"] == 1.0
    offset = template.image - pixel_sky(wcs, DETECTOR_BOX, DETECTOR_SCALE)
    yy, xx = np.mgrid[DETECTOR_BOX.y0 : DETECTOR_BOX.y1, DETECTOR_BOX.x0 : DETECTOR_BOX.x1]
    tx, ty = two[0].sky_to_pixel(*wcs.wcs_pix2world(xx, yy, 0))
    in_tract0 = two[0].bbox.dilated(-5).contains_point(tx, ty)
    off_tract0 = ~two[0].bbox.dilated(5).contains_point(tx, ty)
    assert in_tract0.mean() > 0.2 and off_tract0.mean() > 0.2
    area = (DETECTOR_SCALE / PIXEL_SCALE) ** 2
    assert np.max(np.abs(offset[in_tract0])) < 1.0  # tract 0 wherever it has data
    assert np.allclose(offset[off_tract0], 10.0 * area, atol=1.0)  # tract 1 elsewhere
