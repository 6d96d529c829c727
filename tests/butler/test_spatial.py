"""Spatial joins: visit/detector regions against tract/patch regions return exactly the overlaps."""

from __future__ import annotations

import numpy as np
import pytest

from butler import Butler
from butler.regions import SkyPixIndex, polygon_from_radec, regions_overlap
from conftest import N_DETECTORS, N_VISITS, detector_corners, patch_corners


def _boxes_overlap(a, b) -> bool:
    """Independent reference for small, axis-aligned boxes near the equator (planar test)."""
    (ra_a, dec_a), (ra_b, dec_b) = a, b
    return min(ra_a) < max(ra_b) and min(ra_b) < max(ra_a) and min(dec_a) < max(dec_b) and min(dec_b) < max(dec_a)


def test_visit_detector_patch_join_is_exact(populated: Butler):
    rows = populated.query_data_ids(["visit", "detector", "tract", "patch"])
    got = sorted((d["visit"], d["detector"], d["patch"]) for d in rows)
    expected = sorted(
        (v, det, p)
        for v in range(N_VISITS)
        for det in range(N_DETECTORS)
        for p in range(10)
        if _boxes_overlap(detector_corners(v, det), patch_corners(p))
    )
    assert got == expected
    # Some detectors straddle a patch edge and get two patches.
    assert len(got) > N_VISITS * N_DETECTORS


def test_pixel_index_candidates_are_refined(populated: Butler):
    # Detector 3 of visit 0 (RA 10.15-10.20) lies inside patch 3 (RA 9.91-10.21); the HTM trixels that
    # cover it also cover parts of patches 2, 4 and 5 at level 8 (trixels ~0.3 deg), so the index alone
    # would return those too: the exact test must remove them.
    skypix = populated.dimensions.skypix
    det = polygon_from_radec(*detector_corners(0, 3))
    for p in (2, 4, 5):
        patch = polygon_from_radec(*patch_corners(p))
        assert set(skypix.pixels(det)) & set(skypix.pixels(patch)), "test geometry no longer exercises refinement"
        assert not regions_overlap(det, patch)
    rows = populated.query_data_ids(["visit", "detector", "patch"], where="visit = 0 AND detector = 3")
    assert [d["patch"] for d in rows] == [3]


def test_patch_records_overlapping_a_visit(populated: Butler):
    records = populated.query_dimension_records("patch", where="visit = 5", order_by="patch")
    # visit 5 spans RA 10.5-10.7: patch 4 (10.21-10.51) and patch 5 (10.51-10.81).
    assert [r.id for r in records] == [4, 5]
    for r in records:
        assert regions_overlap(r.region, polygon_from_radec([10.5, 10.7, 10.7, 10.5], [0, 0, 0.05, 0.05]))


def test_skypix_envelope_covers_region():
    skypix = SkyPixIndex("htm", 8)
    rng = np.random.default_rng(3)
    for _ in range(20):
        ra, dec = rng.uniform(0, 360), rng.uniform(-80, 80)
        size = rng.uniform(0.01, 1.0)
        region = polygon_from_radec([ra, ra + size, ra + size, ra], [dec, dec, dec + size, dec + size])
        pixels = set(skypix.pixels(region))
        # Every vertex and the centroid lie in one of the pixels of the envelope.
        from lsst.sphgeom import UnitVector3d

        points = list(region.getVertices()) + [UnitVector3d(region.getCentroid())]
        for p in points:
            assert skypix._pixelization.index(p) in pixels


def test_bad_polygon_is_a_value_error():
    with pytest.raises(ValueError, match="3"):
        polygon_from_radec([1, 2], [1, 2])


def test_tract_band_query_constrained_by_visits(populated: Butler):
    """A (skymap, tract, band) query with a where-expression on visits: the band comes from the visits (through
    their physical filter), the tract from the spatial join with them -- the quanta of a coadd task when a
    pipeline is run on chosen visits."""
    rows = populated.query_data_ids(["skymap", "tract", "band"], where="visit IN (1, 3)")
    assert sorted((d["skymap"], d["tract"], d["band"]) for d in rows) == [("sm", 0, "r")]
    rows = populated.query_data_ids(["skymap", "tract", "band"], where="visit IN (0, 1)")
    assert sorted(d["band"] for d in rows) == ["g", "r"]
