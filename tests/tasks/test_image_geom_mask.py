"""Tests of tasks/image/geom.py, mask.py and masked_image.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.errors import ImageError, MaskPlaneError
from tasks.image import Box2I, Mask, MaskedImage


def test_box_properties_use_exclusive_ends_and_yx_shape():
    box = Box2I(3, 4, 10, 5)
    assert (box.x1, box.y1) == (13, 9)
    assert box.shape == (5, 10)
    assert box.xy0 == (3, 4)
    assert box.area == 50
    assert box.center == (7.5, 6.0)
    assert not box.is_empty and Box2I(0, 0, 0, 5).is_empty


def test_box_from_corners_is_inclusive_and_from_shape_takes_xy0():
    assert Box2I.from_corners(2, 3, 5, 9) == Box2I(2, 3, 4, 7)
    assert Box2I.from_shape((7, 4), xy0=(2, 3)) == Box2I(2, 3, 4, 7)
    assert Box2I.from_corners(5, 5, 4, 9).is_empty


def test_box_set_operations():
    a = Box2I(0, 0, 10, 10)
    b = Box2I(5, 7, 10, 10)
    assert a.intersection(b) == Box2I(5, 7, 5, 3)
    assert a.intersection(Box2I(20, 20, 3, 3)).is_empty
    assert a.union(b) == Box2I(0, 0, 15, 17)
    assert a.contains(Box2I(2, 2, 8, 8)) and not a.contains(b)
    assert a.dilated(2) == Box2I(-2, -2, 14, 14)
    assert a.shifted(3, -1) == Box2I(3, -1, 10, 10)


def test_box_contains_point_uses_pixel_edges_and_accepts_arrays():
    box = Box2I(0, 0, 4, 3)
    inside = box.contains_point(np.array([-0.5, -0.51, 3.49, 3.5]), np.array([0.0, 0.0, 2.49, 0.0]))
    assert inside.tolist() == [True, False, True, False]
    assert box.contains_point(1.0, 1.0) is True


def test_box_slices_select_child_from_parent_array_and_reject_outside():
    parent = Box2I(10, 20, 8, 6)
    array = np.arange(48).reshape(6, 8)
    child = Box2I(12, 21, 3, 2)
    sy, sx = child.slices(parent)
    assert array[sy, sx].tolist() == [[10, 11, 12], [18, 19, 20]]
    with pytest.raises(ValueError, match="not contained"):
        Box2I(0, 0, 3, 3).slices(parent)


def test_box_corners_are_pixel_edges_in_ccw_order():
    corners = Box2I(1, 2, 3, 4).corners()
    assert corners.shape == (4, 2)
    assert corners.tolist() == [[0.5, 1.5], [3.5, 1.5], [3.5, 5.5], [0.5, 5.5]]


def test_box_dict_round_trip_is_json_safe():
    box = Box2I(-3, 7, 11, 2)
    assert Box2I.from_dict(json.loads(json.dumps(box.to_dict()))) == box


def test_box_rejects_negative_size():
    with pytest.raises(ValueError, match="width and height"):
        Box2I(0, 0, -1, 3)


def test_mask_default_planes_have_lsst_bits():
    mask = Mask((3, 4))
    assert mask.array.dtype == np.int32
    assert mask.planes == {name: i for i, name in enumerate(Mask.DEFAULT_PLANES)}
    assert mask.get_plane_bitmask(["BAD", "CR", "NO_DATA"]) == 1 | 8 | 256


def test_mask_add_plane_is_idempotent_and_uses_next_free_bit():
    mask = Mask((2, 2))
    assert mask.add_plane("STREAK") == 9
    assert mask.add_plane("STREAK") == 9
    assert mask.get_plane_bitmask("STREAK") == 512


def test_mask_refuses_a_32nd_plane():
    mask = Mask((2, 2))
    for i in range(31 - len(Mask.DEFAULT_PLANES)):
        mask.add_plane(f"P{i}")
    with pytest.raises(MaskPlaneError, match="all 31 bits"):
        mask.add_plane("ONE_TOO_MANY")


def test_unknown_mask_plane_error_lists_known_planes():
    with pytest.raises(MaskPlaneError) as info:
        Mask((2, 2)).get_plane_bitmask(["BAD", "CRR"])
    message = str(info.value)
    assert "'CRR'" in message and "DETECTED_NEGATIVE" in message and "add_plane" in message
    assert isinstance(info.value, KeyError)


def test_mask_set_get_clear_plane_arithmetic():
    mask = Mask((3, 3))
    where = np.zeros((3, 3), bool)
    where[1, 2] = True
    mask.set_plane("SAT", where)
    mask.set_plane("CR", Box2I(0, 0, 2, 1))
    assert mask.array[1, 2] == 2 and mask.array[0, 0] == 8 and mask.array[0, 1] == 8
    assert mask.get_plane(["SAT", "CR"]).sum() == 3
    assert mask.interpret(mask.array[1, 2] | 8) == ["SAT", "CR"]
    mask.clear_plane("CR")
    assert mask.array.sum() == 2


def test_masked_image_sub_image_is_a_view_with_parent_coordinates():
    image = np.arange(50, dtype=np.float32).reshape(5, 10)
    mi = MaskedImage(image, xy0=(100, 200))
    box = Box2I(103, 201, 4, 2)
    sub = mi[box]
    assert sub.xy0 == (103, 201) and sub.bbox == box and sub.mask.bbox == box
    assert sub.image[0, 0] == image[1, 3]
    sub.image[0, 0] = -1.0
    sub.variance[:] = 7.0
    sub.mask.set_plane("EDGE")
    assert image[1, 3] == -1.0  # float32 input is not copied, so the view writes through
    assert mi.variance.sum() == 7.0 * 8
    assert mi.mask.get_plane("EDGE").sum() == 8
    assert sub[Box2I(104, 202, 1, 1)].image[0, 0] == image[2, 4]


def test_masked_image_copy_is_deep():
    mi = MaskedImage(np.ones((2, 2)), xy0=(1, 1))
    other = mi.copy()
    other.image[:] = 5
    other.mask.add_plane("NEW")
    assert mi.image.sum() == 4 and "NEW" not in mi.mask.planes and other.xy0 == (1, 1)


def test_masked_image_converts_to_float32_and_checks_shapes():
    mi = MaskedImage(np.ones((2, 3), dtype=np.int64))
    assert mi.image.dtype == np.float32 and mi.variance.dtype == np.float32 and mi.shape == (2, 3)
    with pytest.raises(ImageError, match="variance shape"):
        MaskedImage(np.ones((2, 3)), variance=np.ones((3, 2)))
    with pytest.raises(ImageError, match="mask shape"):
        MaskedImage(np.ones((2, 3)), Mask((2, 2)))


def test_sub_image_outside_parent_is_an_error():
    with pytest.raises(ValueError, match="not contained"):
        MaskedImage(np.ones((4, 4)))[Box2I(2, 2, 4, 4)]


def test_missing_ok_ignores_planes_the_mask_lacks():
    mask = Mask((2, 3))
    mask.set_plane("CR", np.array([[True, False, False], [False, False, True]]))
    bad = ["CR", "STREAK", "NOT_A_PLANE"]
    assert mask.get_plane_bitmask(bad, missing_ok=True) == 1 << mask.planes["CR"]
    assert mask.get_plane_bitmask(["STREAK"], missing_ok=True) == 0
    assert mask.get_plane(bad, missing_ok=True).tolist() == [[True, False, False], [False, False, True]]
    assert not mask.get_plane(["STREAK"], missing_ok=True).any()
    with pytest.raises(MaskPlaneError):
        mask.get_plane(bad)
