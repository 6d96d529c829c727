"""Sky maps: the sky divided into tracts (one WCS each) and tracts into patches (the unit of coaddition).

A `SkyMap` is built deterministically from a small configuration (`DiscreteSkyMapConfig` or
`RingsSkyMapConfig`, pydantic models usually read from YAML)::

    name: simcam
    type: discrete
    pixel_scale: 0.2                 # arcsec / pixel
    projection: TAN
    patch_inner_dimensions: [2000, 2000]
    patch_border: 100                # pixels
    tract_overlap: 0.0               # deg
    tracts:
      - {ra: 150.0, dec: 2.0, radius: 0.2}   # deg

Geometry follows the LSST ``skymap`` package (legacy patch builder):

- A tract has a zenithal WCS (``projection``) centred on its centre, north up and east left, and a pixel
  box ``bbox`` starting at (0, 0) whose size is a whole number of patches.  The box covers the area the
  tract owns (a circle of ``radius`` for a discrete tract, a ring cell for a rings tract) grown outward by
  ``tract_overlap`` on the sky and by ``patch_border`` pixels; its centre pixel maps to the tract centre.
- Patch ``(x, y)`` has the inner box ``Box2I(x * nx_inner, y * ny_inner, nx_inner, ny_inner)``; inner
  boxes tile the tract.  Its outer box is the inner box grown by ``patch_border`` pixels and clipped to
  the tract.  Its sequential index is ``y * nx + x`` (the ``patch`` dimension value).
- Regions are `lsst.sphgeom.ConvexPolygon` objects through the pixel-edge corners of a box.  With the
  TAN projection great circles are straight lines in pixel space, so these polygons are exact.

Pixel coordinates are 0-based parent coordinates with pixel centres at integers (``wcs.pixel_to_world(x,
y)``), as everywhere in `tasks.image`.  Angles are in degrees unless a name says otherwise.

`SkyMap.register` writes the ``skymap``, ``tract`` and ``patch`` dimension records (with regions, so the
registry's spatial joins find the patches overlapping each visit and detector) and a ``skyMap`` dataset
whose file is the configuration (`SkyMapFormatter`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import astropy.units as u
import numpy as np
import yaml
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from lsst.sphgeom import Angle, Box, Circle, ConvexPolygon, LonLat, Region, UnitVector3d
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from butler.formatters import BytesFormatter
from butler.regions import polygon_from_radec, regions_overlap

from ..errors import SkyMapError
from .geom import Box2I

if TYPE_CHECKING:
    from butler import Butler

__all__ = [
    "DiscreteSkyMap",
    "DiscreteSkyMapConfig",
    "DiscreteTractConfig",
    "PatchInfo",
    "RingsSkyMap",
    "RingsSkyMapConfig",
    "SkyMap",
    "SkyMapConfig",
    "SkyMapFormatter",
    "SkyMapRegistration",
    "TractInfo",
    "read_skymap_config",
    "validate_skymap_config",
]

#: Name of the dataset type that holds a registered skymap (as in the LSST stack).
SKYMAP_DATASET_TYPE = "skyMap"
#: Its storage class (``storage_classes.yaml``).
SKYMAP_STORAGE_CLASS = "SkyMap"

# The largest angle from a tract centre the zenithal projections are used out to [deg].
_MAX_TRACT_EXTENT = 80.0


# Configuration --------------------------------------------------------------------------------------------


class _SkyMapConfigBase(BaseModel):
    """Fields common to every kind of skymap."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="a string of letters, digits, '_', '-' or '.' (1-64 characters), e.g. 'simcam'",
    )
    pixel_scale: float = Field(
        gt=0, allow_inf_nan=False, description="a number > 0: the pixel size at the tract centre [arcsec/pixel]"
    )
    projection: Literal["TAN", "STG", "SIN", "ARC", "ZEA"] = Field(
        "TAN", description="one of 'TAN', 'STG', 'SIN', 'ARC', 'ZEA' (FITS zenithal projection code)"
    )
    patch_inner_dimensions: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] = Field(
        (4000, 4000), description="a list of two integers > 0: [nx, ny] of a patch's inner box [pixels]"
    )
    patch_border: int = Field(100, ge=0, description="an integer >= 0: the overlap of adjacent patches [pixels]")
    tract_overlap: float = Field(
        0.0, ge=0, lt=30, allow_inf_nan=False, description="a number in [0, 30): extra margin around each tract [deg]"
    )


