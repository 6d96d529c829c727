"""Sky regions and the pixelization index used for spatial joins.

Regions are `lsst.sphgeom` objects (exact spherical geometry).  The registry stores them encoded as
bytes, and indexes each one by the HTM trixels that cover it, so that a spatial join is an equi-join on
trixel IDs in SQL followed by an exact overlap test in Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from lsst.sphgeom import ConvexPolygon, HtmPixelization, LonLat, Region, UnitVector3d

from .errors import ConfigError

__all__ = ["Region", "SkyPixIndex", "decode_region", "encode_region", "polygon_from_radec", "regions_overlap"]


def polygon_from_radec(ra: Sequence[float] | np.ndarray, dec: Sequence[float] | np.ndarray) -> ConvexPolygon:
    """Return the convex sky polygon spanned by vertices given in degrees.

    Parameters
    ----------
    ra, dec : sequence of `float`, same length >= 3
        Vertex coordinates in degrees (ICRS).  Order does not matter: the result is their convex hull.

    Returns
    -------
    polygon : `lsst.sphgeom.ConvexPolygon`

    Raises
    ------
    ValueError
        If fewer than 3 vertices are given or they do not span a polygon.
    """
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    if ra.shape != dec.shape or ra.size < 3:
        raise ValueError(f"a sky polygon needs >= 3 (ra, dec) vertices of equal count; got {ra.size} and {dec.size}")
    points = [UnitVector3d(LonLat.fromDegrees(float(a), float(d))) for a, d in zip(ra, dec)]
    try:
        return ConvexPolygon.convexHull(points)
    except Exception as err:  # sphgeom raises its own types for degenerate input
        raise ValueError(f"vertices do not span a convex sky polygon: {err}") from err


def encode_region(region: Region) -> bytes:
    """Encode a region to the bytes stored in the registry."""
    return bytes(region.encode())


def decode_region(data: bytes) -> Region:
    """Decode a region stored by `encode_region`."""
    return Region.decode(data)


def regions_overlap(a: Region, b: Region) -> bool:
    """Return whether two regions overlap, by the exact spherical test.

    `lsst.sphgeom` answers `None` ("unknown") for some pairs of region types; those are counted as
    overlapping, so a join never loses a true overlap.
    """
    result = a.overlaps(b)
    return True if result is None else bool(result)


class SkyPixIndex:
    """A hierarchical triangular mesh (HTM) pixelization used to index regions.

    Parameters
    ----------
    system : `str`
        Only ``"htm"`` is supported.
    level : `int`
        HTM subdivision level, 1-24; level L trixels are about 90 deg / 2**L across.
    max_pixels : `int`, optional
        Most trixels one region is indexed by; a coarser covering is used beyond that.
    """

    def __init__(self, system: str = "htm", level: int = 8, *, max_pixels: int = 64):
        if system != "htm":
            raise ConfigError(f"skypix system {system!r} is not supported; use 'htm'.")
        if not 1 <= level <= 24:
            raise ConfigError(f"HTM level must be within 1..24, got {level}.")
        self.system = system
        self.level = level
        self._pixelization = HtmPixelization(level)
        self._max_pixels = max_pixels

    def pixels(self, region: Region) -> list[int]:
        """Return the IDs of the trixels at this level that cover ``region`` (a superset)."""
        ranges = self._pixelization.envelope(region, self._max_pixels)
        return [index for begin, end in ranges for index in range(begin, end)]

    def pixels_many(self, regions: Iterable[Region]) -> list[list[int]]:
        """Return `pixels` for each region."""
        return [self.pixels(region) for region in regions]
