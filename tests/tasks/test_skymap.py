"""Skymaps: tract and patch geometry, configuration, registration, and spatial joins with visits."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
import yaml
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from click.testing import CliRunner
from lsst.sphgeom import LonLat, UnitVector3d

from butler import Butler
from butler.cli import cli
from butler.regions import polygon_from_radec
from conftest import table_counts
from tasks.errors import SkyMapError
from tasks.image.geom import Box2I
from tasks.image.skymap import DiscreteSkyMap, RingsSkyMap, SkyMap, read_skymap_config

TEMPLATES = Path(__file__).resolve().parents[2] / "repo_template" / "skymaps"

# A small discrete map for the join test: 0.001 deg pixels, 100 px patches -> 0.1 deg patches.
SMALL = {
    "name": "small",
    "type": "discrete",
    "pixel_scale": 3.6,
    "patch_inner_dimensions": [100, 100],
    "patch_border": 10,
    "tracts": [{"ra": 20.0, "dec": 10.0, "radius": 0.3}, {"ra": 20.5, "dec": 10.2, "radius": 0.2}],
}
# A coarse whole-sky rings map (20 deg rings, 2 arcmin pixels).
COARSE_RINGS = {
    "name": "coarse_rings",
    "type": "rings",
    "num_rings": 8,
    "pixel_scale": 120.0,
    "patch_inner_dimensions": [100, 100],
    "patch_border": 5,
    "tract_overlap": 0.5,
}


def _sky(wcs: WCS, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return wcs.wcs_pix2world(xy[:, 0], xy[:, 1], 0)


def _contains(region, ra: float, dec: float) -> bool:
    return bool(region.contains(UnitVector3d(LonLat.fromDegrees(float(ra), float(dec)))))


def _sample_tracts(skymap: SkyMap) -> list:
    return [
        skymap[i] for i in sorted({0, 1, len(skymap) // 3, len(skymap) // 2, len(skymap) - 1} & set(skymap.tract_ids))
    ]


# Geometry ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        SMALL,
        {**SMALL, "name": "wrap", "tracts": [{"ra": 359.95, "dec": -62.0, "radius": 0.4}], "projection": "STG"},
        COARSE_RINGS,
    ],
    ids=["discrete", "discrete-ra-wrap-stg", "rings"],
)
def test_tract_wcs_maps_bbox_center_to_tract_center(config):
    skymap = SkyMap.from_config(config)
    for tract in _sample_tracts(skymap):
        ra, dec = tract.wcs.wcs_pix2world([tract.bbox.center[0]], [tract.bbox.center[1]], 0)
        sep = SkyCoord(ra[0], dec[0], unit="deg").separation(tract.center).deg
        assert sep < 1e-6
        if isinstance(skymap, DiscreteSkyMap):
            t = config["tracts"][tract.id]
            assert tract.center.separation(SkyCoord(t["ra"], t["dec"], unit="deg")).deg < 1e-9


def test_tract_pixel_scale_matches_config():
    tract = SkyMap.from_config(SMALL)[0]
    x, y = tract.bbox.center
    ra, dec = tract.wcs.wcs_pix2world([x, x + 1], [y, y], 0)
    step = SkyCoord(ra, dec, unit="deg")
    assert step[0].separation(step[1]).arcsec == pytest.approx(3.6, rel=1e-6)
    assert ra[1] < ra[0]  # east is left


def test_inner_bboxes_tile_the_tract():
    tract = SkyMap.from_config(SMALL)[0]
    count = np.zeros(tract.bbox.shape, dtype=int)
    for patch in tract:
        assert tract.bbox.contains(patch.inner_bbox)
        count[patch.inner_bbox.slices(tract.bbox)] += 1
    assert np.all(count == 1)
    assert tract.bbox.shape == (tract.num_patches[1] * 100, tract.num_patches[0] * 100)


def test_outer_bbox_is_inner_dilated_by_border_and_clipped():
    tract = SkyMap.from_config(SMALL)[0]
    nx, ny = tract.num_patches
    for patch in tract:
        assert patch.outer_bbox == patch.inner_bbox.dilated(10).intersection(tract.bbox)
        x, y = patch.index
        left, right = (0 if x == 0 else 10), (0 if x == nx - 1 else 10)
        bottom, top = (0 if y == 0 else 10), (0 if y == ny - 1 else 10)
        assert patch.outer_bbox.width == 100 + left + right
        assert patch.outer_bbox.height == 100 + bottom + top


def test_tract_box_covers_radius_and_border():
    skymap = SkyMap.from_config(SMALL)
    tract = skymap[0]
    # 0.3 deg = 300 px each side of the centre pixel plus the 10 px border -> at least 621 px -> 7 patches.
    assert tract.num_patches == (7, 7)
    edge = tract.center.directional_offset_by(np.arange(0, 360, 30) * u.deg, 0.3 * u.deg)
    assert np.all(tract.contains(edge.ra.deg, edge.dec.deg))
    beyond = tract.center.directional_offset_by(np.arange(0, 360, 30) * u.deg, 0.6 * u.deg)
    assert not np.any(tract.contains(beyond.ra.deg, beyond.dec.deg))


def test_patch_sequential_index_is_y_times_nx_plus_x():
    tract = SkyMap.from_config(SMALL)[0]
    nx, _ = tract.num_patches
    for seq, patch in enumerate(tract):
        assert patch.sequential_index == patch.index[1] * nx + patch.index[0] == seq
        assert tract.patch_info(seq) is tract.patch_info(patch.index)
    with pytest.raises(SkyMapError, match="0..48"):
        tract.patch_info(49)
    with pytest.raises(SkyMapError, match="x = 0..6"):
        tract.patch_info((7, 0))


@pytest.mark.parametrize("config", [SMALL, COARSE_RINGS], ids=["discrete", "rings"])
def test_find_patch_of_patch_center_returns_that_patch(config):
    skymap = SkyMap.from_config(config)
    for tract in _sample_tracts(skymap):
        for patch in tract:
            x, y = patch.inner_bbox.center
            (ra,), (dec,) = tract.wcs.wcs_pix2world([x], [y], 0)
            assert tract.find_patch(ra, dec).index == patch.index


def test_find_patch_at_inner_box_edges():
    tract = SkyMap.from_config(SMALL)[0]
    patch = tract.patch_info((3, 2))
    box = patch.inner_bbox
    # Just inside the lower-left and upper-right pixel edges of the inner box.
    for x, y in [(box.x0 - 0.5 + 1e-3, box.y0 - 0.5 + 1e-3), (box.x1 - 0.5 - 1e-3, box.y1 - 0.5 - 1e-3)]:
        (ra,), (dec,) = tract.wcs.wcs_pix2world([x], [y], 0)
        assert tract.find_patch(ra, dec) == patch
    (ra,), (dec,) = tract.wcs.wcs_pix2world([box.x1 - 0.5 + 1e-3], [box.y0 + 5.0], 0)
    assert tract.find_patch(ra, dec).index == (4, 2)


def test_find_patch_outside_tract_raises():
    tract = SkyMap.from_config(SMALL)[0]
    with pytest.raises(SkyMapError, match="outside tract 0"):
        tract.find_patch(25.0, 10.0)
    with pytest.raises(SkyMapError, match="outside tract 0"):
        tract.find_patch(200.0, -10.0)  # on the far side of the sky


@pytest.mark.parametrize("config", [SMALL, COARSE_RINGS], ids=["discrete", "rings"])
def test_patch_region_contains_its_wcs_corners(config):
    skymap = SkyMap.from_config(config)
    inset = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * 1e-3
    for tract in _sample_tracts(skymap):
        for patch in list(tract)[:: max(1, len(tract) // 7)]:
            for box, region in ((patch.outer_bbox, patch.region), (patch.inner_bbox, patch.inner_region)):
                ra, dec = _sky(tract.wcs, box.corners() + inset)
                assert all(_contains(region, a, d) for a, d in zip(ra, dec))
                assert all(_contains(tract.region, a, d) for a, d in zip(ra, dec))
                # ... and not much more: one pixel outside each corner is outside the region.
                ra, dec = _sky(tract.wcs, box.corners() - inset * 1000)
                assert not any(_contains(region, a, d) for a, d in zip(ra, dec))


def test_rings_numbering_matches_lsst():
    # LSST's RingsSkyMap with numRings=120 (e.g. hsc_rings_v1) has 18938 tracts.
    assert len(RingsSkyMap({"name": "r", "type": "rings", "pixel_scale": 0.168})) == 18938
    rings = SkyMap.from_config(COARSE_RINGS)
    assert rings.find_tract(0.0, -89.0).id == 0
    assert rings.find_tract(123.0, 89.0).id == len(rings) - 1
    ring, index = rings.ring_indices(1)
    assert (ring, index) == (0, 0)
    assert rings[1].center_radec == pytest.approx((0.0, -70.0))


def test_rings_find_tract_owns_and_contains_every_position():
    rings = SkyMap.from_config(COARSE_RINGS)
    rng = np.random.default_rng(11)
    xyz = rng.normal(size=(300, 3))
    ra = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) % 360
    dec = np.degrees(np.arcsin(xyz[:, 2] / np.linalg.norm(xyz, axis=1)))
    for a, d in zip(ra, dec):
        tract = rings.find_tract(a, d)
        assert _contains(tract.inner_region, a, d)
        assert tract.contains(a, d)
        assert _contains(tract.region, a, d)


def test_discrete_find_tract_prefers_nearest_centre_and_errors_outside():
    skymap = SkyMap.from_config(SMALL)
    assert skymap.find_tract(20.0, 10.0).id == 0
    assert skymap.find_tract(20.5, 10.2).id == 1
    assert skymap[0].contains(20.26, 9.96) and skymap[1].contains(20.26, 9.96)
    assert skymap.find_tract(20.26, 9.96).id == 0  # in both boxes, nearer tract 0's centre
    assert skymap.find_tract(20.33, 10.2).id == 1
    with pytest.raises(SkyMapError, match="outside every tract.*nearest tract is 1"):
        skymap.find_tract(21.5, 10.2)


def test_find_tract_patch_list_region_and_points():
    skymap = SkyMap.from_config(SMALL)
    tract = skymap[0]
    patch = tract.patch_info((1, 1))
    x, y = patch.inner_bbox.center
    (ra,), (dec,) = tract.wcs.wcs_pix2world([x], [y], 0)
    found = skymap.find_tract_patch_list([ra], [dec])
    assert [(t.id, [p.index for p in ps]) for t, ps in found] == [(0, [(1, 1)])]
    # A small box around the inner corner shared by four patches gets all four, in one tract.
    cx, cy = patch.inner_bbox.x1 - 0.5, patch.inner_bbox.y1 - 0.5
    ra4, dec4 = tract.wcs.wcs_pix2world(
        np.array([cx - 2, cx + 2, cx + 2, cx - 2]), np.array([cy - 2, cy - 2, cy + 2, cy + 2]), 0
    )
    found = skymap.find_tract_patch_list(polygon_from_radec(ra4, dec4))
    assert [(t.id, sorted(p.index for p in ps)) for t, ps in found] == [(0, [(1, 1), (1, 2), (2, 1), (2, 2)])]
    assert skymap.find_tract_patch_list([100.0], [0.0]) == []


def test_rings_find_tract_patch_list_across_tract_boundary():
    rings = SkyMap.from_config(COARSE_RINGS)
    a, b = rings[5], rings[6]  # neighbours in ring 0
    ra_mid = (a.center_radec[0] + b.center_radec[0]) / 2
    dec = a.center_radec[1]
    region = polygon_from_radec(
        [ra_mid - 0.3, ra_mid + 0.3, ra_mid + 0.3, ra_mid - 0.3], [dec - 0.3, dec - 0.3, dec + 0.3, dec + 0.3]
    )
    found = rings.find_tract_patch_list(region)
    assert {t.id for t, _ in found} == {5, 6}
    for tract, patches in found:
        assert patches and all(p.tract_id == tract.id for p in patches)


# Configuration and hash ------------------------------------------------------------------------------------


def test_hash_is_sha256_of_canonical_json_without_name():
    skymap = SkyMap.from_config(SMALL)
    dumped = skymap.config.model_dump(mode="json", exclude={"name"})
    expected = hashlib.sha256(json.dumps(dumped, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert skymap.hash == expected
    # Stable: key order, int-vs-float spelling, explicit defaults and the name do not change it.
    reordered = dict(reversed(list({**SMALL, "pixel_scale": 3.6, "projection": "TAN", "name": "other"}.items())))
    assert SkyMap.from_config(reordered).hash == skymap.hash
    assert (
        SkyMap.from_config({**SMALL, "tracts": [{"ra": 20, "dec": 10, "radius": 0.3}, SMALL["tracts"][1]]}).hash
        == skymap.hash
    )


@pytest.mark.parametrize(
    "change",
    [
        {"pixel_scale": 3.7},
        {"patch_border": 11},
        {"projection": "STG"},
        {"tract_overlap": 0.1},
        {"tracts": [SMALL["tracts"][0]]},
        {"patch_inner_dimensions": [100, 120]},
    ],
)
def test_hash_depends_on_geometry(change):
    assert SkyMap.from_config({**SMALL, **change}).hash != SkyMap.from_config(SMALL).hash


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        ({"pixel_scale": "abc"}, "pixel_scale", "valid number"),
        ({"pixel_scale": -1}, "pixel_scale", "greater than 0"),
        ({"patch_inner_dimensions": [100]}, "patch_inner_dimensions.1", "two integers"),
        ({"patch_inner_dimensions": [100, 0]}, "patch_inner_dimensions.1", "greater than 0"),
        ({"patch_border": 1.5}, "patch_border", "integer"),
        ({"projection": "XYZ"}, "projection", "'TAN'"),
        ({"tracts": [{"ra": 1.0, "dec": 95.0, "radius": 0.1}]}, "tracts.0.dec", r"\[-90, 90\]"),
        ({"tracts": [{"ra": 1.0, "dec": 5.0}]}, "tracts.0.radius", "Field required"),
        ({"type": "hexagons"}, "type", "'discrete', 'rings'"),
        ({"pixel_scal": 1.0}, "pixel_scal", "valid fields: name, pixel_scale"),
    ],
)
def test_config_errors_name_the_field_and_what_is_expected(change, field, expected):
    with pytest.raises(SkyMapError, match="invalid skymap configuration") as info:
        SkyMap.from_config({**SMALL, **change})
    message = str(info.value)
    assert f"- {field}:" in message
    assert re.search(expected, message), message


def test_read_config_with_overrides(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    config = read_skymap_config(path, ["name=renamed", "tracts.1.radius=0.25", "patch_inner_dimensions=[200, 200]"])
    assert config.name == "renamed"
    assert config.tracts[1].radius == 0.25
    assert config.patch_inner_dimensions == (200, 200)
    with pytest.raises(SkyMapError, match="not a valid index"):
        read_skymap_config(path, ["tracts.5.radius=1"])
    with pytest.raises(SkyMapError, match="key=value"):
        read_skymap_config(path, ["patch_border"])
    path.write_text("name: [unclosed")
    with pytest.raises(SkyMapError, match="not valid YAML"):
        read_skymap_config(path)


def test_yaml_round_trip_rebuilds_identical_skymap():
    skymap = SkyMap.from_config(COARSE_RINGS)
    again = SkyMap.from_yaml_bytes(skymap.to_yaml_bytes())
    assert again == skymap and again.hash == skymap.hash
    assert again[7].bbox == skymap[7].bbox


def test_shipped_configs_cover_their_fields():
    stripe = SkyMap.from_yaml(TEMPLATES / "stripe82_demo.yaml")
    assert stripe.config.pixel_scale == 0.396
    for ra, dec in [(351.56, -0.009), (351.73, -0.009), (351.73, 0.217), (351.56, 0.217)]:
        assert stripe.find_tract(ra, dec).id == 0
    simcam = SkyMap.from_yaml(TEMPLATES / "simcam.yaml")
    tract = simcam[0]
    assert tract.patch_inner_dimensions == (2000, 2000)
    # The 3 x 3 mosaic (0.176 deg across) dithered by 0.05 deg in any direction stays inside the tract.
    edge = SkyCoord(150.0, 2.0, unit="deg").directional_offset_by(np.arange(0, 360, 15) * u.deg, (0.125 + 0.05) * u.deg)
    assert np.all(tract.contains(edge.ra.deg, edge.dec.deg))


# Registration --------------------------------------------------------------------------------------------


def test_register_writes_records_with_regions_and_dataset(repo: Butler):
    skymap = SkyMap.from_config(SMALL)
    result = skymap.register(repo)
    assert result.inserted and result.num_tracts == 2
    assert result.num_patches == sum(len(t) for t in skymap)
    record = repo.registry.get_dimension_record("skymap", {"skymap": "small"})
    assert record.hash == skymap.hash
    assert (record.tract_max, record.patch_nx_max, record.patch_ny_max) == (2, 7, 7)
    patches = repo.query_dimension_records("patch", where="skymap = 'small' AND tract = 1")
    assert len(patches) == len(skymap[1])
    for rec in patches:
        patch = skymap[1].patch_info(rec.id)
        assert (rec.cell_x, rec.cell_y) == patch.index
        assert rec.region == patch.region
    assert repo.get("skyMap", skymap="small", collections="skymaps") == skymap


def test_register_is_idempotent(repo: Butler):
    skymap = SkyMap.from_config(SMALL)
    skymap.register(repo)
    before = table_counts(repo)
    again = SkyMap.from_config(json.loads(json.dumps(SMALL))).register(repo)
    assert not again.inserted
    assert again.num_patches == sum(len(t) for t in skymap)
    assert table_counts(repo) == before


def test_register_conflicting_configuration_names_the_hashes(repo: Butler):
    first = SkyMap.from_config(SMALL)
    first.register(repo)
    before = table_counts(repo)
    changed = SkyMap.from_config({**SMALL, "patch_border": 20})
    with pytest.raises(SkyMapError, match="already registered.*different") as info:
        changed.register(repo)
    assert first.hash in str(info.value) and changed.hash in str(info.value)
    assert table_counts(repo) == before


def _convex_overlap_2d(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test of two convex polygons (n, 2) in a plane; touching counts as overlap."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        for ex, ey in edges:
            normal = np.array([-ey, ex])
            pa, pb = a @ normal, b @ normal
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


def _toy_visits(butler: Butler, rng: np.random.Generator) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Insert 8 visits of a rotated 2 x 2 camera of 0.06 deg detectors near the small skymap; return
    the sky corners of each (visit, detector)."""
    reg = butler.registry
    reg.insert_dimension_data("instrument", {"name": "Toy", "visit_max": 100, "detector_max": 4})
    reg.insert_dimension_data("band", {"name": "r"})
    reg.insert_dimension_data("physical_filter", {"instrument": "Toy", "name": "r1", "band": "r"})
    reg.insert_dimension_data("day_obs", {"instrument": "Toy", "id": 20240101})
    reg.insert_dimension_data("detector", *[{"instrument": "Toy", "id": d, "full_name": f"D{d}"} for d in range(4)])
    corners: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    visits, regions = [], []
    for v in range(8):
        ra0, dec0 = 20.0 + rng.uniform(-0.35, 0.75), 10.0 + rng.uniform(-0.3, 0.35)
        if v == 7:  # far from both tracts
            ra0, dec0 = 21.6, 10.0
        theta = np.radians(rng.uniform(0, 90))
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [ra0, dec0]
        wcs.wcs.crpix = [1.0, 1.0]
        s = 0.001
        wcs.wcs.cd = [[-s * np.cos(theta), s * np.sin(theta)], [s * np.sin(theta), s * np.cos(theta)]]
        all_ra, all_dec = [], []
        for d in range(4):
            x0, y0 = (d % 2) * 62 - 62, (d // 2) * 62 - 62  # 60 px detectors, 2 px gaps
            box = np.array([[x0, y0], [x0 + 60, y0], [x0 + 60, y0 + 60], [x0, y0 + 60]], dtype=float)
            ra, dec = wcs.wcs_pix2world(box[:, 0], box[:, 1], 0)
            corners[v, d] = (ra, dec)
            regions.append({"instrument": "Toy", "visit": v, "detector": d, "region": polygon_from_radec(ra, dec)})
            all_ra += list(ra)
            all_dec += list(dec)
        visits.append(
            {
                "instrument": "Toy",
                "id": v,
                "physical_filter": "r1",
                "day_obs": 20240101,
                "region": polygon_from_radec(all_ra, all_dec),
            }
        )
    reg.insert_dimension_data("visit", *visits)
    reg.insert_dimension_data("visit_detector_region", *regions)
    return corners


def test_query_visit_detector_tract_patch_returns_exactly_the_overlaps(repo: Butler):
    corners = _toy_visits(repo, np.random.default_rng(7))
    skymap = SkyMap.from_config(SMALL)
    skymap.register(repo)
    rows = repo.query_data_ids(["visit", "detector", "tract", "patch"])
    got = sorted((r["visit"], r["detector"], r["tract"], r["patch"]) for r in rows)
    # Reference: with the TAN projection great circles are straight lines in tract pixels, so a
    # detector's polygon overlaps a patch iff its projected quadrilateral meets the patch's outer box.
    expected = []
    for (v, d), (ra, dec) in corners.items():
        for tract in skymap:
            x, y = tract.wcs.wcs_world2pix(ra, dec, 0)
            quad = np.column_stack([x, y])
            for patch in tract:
                if _convex_overlap_2d(quad, patch.outer_bbox.corners()):
                    expected.append((v, d, tract.id, patch.sequential_index))
    assert got == sorted(expected)
    # The geometry exercises the join: detectors in both tracts, in up to 4 patches, and outside both.
    assert {t for _, _, t, _ in got} == {0, 1}
    per_detector: dict[tuple[int, int, int], int] = {}
    for v, d, t, _ in got:
        per_detector[v, d, t] = per_detector.get((v, d, t), 0) + 1
    assert {1, 2, 4} <= set(per_detector.values())
    assert 7 not in {v for v, _, _, _ in got}


def test_query_patches_of_a_detector_agrees_with_find_tract_patch_list(repo: Butler):
    corners = _toy_visits(repo, np.random.default_rng(3))
    skymap = SkyMap.from_config(SMALL)
    skymap.register(repo)
    checked = 0
    for (v, d), (ra, dec) in list(corners.items())[::3]:
        rows = repo.query_data_ids(
            ["tract", "patch"],
            where="skymap = 'small' AND visit = v AND detector = d",
            bind={"v": v, "d": d},
            instrument="Toy",
            explain=False,
        )
        got = sorted((r["tract"], r["patch"]) for r in rows)
        expected = sorted((t.id, p.sequential_index) for t, ps in skymap.find_tract_patch_list(ra, dec) for p in ps)
        assert got == expected
        checked += bool(expected)
    assert checked >= 5


# Command line -------------------------------------------------------------------------------------------------


def test_cli_register_skymap(repo: Butler, tmp_path: Path):
    root = str(repo.config.root)
    runner = CliRunner()
    result = runner.invoke(
        cli, ["register-skymap", root, "-C", str(TEMPLATES / "simcam.yaml"), "-c", "name=simcam_cli"]
    )
    assert result.exit_code == 0, result.output
    assert "Registered skymap 'simcam_cli'" in result.output
    assert "1 tract(s), 16 patch(es)" in result.output
    assert len(repo.query_dimension_records("patch", where="skymap = 'simcam_cli'")) == 16
    again = runner.invoke(cli, ["register-skymap", root, "-C", str(TEMPLATES / "simcam.yaml"), "-c", "name=simcam_cli"])
    assert again.exit_code == 0 and "already registered" in again.output
    conflict = runner.invoke(
        cli,
        [
            "register-skymap",
            root,
            "-C",
            str(TEMPLATES / "simcam.yaml"),
            "-c",
            "name=simcam_cli",
            "-c",
            "patch_border=50",
        ],
    )
    assert conflict.exit_code == 1
    assert "Error: skymap 'simcam_cli' is already registered" in conflict.output
    assert "Traceback" not in conflict.output


def test_cli_invalid_config_names_the_field(repo: Butler, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SMALL, "pixel_scale": "big"}))
    result = CliRunner().invoke(cli, ["register-skymap", str(repo.config.root), "-C", str(bad)])
    assert result.exit_code == 1
    assert "Error: invalid skymap configuration in" in result.output
    assert "pixel_scale: Input should be a valid number" in result.output
    missing = CliRunner().invoke(cli, ["register-skymap", str(repo.config.root)])
    assert missing.exit_code == 1 and "-C FILE" in missing.output


def test_box2i_corners_are_pixel_edges_used_for_regions():
    # The regions are built from Box2I.corners(): pixel edges half a pixel outside the pixel centres.
    assert Box2I(0, 0, 2, 3).corners().tolist() == [[-0.5, -0.5], [1.5, -0.5], [1.5, 2.5], [-0.5, 2.5]]