class DiscreteTractConfig(BaseModel):
    """One tract of a discrete skymap: a circle on the sky."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ra: float = Field(allow_inf_nan=False, description="a number: right ascension of the tract centre [deg]")
    dec: float = Field(ge=-90, le=90, description="a number in [-90, 90]: declination of the tract centre [deg]")
    radius: float = Field(
        gt=0,
        lt=_MAX_TRACT_EXTENT,
        description=f"a number in (0, {_MAX_TRACT_EXTENT:g}): radius the tract must cover [deg]",
    )


class DiscreteSkyMapConfig(_SkyMapConfigBase):
    """A skymap of tracts at listed centres (LSST's ``DiscreteSkyMap``), numbered in list order."""

    type: Literal["discrete"] = Field(description="'discrete' or 'rings'")
    tracts: list[DiscreteTractConfig] = Field(
        min_length=1, description="a non-empty list of {ra, dec, radius} mappings [deg]"
    )


class RingsSkyMapConfig(_SkyMapConfigBase):
    """A whole-sky map of declination rings (LSST's ``RingsSkyMap``).

    Tract 0 is the south polar cap, then come ``num_rings`` rings from south to north, each divided into
    tracts in right ascension starting at ``ra_start``, and last the north polar cap.
    """

    type: Literal["rings"] = Field(description="'discrete' or 'rings'")
    num_rings: int = Field(
        120, ge=3, le=10000, description="an integer in [3, 10000]: number of rings between the polar caps"
    )
    ra_start: float = Field(
        0.0, allow_inf_nan=False, description="a number: right ascension of the first tract of every ring [deg]"
    )


#: A skymap configuration of either kind, told apart by its ``type`` field.
SkyMapConfig = Annotated[DiscreteSkyMapConfig | RingsSkyMapConfig, Field(discriminator="type")]
_CONFIG_ADAPTER: TypeAdapter[DiscreteSkyMapConfig | RingsSkyMapConfig] = TypeAdapter(SkyMapConfig)
_CONFIG_TYPES: dict[str, type[_SkyMapConfigBase]] = {"discrete": DiscreteSkyMapConfig, "rings": RingsSkyMapConfig}


def _field_descriptions() -> dict[str, str]:
    out: dict[str, str] = {}
    for model in (DiscreteSkyMapConfig, RingsSkyMapConfig, DiscreteTractConfig):
        for name, info in model.model_fields.items():
            if info.description:
                out.setdefault(name, info.description)
    return out


_EXPECTED = _field_descriptions()


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        loc = [str(p) for p in item["loc"]]
        if loc and loc[0] in _CONFIG_TYPES:  # the tag of the discriminated union
            loc = loc[1:]
        kind = item["type"]
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            got = item.get("input", {}).get("type") if isinstance(item.get("input"), dict) else None
            what = "is missing" if kind == "union_tag_not_found" else f"is {got!r}"
            lines.append(f"  - type: {what}; expected one of {', '.join(map(repr, _CONFIG_TYPES))}")
            continue
        where = ".".join(loc) or "(the whole configuration)"
        leaf = next((p for p in reversed(loc) if not p.isdigit()), "")
        text = f"  - {where}: {item['msg']}"
        if kind not in ("missing", "extra_forbidden"):
            text += f" (got {item.get('input')!r})"
        if kind == "extra_forbidden":
            parent_type = _config_type_of(item)
            if parent_type is not None:
                text += f"; valid fields: {', '.join(parent_type.model_fields)}"
        elif leaf in _EXPECTED:
            text += f"; expected {_EXPECTED[leaf]}"
        lines.append(text)
    return f"invalid skymap configuration{source}:\n" + "\n".join(lines)


def _config_type_of(item: Mapping[str, Any]) -> type[BaseModel] | None:
    loc = [str(p) for p in item["loc"]]
    if len(loc) >= 2 and loc[0] in _CONFIG_TYPES:
        return DiscreteTractConfig if "tracts" in loc[1:-1] else _CONFIG_TYPES[loc[0]]
    return None


def validate_skymap_config(
    data: Mapping[str, Any] | DiscreteSkyMapConfig | RingsSkyMapConfig, *, source: str = ""
) -> DiscreteSkyMapConfig | RingsSkyMapConfig:
    """Check a skymap configuration and return it as a (frozen) pydantic model.

    Parameters
    ----------
    data : mapping or config model
        The configuration, e.g. from ``yaml.safe_load``.
    source : `str`, optional
        Where it came from, for error messages (a file name).

    Returns
    -------
    config : `DiscreteSkyMapConfig` or `RingsSkyMapConfig`

    Raises
    ------
    SkyMapError
        Listing every invalid field with what was given and what is expected.
    """
    if isinstance(data, DiscreteSkyMapConfig | RingsSkyMapConfig):
        return data
    where = f" in {source}" if source else ""
    if not isinstance(data, Mapping):
        raise SkyMapError(
            f"a skymap configuration{where} must be a mapping of fields (name, type, pixel_scale, ...); "
            f"got a {type(data).__name__}."
        )
    try:
        return _CONFIG_ADAPTER.validate_python(dict(data))
    except ValidationError as err:
        raise SkyMapError(_format_validation_error(err, where)) from None


def _apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise SkyMapError(
                    f"config override {key!r}: {'.'.join(parts[:i]) or 'the list'} has {len(node)} items; "
                    f"{part!r} is not a valid index (use 0..{len(node) - 1})."
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if part not in node:
                    node[part] = {}
                node = node[part]
        else:
            raise SkyMapError(
                f"config override {key!r}: {'.'.join(parts[:i])!r} is a {type(node).__name__}, not a mapping "
                f"or list, so it has no field {part!r}."
            )


def read_skymap_config(
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
) -> DiscreteSkyMapConfig | RingsSkyMapConfig:
    """Read a skymap configuration from a YAML file (or a mapping), apply overrides and validate it.

    Parameters
    ----------
    source : `str`, `pathlib.Path` or mapping, optional
        A YAML file, or the configuration itself; `None` starts from an empty mapping (everything then
        comes from ``overrides``).
    overrides : mapping or sequence of ``"key=value"`` strings, optional
        Field values replacing those of ``source``.  Keys may be dotted paths into lists and mappings
        (``tracts.0.radius``).  String values are parsed as YAML, so ``"[2000, 2000]"`` is a list and
        ``"0.5"`` a number.

    Returns
    -------
    config : `DiscreteSkyMapConfig` or `RingsSkyMapConfig`

    Raises
    ------
    SkyMapError
        If the file cannot be read or parsed, an override is malformed, or the result is invalid.
    """
    label = ""
    if source is None:
        data: Any = {}
    elif isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    else:
        path = Path(source)
        label = str(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise SkyMapError(f"cannot read skymap configuration {path}: {err.strerror or err}.") from None
        except yaml.YAMLError as err:
            raise SkyMapError(f"skymap configuration {path} is not valid YAML: {err}") from None
        if data is None:
            data = {}
    if not isinstance(data, dict):
        raise SkyMapError(
            f"skymap configuration {label or ''} must be a YAML mapping of fields (name, type, pixel_scale, "
            f"...); got a {type(data).__name__}."
        )
    items: list[tuple[str, Any]]
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for text in overrides:
            key, sep, value = str(text).partition("=")
            if not sep or not key.strip():
                raise SkyMapError(f"config override {text!r} is not of the form key=value (e.g. patch_border=50).")
            try:
                parsed = yaml.safe_load(value.strip()) if value.strip() else ""
            except yaml.YAMLError:
                parsed = value.strip()
            items.append((key.strip(), parsed))
    for key, value in items:
        _apply_override(data, key, value)
    return validate_skymap_config(data, source=label)


# Spherical helpers ------------------------------------------------------------------------------------------


def _unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra_r, dec_r = np.radians(ra), np.radians(dec)
    cos_dec = np.cos(dec_r)
    return np.stack([cos_dec * np.cos(ra_r), cos_dec * np.sin(ra_r), np.sin(dec_r)], axis=-1)


def _separation(ra1: Any, dec1: Any, ra2: Any, dec2: Any) -> np.ndarray:
    """Angular distance [deg] between positions [deg] (arrays broadcast), accurate at all separations."""
    a = _unit_vectors(np.asarray(ra1, float), np.asarray(dec1, float))
    b = _unit_vectors(np.asarray(ra2, float), np.asarray(dec2, float))
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1)))


def _make_wcs(ra: float, dec: float, crpix: tuple[float, float], pixel_scale: float, projection: str) -> WCS:
    """A zenithal WCS, north up and east left, with 0-based pixel ``crpix`` at (ra, dec) [deg]."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = [f"RA---{projection}", f"DEC--{projection}"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]  # FITS CRPIX is 1-based
    scale = pixel_scale / 3600.0
    wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    wcs.wcs.set()
    return wcs


def _box_polygon(wcs: WCS, box: Box2I) -> ConvexPolygon:
    corners = box.corners()
    ra, dec = wcs.wcs_pix2world(corners[:, 0], corners[:, 1], 0)
    return polygon_from_radec(ra, dec)


def _as_region(ra_or_region: Any, dec: Any) -> tuple[Region | None, np.ndarray, np.ndarray]:
    """A region, or (for < 3 positions) None and the positions themselves."""
    if isinstance(ra_or_region, Region):
        if dec is not None:
            raise TypeError("pass either a region or ra and dec arrays, not both")
        return ra_or_region, np.empty(0), np.empty(0)
    if dec is None:
        raise TypeError("pass a lsst.sphgeom region, or ra and dec arrays [deg]")
    ra = np.atleast_1d(np.asarray(ra_or_region, dtype=float))
    dec_a = np.atleast_1d(np.asarray(dec, dtype=float))
    if ra.shape != dec_a.shape or ra.ndim != 1 or ra.size == 0:
        raise SkyMapError(
            f"ra and dec must be 1-D arrays of the same, non-zero length; got {ra.shape} and {dec_a.shape}."
        )
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec_a)) and np.all(np.abs(dec_a) <= 90)):
        raise SkyMapError("ra and dec must be finite, with |dec| <= 90 deg.")
    if ra.size >= 3:
        try:
            return polygon_from_radec(ra, dec_a), ra, dec_a
        except ValueError:
            pass  # collinear or repeated positions: test them one by one
    return None, ra, dec_a


def _region_overlaps_points(region: Region | None, ra: np.ndarray, dec: np.ndarray, other: Region) -> bool:
    if region is not None:
        return regions_overlap(region, other)
    return any(other.contains(UnitVector3d(LonLat.fromDegrees(float(a), float(d)))) for a, d in zip(ra, dec))


# Tracts and patches -------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=True)
class PatchInfo:
    """One patch of a tract.

    Attributes
    ----------
    index : `tuple` [`int`, `int`]
        Column and row ``(x, y)`` of the patch in its tract (the ``cell_x``, ``cell_y`` of its record).
    sequential_index : `int`
        ``y * nx + x``: the ``patch`` dimension value.
    inner_bbox : `Box2I`
        The pixels this patch owns, in tract pixel coordinates; inner boxes tile the tract.
    outer_bbox : `Box2I`
        The inner box grown by the patch border and clipped to the tract: the pixels a coadd of this
        patch covers.
    tract_id : `int`
        The tract of the patch.
    """

    index: tuple[int, int]
    sequential_index: int
    inner_bbox: Box2I
    outer_bbox: Box2I
    tract_id: int
    _tract: TractInfo = field(repr=False, compare=False, hash=False)

    @property
    def id(self) -> int:
        """The sequential index (the ``patch`` dimension value)."""
        return self.sequential_index

    @property
    def wcs(self) -> WCS:
        """The tract's WCS (patches share their tract's pixel grid)."""
        return self._tract.wcs

    @property
    def region(self) -> ConvexPolygon:
        """Sky polygon of the outer box (its pixel-edge corners); the region registered for the patch."""
        return self._tract._patch_region(self.index, outer=True)

    @property
    def inner_region(self) -> ConvexPolygon:
        """Sky polygon of the inner box."""
        return self._tract._patch_region(self.index, outer=False)


class TractInfo:
    """One tract: a pixel grid with its own WCS, divided into patches.

    Built by a `SkyMap`; not constructed directly.

    Attributes
    ----------
    id : `int`
        The tract number (the ``tract`` dimension value).
    wcs : `astropy.wcs.WCS`
        Maps 0-based tract pixel coordinates (pixel centres at integers) to ICRS [deg].
    bbox : `Box2I`
        The tract's pixels, starting at (0, 0); ``num_patches`` inner patch boxes exactly.
    num_patches : `tuple` [`int`, `int`]
        Number of patches ``(nx, ny)``.
    patch_inner_dimensions : `tuple` [`int`, `int`]
        Size ``(nx, ny)`` of a patch's inner box [pixels].
    patch_border : `int`
        Pixels by which an outer patch box extends its inner box.
    inner_region : `lsst.sphgeom.Region`
        The sky area the tract owns (before overlap and rounding to whole patches).
    """

    def __init__(
        self,
        id: int,
        center: tuple[float, float],
        wcs: WCS,
        bbox: Box2I,
        patch_inner_dimensions: tuple[int, int],
        patch_border: int,
        inner_region: Region,
    ):
        self.id = int(id)
        self._center = (float(center[0]), float(center[1]))
        self.wcs = wcs
        self.bbox = bbox
        self.patch_inner_dimensions = (int(patch_inner_dimensions[0]), int(patch_inner_dimensions[1]))
        self.patch_border = int(patch_border)
        self.num_patches = (bbox.width // self.patch_inner_dimensions[0], bbox.height // self.patch_inner_dimensions[1])
        self.inner_region = inner_region
        self._region: ConvexPolygon | None = None
        self._patches: dict[tuple[int, int], PatchInfo] = {}
        self._patch_regions: dict[tuple[tuple[int, int], bool], ConvexPolygon] = {}

    def __repr__(self) -> str:
        ra, dec = self._center
        return (
            f"TractInfo(id={self.id}, center=({ra:.6f}, {dec:.6f}) deg, bbox={self.bbox}, "
            f"num_patches={self.num_patches})"
        )

    @property
    def center(self) -> SkyCoord:
        """The tract centre (ICRS); the WCS maps ``bbox.center`` to it."""
        return SkyCoord(self._center[0], self._center[1], unit="deg", frame="icrs")

    @property
    def center_radec(self) -> tuple[float, float]:
        """The tract centre ``(ra, dec)`` [deg]."""
        return self._center

    @property
    def region(self) -> ConvexPolygon:
        """Sky polygon of the tract's box (pixel-edge corners); the region registered for the tract."""
        if self._region is None:
            self._region = _box_polygon(self.wcs, self.bbox)
        return self._region

    def __len__(self) -> int:
        return self.num_patches[0] * self.num_patches[1]

    def __iter__(self) -> Iterator[PatchInfo]:
        """Iterate over the patches in sequential-index order (x fastest)."""
        nx, ny = self.num_patches
        for y in range(ny):
            for x in range(nx):
                yield self.patch_info((x, y))

    def patch_info(self, index: int | tuple[int, int] | Sequence[int]) -> PatchInfo:
        """Return a patch by ``(x, y)`` index or by sequential index ``y * nx + x``.

        Raises
        ------
        SkyMapError
            If the index is outside the tract (the message gives the valid ranges).
        """
        nx, ny = self.num_patches
        if isinstance(index, int | np.integer):
            if not 0 <= index < nx * ny:
                raise SkyMapError(
                    f"tract {self.id} has patches 0..{nx * ny - 1} ({nx} x {ny}); there is no patch {index}."
                )
            x, y = int(index) % nx, int(index) // nx
        else:
            try:
                x, y = (int(v) for v in index)
            except (TypeError, ValueError):
                raise SkyMapError(
                    f"a patch index is an int (sequential) or a pair (x, y) of ints; got {index!r}."
                ) from None
            if not (0 <= x < nx and 0 <= y < ny):
                raise SkyMapError(
                    f"tract {self.id} has patch columns x = 0..{nx - 1} and rows y = 0..{ny - 1}; there is no "
                    f"patch ({x}, {y})."
                )
        key = (x, y)
        patch = self._patches.get(key)
        if patch is None:
            iw, ih = self.patch_inner_dimensions
            inner = Box2I(self.bbox.x0 + x * iw, self.bbox.y0 + y * ih, iw, ih)
            outer = inner.dilated(self.patch_border).intersection(self.bbox)
            patch = PatchInfo(key, y * nx + x, inner, outer, self.id, self)
            self._patches[key] = patch
        return patch

    def _patch_region(self, index: tuple[int, int], *, outer: bool) -> ConvexPolygon:
        key = (index, outer)
        region = self._patch_regions.get(key)
        if region is None:
            patch = self.patch_info(index)
            region = _box_polygon(self.wcs, patch.outer_bbox if outer else patch.inner_bbox)
            self._patch_regions[key] = region
        return region

    def sky_to_pixel(self, ra: Any, dec: Any) -> tuple[np.ndarray, np.ndarray]:
        """Tract pixel coordinates ``(x, y)`` of sky positions [deg]; NaN beyond 90 deg from the centre."""
        ra_a, dec_a = np.broadcast_arrays(np.asarray(ra, dtype=float), np.asarray(dec, dtype=float))
        far = _separation(ra_a, dec_a, *self._center) >= 90.0
        x, y = self.wcs.wcs_world2pix(np.where(far, self._center[0], ra_a), np.where(far, self._center[1], dec_a), 0)
        return np.where(far, np.nan, x), np.where(far, np.nan, y)

    def contains(self, ra: Any, dec: Any) -> Any:
        """True where a sky position [deg] falls inside the tract's box (arrays broadcast)."""
        x, y = self.sky_to_pixel(ra, dec)
        inside = self.bbox.contains_point(np.nan_to_num(x, nan=-1e30), np.nan_to_num(y, nan=-1e30))
        return inside

    def find_patch(self, ra: float, dec: float) -> PatchInfo:
        """Return the patch whose inner box holds a sky position [deg].

        Raises
        ------
        SkyMapError
            If the position is outside the tract.
        """
        x, y = (float(v) for v in self.sky_to_pixel(float(ra), float(dec)))
        if not (math.isfinite(x) and math.isfinite(y)) or not self.bbox.contains_point(x, y):
            raise SkyMapError(
                f"(ra, dec) = ({ra:.6f}, {dec:.6f}) deg is outside tract {self.id} (centre "
                f"{self._center[0]:.6f}, {self._center[1]:.6f}; box {self.bbox}); use SkyMap.find_tract first."
            )
        iw, ih = self.patch_inner_dimensions
        nx, ny = self.num_patches
        ix = min(int(math.floor((x - self.bbox.x0 + 0.5) / iw)), nx - 1)
        iy = min(int(math.floor((y - self.bbox.y0 + 0.5) / ih)), ny - 1)
        return self.patch_info((ix, iy))

    def find_patch_list(self, ra_or_region: Any, dec: Any = None) -> list[PatchInfo]:
        """Return the patches whose outer region overlaps a sky region or holds any of some positions.

        Parameters
        ----------
        ra_or_region : `lsst.sphgeom.Region` or array of `float`
            A region, or right ascensions [deg]; three or more positions stand for their convex hull
            (e.g. the corners of an exposure).
        dec : array of `float`, optional
            Declinations [deg] with ``ra``.

        Returns
        -------
        patches : `list` [`PatchInfo`]
            In sequential-index order; empty when nothing overlaps.
        """
        region, ra, dec_a = _as_region(ra_or_region, dec)
        return self._patches_overlapping(region, ra, dec_a)

    def _patches_overlapping(self, region: Region | None, ra: np.ndarray, dec: np.ndarray) -> list[PatchInfo]:
        if not _region_overlaps_points(region, ra, dec, self.region):
            return []
        return [p for p in self if _region_overlaps_points(region, ra, dec, p.region)]


@dataclass(frozen=True)
class SkyMapRegistration:
    """What `SkyMap.register` did.

    Attributes
    ----------
    name, hash : `str`
        The skymap's name and configuration hash.
    num_tracts, num_patches : `int`
        Tract and patch records the skymap has in the registry.
    inserted : `bool`
        False when an identical skymap was already registered (nothing was written).
    run : `str`
        The RUN collection of the ``skyMap`` dataset.
    """

    name: str
    hash: str
    num_tracts: int
    num_patches: int
    inserted: bool
    run: str


# Sky maps --------------------------------------------------------------------------------------------------------


class SkyMap(ABC):
    """A set of tracts covering (part of) the sky, each divided into patches.

    Use `SkyMap.from_config` (or `from_yaml`) to build the right subclass from a configuration.  Tracts
    are built on first use and cached.  Iterating yields the tracts in id order; ``skymap[i]`` is tract
    ``i``.
    """

    config_type: ClassVar[type[_SkyMapConfigBase]]

    def __init__(self, config: Mapping[str, Any] | DiscreteSkyMapConfig | RingsSkyMapConfig):
        config = validate_skymap_config(config)
        if not isinstance(config, self.config_type):
            raise SkyMapError(
                f"{type(self).__name__} needs a configuration with type "
                f"{next(k for k, v in _CONFIG_TYPES.items() if v is self.config_type)!r}; got type "
                f"{config.type!r}. Use SkyMap.from_config to choose the class."
            )
        self._config = config
        self._tracts: dict[int, TractInfo] = {}
        self._hash: str | None = None

    # Construction and identity ----------------------------------------------------------------------------

    @staticmethod
    def from_config(config: Mapping[str, Any] | DiscreteSkyMapConfig | RingsSkyMapConfig) -> SkyMap:
        """Build the skymap a configuration describes (`DiscreteSkyMap` or `RingsSkyMap`).

        Raises
        ------
        SkyMapError
            If the configuration is invalid.
        """
        config = validate_skymap_config(config)
        return _SKYMAP_TYPES[config.type](config)

    @staticmethod
    def from_yaml(source: str | Path, overrides: Mapping[str, Any] | Sequence[str] = ()) -> SkyMap:
        """Build a skymap from a YAML configuration file (see `read_skymap_config`)."""
        return SkyMap.from_config(read_skymap_config(source, overrides))

    @staticmethod
    def from_yaml_bytes(data: bytes | str) -> SkyMap:
        """Build a skymap from the YAML text `to_yaml_bytes` writes."""
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SkyMapError(f"a skymap configuration is not valid YAML: {err}") from None
        return SkyMap.from_config(loaded)

    def to_yaml_bytes(self) -> bytes:
        """The full configuration (defaults included) as YAML: the file of a ``skyMap`` dataset."""
        return yaml.safe_dump(self._config.model_dump(mode="json"), sort_keys=False).encode("utf-8")

    @property
    def config(self) -> DiscreteSkyMapConfig | RingsSkyMapConfig:
        """The (frozen) configuration."""
        return self._config

    @property
    def name(self) -> str:
        """The skymap's name (the ``skymap`` dimension value)."""
        return self._config.name

    @property
    def hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the configuration's geometry (every field but ``name``)."""
        if self._hash is None:
            canonical = json.dumps(
                self._config.model_dump(mode="json", exclude={"name"}),
                sort_keys=True,
                separators=(",", ":"),
                allow_nan=False,
            )
            self._hash = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SkyMap):
            return NotImplemented
        return type(self) is type(other) and self._config == other._config

    def __hash__(self) -> int:
        return hash((self.name, self.hash))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, tracts={len(self)}, hash={self.hash[:12]})"

    # Tracts -----------------------------------------------------------------------------------------------

    @abstractmethod
    def __len__(self) -> int:
        """Number of tracts."""

    @abstractmethod
    def _tract_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ra, dec)`` arrays [deg] of every tract centre, in id order."""

    @abstractmethod
    def _owned_boundary(self, tract_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Sky positions [deg] on the boundary of the area a tract owns, dense enough that their
        projected pixel positions bound the area's projection."""

    @abstractmethod
    def _owned_region(self, tract_id: int) -> Region:
        """The area a tract owns, as a sphgeom region."""

    @abstractmethod
    def _tract_reach(self) -> float:
        """An upper bound [deg] on the distance from a tract centre to the edge of its box."""

    def _patch_diagonal(self) -> float:
        """The diagonal [deg] of a patch's outer box (inner box, borders and a pixel of margin each side)."""
        cfg = self._config
        sides = (d + 2 * cfg.patch_border + 2 for d in cfg.patch_inner_dimensions)
        return math.hypot(*sides) * cfg.pixel_scale / 3600.0

    def __iter__(self) -> Iterator[TractInfo]:
        for tract_id in range(len(self)):
            yield self[tract_id]

    @property
    def tract_ids(self) -> range:
        """The tract numbers, ``0 .. len(self) - 1``."""
        return range(len(self))

    def __getitem__(self, tract_id: int) -> TractInfo:
        """Return tract ``tract_id`` (negative numbers count from the end).

        Raises
        ------
        SkyMapError
            If there is no such tract.
        """
        n = len(self)
        if not isinstance(tract_id, int | np.integer) or isinstance(tract_id, bool) or not -n <= tract_id < n:
            raise SkyMapError(f"skymap {self.name!r} has tracts 0..{n - 1}; there is no tract {tract_id!r}.")
        tract_id = int(tract_id) % n
        tract = self._tracts.get(tract_id)
        if tract is None:
            tract = self._build_tract(tract_id)
            self._tracts[tract_id] = tract
        return tract

    def _build_tract(self, tract_id: int) -> TractInfo:
        cfg = self._config
        ra_c, dec_c = (float(v[tract_id]) for v in self._tract_centers())
        ra_b, dec_b = self._owned_boundary(tract_id)
        reach = _separation(ra_b, dec_b, ra_c, dec_c)
        if np.max(reach) + cfg.tract_overlap >= _MAX_TRACT_EXTENT:
            raise SkyMapError(
                f"tract {tract_id} of skymap {self.name!r} would extend {np.max(reach) + cfg.tract_overlap:.1f} deg "
                f"from its centre; the projections are used out to {_MAX_TRACT_EXTENT:g} deg. Use smaller tracts."
            )
        if cfg.tract_overlap > 0:  # push every boundary point outward by the overlap
            centre = SkyCoord(ra_c, dec_c, unit="deg")
            points = SkyCoord(ra_b, dec_b, unit="deg")
            moved = centre.directional_offset_by(
                centre.position_angle(points), centre.separation(points) + cfg.tract_overlap * u.deg
            )
            ra_b, dec_b = moved.ra.deg, moved.dec.deg
        wcs0 = _make_wcs(ra_c, dec_c, (0.0, 0.0), cfg.pixel_scale, cfg.projection)
        x, y = wcs0.wcs_world2pix(ra_b, dec_b, 0)
        half = (math.ceil(float(np.max(np.abs(x)))), math.ceil(float(np.max(np.abs(y)))))
        dims = []
        for h, inner in zip(half, cfg.patch_inner_dimensions):
            needed = 2 * h + 1 + 2 * cfg.patch_border
            dims.append(max(1, -(-needed // inner)) * inner)
        bbox = Box2I(0, 0, dims[0], dims[1])
        wcs = _make_wcs(ra_c, dec_c, bbox.center, cfg.pixel_scale, cfg.projection)
        wcs.pixel_shape = (bbox.width, bbox.height)
        return TractInfo(
            tract_id,
            (ra_c, dec_c),
            wcs,
            bbox,
            cfg.patch_inner_dimensions,
            cfg.patch_border,
            self._owned_region(tract_id),
        )

    @property
    def tract_max(self) -> int:
        """Number of tracts (the ``tract_max`` of the skymap record: tract ids are below it)."""
        return len(self)

    @property
    def patch_nx_max(self) -> int:
        """Largest number of patch columns in a tract."""
        return max(t.num_patches[0] for t in self)

    @property
    def patch_ny_max(self) -> int:
        """Largest number of patch rows in a tract."""
        return max(t.num_patches[1] for t in self)

    # Lookups ----------------------------------------------------------------------------------------------

    @abstractmethod
    def find_tract(self, ra: float, dec: float) -> TractInfo:
        """Return the tract that owns a sky position [deg].

        Raises
        ------
        SkyMapError
            If no tract covers the position.
        """

    def _candidate_tracts(self, region: Region | None, ra: np.ndarray, dec: np.ndarray) -> list[TractInfo]:
        """Tracts whose centres are close enough to possibly overlap (built only for those)."""
        if region is not None:
            circle = region.getBoundingCircle()
            centre = LonLat(circle.getCenter())
            c_ra, c_dec = centre.getLon().asDegrees(), centre.getLat().asDegrees()
            radius = circle.getOpeningAngle().asDegrees()
        else:
            c_ra, c_dec = float(ra[0]), float(dec[0])
            radius = float(np.max(_separation(ra, dec, c_ra, c_dec)))
        t_ra, t_dec = self._tract_centers()
        near = _separation(t_ra, t_dec, c_ra, c_dec) <= radius + self._tract_reach()
        return [self[int(i)] for i in np.flatnonzero(near)]

    def find_tract_patch_list(self, ra_or_region: Any, dec: Any = None) -> list[tuple[TractInfo, list[PatchInfo]]]:
        """Return the tracts and patches that overlap a sky region, or hold any of some positions.

        Parameters
        ----------
        ra_or_region : `lsst.sphgeom.Region` or array of `float`
            A region, or right ascensions [deg]; three or more positions stand for their convex hull
            (e.g. the corners of an exposure), fewer are tested as points.
        dec : array of `float`, optional
            Declinations [deg] with ``ra``.

        Returns
        -------
        tract_patches : `list` [`tuple` [`TractInfo`, `list` [`PatchInfo`]]]
            Every tract with at least one overlapping patch (in id order), with those patches (outer
            regions) in sequential order.  Adjacent tracts overlap, so an area may be in several.
        """
        region, ra, dec_a = _as_region(ra_or_region, dec)
        out = []
        for tract in self._candidate_tracts(region, ra, dec_a):
            patches = tract._patches_overlapping(region, ra, dec_a)
            if patches:
                out.append((tract, patches))
        return out

    # Registry -------------------------------------------------------------------------------------------------

    def register(self, butler: Butler, *, run: str = "skymaps") -> SkyMapRegistration:
        """Register the skymap in a repository: dimension records with regions and a ``skyMap`` dataset.

        Inserts the ``skymap`` record (name, hash, tract_max, patch_nx_max, patch_ny_max), one ``tract``
        record per tract and one ``patch`` record (``cell_x``, ``cell_y``) per patch, each with its sky
        region, then writes this skymap as the ``skyMap`` dataset (data ID ``{skymap: name}``) in ``run``.
        Everything happens in one transaction.  Registering an identical skymap again changes nothing.

        Parameters
        ----------
        butler : `butler.Butler`
            A writeable Butler.
        run : `str`, optional
            RUN collection for the ``skyMap`` dataset.

        Returns
        -------
        registration : `SkyMapRegistration`

        Raises
        ------
        SkyMapError
            If a skymap of this name is registered with a different configuration hash.
        butler.errors.ButlerError
            If the repository lacks the ``SkyMap`` storage class, or ``run`` is not a RUN collection.
        """
        registry = butler.registry
        existing = registry.get_dimension_record("skymap", {"skymap": self.name})
        if existing is not None and existing.get("hash") != self.hash:
            raise SkyMapError(
                f"skymap {self.name!r} is already registered in {butler.config.root} with a different "
                f"configuration: registered hash {existing.get('hash')}, this configuration's hash {self.hash}. "
                "A skymap cannot change once registered; register this configuration under another name "
                "(e.g. -c name=...)."
            )
        data_id = {"skymap": self.name}
        with registry.transaction():
            if existing is None:
                tracts = list(self)
                registry.insert_dimension_data(
                    "skymap",
                    {
                        "name": self.name,
                        "hash": self.hash,
                        "tract_max": self.tract_max,
                        "patch_nx_max": max(t.num_patches[0] for t in tracts),
                        "patch_ny_max": max(t.num_patches[1] for t in tracts),
                    },
                )
                registry.insert_dimension_data(
                    "tract", *({"skymap": self.name, "id": t.id, "region": t.region} for t in tracts)
                )
                registry.insert_dimension_data(
                    "patch",
                    *(
                        {
                            "skymap": self.name,
                            "tract": t.id,
                            "id": p.sequential_index,
                            "cell_x": p.index[0],
                            "cell_y": p.index[1],
                            "region": p.region,
                        }
                        for t in tracts
                        for p in t
                    ),
                )
            butler.register_dataset_type(SKYMAP_DATASET_TYPE, ["skymap"], SKYMAP_STORAGE_CLASS)
            registry.register_run(run)
            wrote = False
            if butler.find_dataset(SKYMAP_DATASET_TYPE, data_id, collections=[run]) is None:
                butler.put(self, SKYMAP_DATASET_TYPE, data_id, run=run)
                wrote = True
        num_patches = sum(len(t) for t in self)  # same hash: the same tracts and patches as registered
        return SkyMapRegistration(self.name, self.hash, len(self), num_patches, existing is None or wrote, run)


class DiscreteSkyMap(SkyMap):
    """Tracts at listed centres, each covering a circle (LSST's ``DiscreteSkyMap``).

    Parameters
    ----------
    config : `DiscreteSkyMapConfig` or mapping
        With ``type: discrete`` and ``tracts: [{ra, dec, radius}, ...]``; tract ``i`` is entry ``i``.
    """

    config_type = DiscreteSkyMapConfig
    _config: DiscreteSkyMapConfig

    def __len__(self) -> int:
        return len(self._config.tracts)

    def _tract_centers(self) -> tuple[np.ndarray, np.ndarray]:
        tracts = self._config.tracts
        return np.array([t.ra % 360.0 for t in tracts]), np.array([t.dec for t in tracts])

    def _owned_boundary(self, tract_id: int) -> tuple[np.ndarray, np.ndarray]:
        # A circle centred on the tangent point of a zenithal projection projects to a circle, so the
        # four points at the radius in the cardinal directions bound it (as in LSST's ExplicitTractInfo).
        t = self._config.tracts[tract_id]
        centre = SkyCoord(t.ra % 360.0, t.dec, unit="deg")
        points = centre.directional_offset_by(np.array([0.0, 90.0, 180.0, 270.0]) * u.deg, t.radius * u.deg)
        return points.ra.deg, points.dec.deg

    def _owned_region(self, tract_id: int) -> Region:
        t = self._config.tracts[tract_id]
        return Circle(UnitVector3d(LonLat.fromDegrees(t.ra % 360.0, t.dec)), Angle.fromDegrees(t.radius))

    def _tract_reach(self) -> float:
        cfg = self._config
        return max(t.radius for t in cfg.tracts) * 1.5 + 1.5 * cfg.tract_overlap + self._patch_diagonal()

    def find_tract(self, ra: float, dec: float) -> TractInfo:
        """Return the tract with the nearest centre among those whose box holds a position [deg].

        Raises
        ------
        SkyMapError
            If no tract's box holds the position.
        """
        t_ra, t_dec = self._tract_centers()
        distance = _separation(t_ra, t_dec, float(ra), float(dec))
        for i in np.argsort(distance, kind="stable"):
            tract = self[int(i)]
            if tract.contains(ra, dec):
                return tract
        nearest = int(np.argmin(distance))
        raise SkyMapError(
            f"(ra, dec) = ({ra:.6f}, {dec:.6f}) deg is outside every tract of skymap {self.name!r}; the nearest "
            f"tract is {nearest}, centred {distance[nearest]:.4f} deg away at ({t_ra[nearest]:.6f}, "
            f"{t_dec[nearest]:.6f}). Add a tract there or enlarge its radius."
        )


class RingsSkyMap(SkyMap):
    """The whole sky as declination rings of tracts plus two polar caps (LSST's ``RingsSkyMap``).

    With ``num_rings`` = N the ring height is ``180 / (N + 1)`` deg.  Tract 0 is the south polar cap,
    then the rings from south to north (ring ``i`` centred at Dec ``-90 + (i + 1) * height``) each divided
    into ``int(360 * cos(dec_edge) / height) + 1`` tracts along RA from ``ra_start`` (``dec_edge`` the
    ring edge nearest the equator), and last the north polar cap -- the same numbering as LSST.  A tract
    owns its RA-Dec cell; its box covers that cell plus ``tract_overlap``.

    Parameters
    ----------
    config : `RingsSkyMapConfig` or mapping
        With ``type: rings``.
    """

    config_type = RingsSkyMapConfig
    _config: RingsSkyMapConfig

    def __init__(self, config: Mapping[str, Any] | RingsSkyMapConfig):
        super().__init__(config)
        n = self._config.num_rings
        self._ring_size = 180.0 / (n + 1)
        self._ring_nums: list[int] = []
        for i in range(n):
            start = self._ring_size * (i + 0.5) - 90.0
            stop = start + self._ring_size
            dec_edge = min(abs(start), abs(stop))
            self._ring_nums.append(int(360.0 * math.cos(math.radians(dec_edge)) / self._ring_size) + 1)
        self._ring_first = np.concatenate([[1], 1 + np.cumsum(self._ring_nums)])  # first tract id of each ring
        self._centers: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def ring_size(self) -> float:
        """Height of a ring [deg]."""
        return self._ring_size

    def __len__(self) -> int:
        return sum(self._ring_nums) + 2

    def ring_indices(self, tract_id: int) -> tuple[int, int | None]:
        """Return ``(ring, index in ring)`` of a tract; ring -1 / ``num_rings`` (index None) are the caps."""
        if tract_id == 0:
            return -1, None
        if tract_id == len(self) - 1:
            return self._config.num_rings, None
        ring = int(np.searchsorted(self._ring_first, tract_id, side="right")) - 1
        return ring, tract_id - int(self._ring_first[ring])

    def _tract_centers(self) -> tuple[np.ndarray, np.ndarray]:
        if self._centers is None:
            ra = [0.0]
            dec = [-90.0]
            for ring, n in enumerate(self._ring_nums):
                d = self._ring_size * (ring + 1) - 90.0
                ra.extend(((360.0 * k / n + self._config.ra_start) % 360.0) for k in range(n))
                dec.extend([d] * n)
            ra.append(0.0)
            dec.append(90.0)
            self._centers = (np.array(ra), np.array(dec))
        return self._centers

    def _cell(self, tract_id: int) -> tuple[float, float, float, float]:
        """RA centre, RA half-width, Dec low, Dec high [deg] of a ring tract's cell."""
        ring, index = self.ring_indices(tract_id)
        assert index is not None
        n = self._ring_nums[ring]
        ra = (360.0 * index / n + self._config.ra_start) % 360.0
        low = self._ring_size * (ring + 0.5) - 90.0
        return ra, 180.0 / n, low, low + self._ring_size

    def _owned_boundary(self, tract_id: int) -> tuple[np.ndarray, np.ndarray]:
        ring, _ = self.ring_indices(tract_id)
        if ring in (-1, self._config.num_rings):  # a cap: a circle about the pole
            pole = -90.0 if ring == -1 else 90.0
            edge = pole + (self._ring_size / 2 if ring == -1 else -self._ring_size / 2)
            ra = np.arange(0.0, 360.0, 15.0)
            return ra, np.full_like(ra, edge)
        ra_c, half, low, high = self._cell(tract_id)
        steps = np.linspace(-1.0, 1.0, 17)
        ra_edge = ra_c + half * steps
        dec_edge = low + (high - low) * (steps + 1) / 2
        ra = np.concatenate(
            [ra_edge, ra_edge, np.full_like(dec_edge, ra_c - half), np.full_like(dec_edge, ra_c + half)]
        )
        dec = np.concatenate([np.full_like(ra_edge, low), np.full_like(ra_edge, high), dec_edge, dec_edge])
        return ra % 360.0, dec

    def _owned_region(self, tract_id: int) -> Region:
        ring, _ = self.ring_indices(tract_id)
        if ring == -1:
            return Circle(UnitVector3d(LonLat.fromDegrees(0.0, -90.0)), Angle.fromDegrees(self._ring_size / 2))
        if ring == self._config.num_rings:
            return Circle(UnitVector3d(LonLat.fromDegrees(0.0, 90.0)), Angle.fromDegrees(self._ring_size / 2))
        ra_c, half, low, high = self._cell(tract_id)
        return Box.fromDegrees((ra_c - half) % 360.0, low, (ra_c + half) % 360.0, high)

    def _tract_reach(self) -> float:
        cfg = self._config
        return 1.5 * self._ring_size + 1.5 * cfg.tract_overlap + self._patch_diagonal()

    def find_tract(self, ra: float, dec: float) -> TractInfo:
        """Return the tract whose RA-Dec cell holds a position [deg] (LSST's rule; always one)."""
        ra, dec = float(ra) % 360.0, float(dec)
        if not -90.0 <= dec <= 90.0:
            raise SkyMapError(f"declination must be within [-90, 90] deg; got {dec}.")
        first_start = self._ring_size * 0.5 - 90.0
        if dec < first_start:
            return self[0]
        if dec > -first_start:
            return self[len(self) - 1]
        ring = min(int((dec - first_start) / self._ring_size), self._config.num_rings - 1)
        n = self._ring_nums[ring]
        index = int(((ra - self._config.ra_start) % 360.0) / (360.0 / n) + 0.5) % n
        return self[int(self._ring_first[ring]) + index]


_SKYMAP_TYPES: dict[str, type[SkyMap]] = {"discrete": DiscreteSkyMap, "rings": RingsSkyMap}


# Persistence ------------------------------------------------------------------------------------------------------


class SkyMapFormatter(BytesFormatter):
    """A `SkyMap` as its YAML configuration; reading rebuilds the identical skymap from it."""

    extension = ".yaml"

    def to_bytes(self, obj: Any) -> bytes:
        """Serialise a skymap's full configuration as YAML."""
        if not isinstance(obj, SkyMap):
            from butler.errors import FormatterError

            raise FormatterError(f"SkyMapFormatter writes SkyMap objects; got a {type(obj).__name__}.")
        return obj.to_yaml_bytes()

    def from_bytes(
        self, data: bytes, *, component: str | None = None, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        """Rebuild the skymap from its YAML configuration."""
        self.check_read_arguments(component, parameters)
        return SkyMap.from_yaml_bytes(data)
