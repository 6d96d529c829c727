"""Astrometric calibration: reference-star selection, source-reference matching and a WCS fit.

`AstrometryTask` refines the WCS of an exposure against a reference catalogue in three steps:

1. `select_reference_stars`: the reference objects inside the exposure's footprint (plus a margin), only
   stars (``starnotgal``) within a magnitude range in the exposure's band;
2. `match_to_reference`: an optional search for a global offset of the WCS (the peak of the histogram of
   all source-reference offsets within ``maxOffset``), then nearest-neighbour matching of each reference
   star to the sources (astropy ``match_to_catalog_sky``) within ``matchRadius``, one source per star;
3. `fit_wcs`: a TAN (optionally TAN-SIP) WCS fit to the matched pixel positions and reference coordinates
   (``astropy.wcs.utils.fit_wcs_from_points``), iterated with sigma clipping of the residuals.

Matching and fitting alternate ``numIter`` times, each match made with the latest WCS.  Pixel
coordinates are PARENT coordinates with origin 0, as everywhere in `tasks.image`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord, search_around_sky
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import fit_wcs_from_points

from graph import AlgorithmError, Config, Field, Struct, Task, timeMethod

from .image import Box2I, Exposure

__all__ = [
    "AstrometryConfig",
    "AstrometryTask",
    "MatchResult",
    "ReferenceSelectionConfig",
    "WcsFitResult",
    "fit_wcs",
    "find_offset",
    "match_to_reference",
    "ref_flux_njy",
    "select_reference_stars",
    "sky_residuals",
]

AB_ZERO_POINT_NJY = 31.4  # AB magnitude of 1 nJy
_MAG_PER_LN = 2.5 / math.log(10.0)


def ref_flux_njy(mag: np.ndarray, mag_err: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """AB magnitudes to fluxes [nJy]: ``10**((31.4 - mag) / 2.5)``; the error to first order."""
    mag = np.asarray(mag, dtype=np.float64)
    flux = 10.0 ** ((AB_ZERO_POINT_NJY - mag) / 2.5)
    if mag_err is None:
        return flux, None
    return flux, flux * np.asarray(mag_err, dtype=np.float64) / _MAG_PER_LN


# Reference selection ------------------------------------------------------------------------------------------


class ReferenceSelectionConfig(Config):
    """Which reference objects are used, and the names of the reference catalogue's columns."""

    raColumn: str = Field("ra", description="Right ascension column [deg] (any branch: -10 and 350 are the same).")
    decColumn: str = Field("dec", description="Declination column [deg].")
    magColumn: str = Field("{band}", description="AB magnitude column; '{band}' is replaced by the band (r -> 'r').")
    magErrColumn: str = Field("{band}_err", description="Magnitude error column [mag]; '{band}' as in magColumn.")
    starColumn: str | None = Field(
        "starnotgal", description="Column that is true (non-zero) for stars; None: use every object."
    )
    magMin: float = Field(12.0, description="Brightest reference magnitude used [AB mag].")
    magMax: float = Field(22.0, description="Faintest reference magnitude used [AB mag].")
    margin: int = Field(
        50, ge=0, description="Reference stars up to this many pixels outside the exposure are kept [px]."
    )
    band: str | None = Field(None, description="Band of the magnitudes; None: the exposure's filter band.")


def _column(refcat: Table, name: str, band: str | None) -> np.ndarray:
    resolved = name.format(band=band)
    if resolved not in refcat.colnames:
        raise AlgorithmError(
            f"the reference catalogue has no column {resolved!r} (config {name!r}, band {band!r}); "
            f"its columns are {', '.join(refcat.colnames)}. Set the ReferenceSelectionConfig column names."
        )
    column = refcat[resolved]
    return np.asarray(column.filled(np.nan) if hasattr(column, "filled") else column, dtype=np.float64)


def _frame_center(wcs: WCS, bbox: Box2I) -> tuple[SkyCoord, u.Quantity]:
    """The sky position of the box's centre and the radius of a circle holding the whole box."""
    cx, cy = bbox.center
    corners = bbox.corners().astype(np.float64)
    center = wcs.pixel_to_world(cx, cy)
    radius = center.separation(wcs.pixel_to_world(corners[:, 0], corners[:, 1])).max()
    return center, radius


def select_reference_stars(
    refcat: Table, wcs: WCS, bbox: Box2I, *, band: str | None, config: ReferenceSelectionConfig | None = None
) -> Table:
    """The reference stars usable for calibrating one exposure.

    Parameters
    ----------
    refcat : `astropy.table.Table`
        Reference catalogue with (by default) ``ra``, ``dec`` [deg], ``<band>``, ``<band>_err`` [AB mag]
        and ``starnotgal`` columns.
    wcs : `astropy.wcs.WCS`
        The exposure's (approximate) WCS, parent pixel coordinates, origin 0.
    bbox : `Box2I`
        The exposure's pixel box.
    band : `str` or None
        Band of the magnitudes (``config.band`` overrides it).
    config : `ReferenceSelectionConfig`, optional

    Returns
    -------
    refs : `astropy.table.Table`
        The selected rows with added columns ``ref_index`` (row in ``refcat``), ``coord_ra``,
        ``coord_dec`` [deg, RA in [0, 360)], ``mag``, ``magErr`` [AB mag], ``flux``, ``fluxErr`` [nJy],
        ``x``, ``y`` [px, projected with ``wcs``] and ``inside`` (bool: within ``bbox`` itself).

    Raises
    ------
    AlgorithmError
        If a configured column is missing.
    """
    config = config or ReferenceSelectionConfig()
    band = config.band or band
    ra = _column(refcat, config.raColumn, band)
    dec = _column(refcat, config.decColumn, band)
    mag = _column(refcat, config.magColumn, band)
    mag_err = _column(refcat, config.magErrColumn, band)
    keep = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(mag) & (mag >= config.magMin) & (mag <= config.magMax)
    if config.starColumn:
        keep &= _column(refcat, config.starColumn, band) != 0
    center, radius = _frame_center(wcs, bbox)
    scale = _pixel_scale_arcsec(wcs)
    coords = SkyCoord(ra * u.deg, dec * u.deg)
    # A circle first: a TAN projection maps points far from the tangent point (even the antipode) to pixels.
    keep &= coords.separation(center) <= radius + config.margin * scale * u.arcsec
    index = np.flatnonzero(keep)
    x, y = (np.asarray(v, dtype=np.float64) for v in wcs.world_to_pixel(coords[index]))
    margin = config.margin
    in_box = (x >= bbox.x0 - 0.5 - margin) & (x <= bbox.x1 + 0.5 + margin)
    in_box &= (y >= bbox.y0 - 0.5 - margin) & (y <= bbox.y1 + 0.5 + margin)
    index, x, y = index[in_box], x[in_box], y[in_box]
    refs = refcat[index]
    refs["ref_index"] = index.astype(np.int64)
    refs["coord_ra"] = np.mod(ra[index], 360.0)
    refs["coord_dec"] = dec[index]
    refs["mag"] = mag[index]
    refs["magErr"] = np.where(np.isfinite(mag_err[index]), mag_err[index], 0.0)
    refs["flux"], refs["fluxErr"] = ref_flux_njy(refs["mag"], refs["magErr"])
    refs["x"], refs["y"] = x, y
    refs["inside"] = _inside(x, y, bbox)
    return refs


def _inside(x: np.ndarray, y: np.ndarray, bbox: Box2I) -> np.ndarray:
    """Whether pixel positions fall on the box's pixels (edges at +-0.5 of the outer pixel centres)."""
    return (x >= bbox.x0 - 0.5) & (x <= bbox.x1 + 0.5) & (y >= bbox.y0 - 0.5) & (y <= bbox.y1 + 0.5)


def _pixel_scale_arcsec(wcs: WCS) -> float:
    return float(math.sqrt(abs(np.linalg.det(wcs.celestial.pixel_scale_matrix))) * 3600.0)


# Matching --------------------------------------------------------------------------------------------------


def sky_residuals(coords: SkyCoord, ref_coords: SkyCoord) -> np.ndarray:
    """Offsets of ``coords`` from ``ref_coords`` on the sky, shape (n, 2): (east, north) [arcsec]."""
    d_east, d_north = ref_coords.spherical_offsets_to(coords)
    return np.column_stack([d_east.to_value(u.arcsec), d_north.to_value(u.arcsec)])


def find_offset(
    coords: SkyCoord, ref_coords: SkyCoord, *, max_offset: float, bin_size: float, min_peak: int = 3
) -> tuple[np.ndarray, int] | None:
    """The common offset of sources from reference stars, when the WCS is off by more than the match radius.

    Every source-reference pair closer than ``max_offset`` votes for its offset; the peak of the 2-D
    histogram of offsets (bins of ``bin_size``) is refined by the median of the pairs near it.

    Parameters
    ----------
    coords : `astropy.coordinates.SkyCoord`
        Source positions from the current WCS.
    ref_coords : `astropy.coordinates.SkyCoord`
        Reference star positions.
    max_offset : `float`
        Largest offset searched [arcsec].
    bin_size : `float`
        Histogram bin [arcsec]; about the match radius.
    min_peak : `int`, optional
        Fewest pairs in the peak, and the peak must hold at least 3 times the mean count of the bins.

    Returns
    -------
    offset, n_peak : (`numpy.ndarray` shape (2,), `int`) or None
        The offset (east, north) [arcsec] to add to source positions to reach the reference stars
        (i.e. reference minus source), and the number of pairs supporting it; None if no significant peak.
    """
    if len(coords) == 0 or len(ref_coords) == 0:
        return None
    i_src, i_ref, _, _ = search_around_sky(coords, ref_coords, max_offset * u.arcsec)
    if len(i_src) < min_peak:
        return None
    offsets = -sky_residuals(coords[i_src], ref_coords[i_ref])  # reference - source
    n_bins = max(1, int(math.ceil(2 * max_offset / bin_size)))
    edges = np.linspace(-max_offset, max_offset, n_bins + 1)
    hist, _, _ = np.histogram2d(offsets[:, 0], offsets[:, 1], bins=[edges, edges])
    # Sum 2x2 neighbourhoods so that a peak on a bin edge is not split.
    padded = np.pad(hist, 1)
    summed = padded[1:, 1:] + padded[:-1, 1:] + padded[1:, :-1] + padded[:-1, :-1]
    iy, ix = np.unravel_index(np.argmax(summed), summed.shape)
    guess = np.array([edges[min(iy, n_bins)], edges[min(ix, n_bins)]])
    near = np.hypot(*(offsets - guess).T) <= bin_size
    n_peak = int(near.sum())
    mean_per_peak = 4.0 * len(offsets) / (n_bins * n_bins)
    if n_peak < max(min_peak, 3.0 * mean_per_peak):
        return None
    offset = np.median(offsets[near], axis=0)
    near = np.hypot(*(offsets - offset).T) <= bin_size / 2
    if near.sum() >= min_peak:
        offset = np.median(offsets[near], axis=0)
    return offset, int(near.sum())


@dataclass
class MatchResult:
    """Source-reference pairs.

    Attributes
    ----------
    src_index, ref_index : `numpy.ndarray` of int
        Rows of the source and reference tables, one pair per element.
    distance : `numpy.ndarray`
        Separations after the offset was applied [arcsec].
    offset : `numpy.ndarray`, shape (2,)
        The global offset (east, north) found and applied before matching [arcsec]; zeros if none.
    """

    src_index: np.ndarray
    ref_index: np.ndarray
    distance: np.ndarray
    offset: np.ndarray

    def __len__(self) -> int:
        return len(self.src_index)


def match_to_reference(
    coords: SkyCoord,
    ref_coords: SkyCoord,
    *,
    radius: float,
    max_offset: float = 0.0,
    usable: np.ndarray | None = None,
) -> MatchResult:
    """Match reference stars to their nearest source within ``radius``, one source per star.

    Parameters
    ----------
    coords : `astropy.coordinates.SkyCoord`
        Source positions from the current WCS.
    ref_coords : `astropy.coordinates.SkyCoord`
        Reference star positions.
    radius : `float`
        Largest separation of a pair [arcsec].
    max_offset : `float`, optional
        When > 0, first search for a global offset up to this size [arcsec] (see `find_offset`) and
        apply it to the source positions.
    usable : `numpy.ndarray` of bool, optional
        Sources that may be matched (default all).

    Returns
    -------
    matches : `MatchResult`
    """
    usable_index = np.arange(len(coords)) if usable is None else np.flatnonzero(usable)
    empty = MatchResult(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(2))
    if len(usable_index) == 0 or len(ref_coords) == 0:
        return empty
    src = coords[usable_index]
    offset = np.zeros(2)
    if max_offset > 0:
        found = find_offset(src, ref_coords, max_offset=max_offset, bin_size=max(radius, 0.5))
        if found is not None:
            offset = found[0]
            if np.hypot(*offset) > 0:
                src = src.spherical_offsets_by(offset[0] * u.arcsec, offset[1] * u.arcsec)
    nearest, separation, _ = ref_coords.match_to_catalog_sky(src)
    separation = separation.to_value(u.arcsec)
    ok = separation <= radius
    ref_index = np.flatnonzero(ok)
    src_rows = nearest[ok]
    distance = separation[ok]
    # One reference star per source: keep the closest pair.
    order = np.lexsort((distance, src_rows))
    first = np.ones(len(order), dtype=bool)
    first[1:] = src_rows[order][1:] != src_rows[order][:-1]
    keep = np.sort(order[first])
    return MatchResult(usable_index[src_rows[keep]].astype(np.int64), ref_index[keep].astype(np.int64),
                       distance[keep], offset)


# WCS fit --------------------------------------------------------------------------------------------------------


@dataclass
class WcsFitResult:
    """A fitted WCS and its residuals.

    Attributes
    ----------
    wcs : `astropy.wcs.WCS`
        The fitted WCS (parent pixels, origin 0).
    used : `numpy.ndarray` of bool
        Points kept by the clipping.
    residuals : `numpy.ndarray`, shape (n, 2)
        Offsets (east, north) of every point's fitted position from its reference [arcsec].
    rms : `float`
        RMS of the separations of the used points [arcsec]: ``sqrt(mean(d_east**2 + d_north**2))``.
    """

    wcs: WCS
    used: np.ndarray
    residuals: np.ndarray
    rms: float


def _tan_template(wcs: WCS, center: SkyCoord, crpix: tuple[float, float]) -> WCS:
    """A clean TAN WCS (CD matrix, no distortion) with ``wcs``'s linear part: the fit's starting point."""
    template = WCS(naxis=2)
    template.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    template.wcs.cunit = ["deg", "deg"]
    template.wcs.crval = [center.ra.deg, center.dec.deg]
    template.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    template.wcs.cd = wcs.celestial.pixel_scale_matrix
    template.wcs.set()
    return template


def fit_wcs(
    x: np.ndarray,
    y: np.ndarray,
    ref_coords: SkyCoord,
    *,
    initial: WCS,
    bbox: Box2I,
    sip_degree: int | None = None,
    n_sigma: float = 3.0,
    n_iter: int = 3,
    min_clip: float = 0.05,
    min_points: int = 5,
) -> WcsFitResult:
    """Fit a TAN(-SIP) WCS to matched pixel and sky positions, clipping outliers.

    Parameters
    ----------
    x, y : `numpy.ndarray`, shape (n,)
        Parent pixel positions (origin 0) of the matched sources [px].
    ref_coords : `astropy.coordinates.SkyCoord`, shape (n,)
        Their reference positions.
    initial : `astropy.wcs.WCS`
        The current WCS: its linear part starts the fit and its position of the box centre is the
        tangent point.
    bbox : `Box2I`
        The exposure's box (the tangent point is at its centre).
    sip_degree : `int`, optional
        Degree of the SIP distortion polynomials (>= 2), None for a pure TAN WCS.
    n_sigma : `float`, optional
        Points whose separation exceeds ``n_sigma`` times the RMS (and ``min_clip``) are rejected [sigma].
    n_iter : `int`, optional
        Number of fit-and-clip rounds.
    min_clip : `float`, optional
        Never reject points closer than this [arcsec] (stops clipping at the noise floor).
    min_points : `int`, optional
        Fewest points the fit needs (at least 3, and more for SIP).

    Returns
    -------
    result : `WcsFitResult`

    Raises
    ------
    AlgorithmError
        If fewer than ``min_points`` points are given or survive the clipping.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n_params = 6 + (0 if not sip_degree else (sip_degree + 1) * (sip_degree + 2) - 6)
    need = max(min_points, 3, (n_params + 1) // 2 + 1)
    used = np.isfinite(x) & np.isfinite(y)
    if used.sum() < need:
        raise AlgorithmError(f"the WCS fit needs at least {need} matched stars, got {int(used.sum())}.")
    center = initial.pixel_to_world(*bbox.center)
    wcs = initial
    for _ in range(max(1, n_iter)):
        template = _tan_template(initial, center, bbox.center)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            warnings.filterwarnings("ignore", message="cdelt will be ignored", category=RuntimeWarning)
            wcs = fit_wcs_from_points((x[used], y[used]), ref_coords[used], proj_point=center, projection=template,
                                      sip_degree=sip_degree or None)
        residuals = sky_residuals(wcs.pixel_to_world(x, y), ref_coords)
        distance = np.hypot(residuals[:, 0], residuals[:, 1])
        rms = float(np.sqrt(np.mean(distance[used] ** 2)))
        new = np.isfinite(distance) & (distance <= max(n_sigma * rms, min_clip))
        if new.sum() < need:
            break
        if np.array_equal(new, used):
            break
        used = new
    residuals = sky_residuals(wcs.pixel_to_world(x, y), ref_coords)
    distance = np.hypot(residuals[:, 0], residuals[:, 1])
    rms = float(np.sqrt(np.mean(distance[used] ** 2)))
    return WcsFitResult(wcs=wcs, used=used, residuals=residuals, rms=rms)


# The task -------------------------------------------------------------------------------------------------------


class AstrometryConfig(Config):
    """Configuration of `AstrometryTask`."""

    referenceSelection: ReferenceSelectionConfig = Field(
        default_factory=ReferenceSelectionConfig, description="Reference stars used for matching."
    )
    matchRadius: float = Field(2.0, gt=0, description="Largest source-reference separation of a match [arcsec].")
    maxOffset: float = Field(
        10.0, ge=0,
        description="Search for a global WCS offset up to this size before the first match [arcsec]; 0: no search.",
    )
    numIter: int = Field(3, ge=1, description="Match-and-fit rounds (each match uses the latest WCS).")
    wcsProjection: str = Field("TAN", description="Projection of the fitted WCS (only TAN is supported).")
    sipDegree: int | None = Field(
        None, description="Degree of SIP distortion polynomials (2-5) added to the TAN WCS; None: none."
    )
    nSigmaClip: float = Field(3.0, gt=0, description="Clipping of WCS-fit residuals [sigma of the radial RMS].")
    minClipRadius: float = Field(
        0.05, ge=0, description="Residuals below this are never clipped [arcsec]."
    )
    minMatches: int = Field(5, ge=3, description="Fewest matches (and fit stars) for a WCS fit.")
    minSnr: float = Field(
        10.0, ge=0, description="Sources used in the WCS fit have psfFlux / psfFluxErr above this."
    )
    badFlags: list[str] = Field(
        default_factory=lambda: ["centroid_flag", "flag_edge", "flag_saturated", "flag_interpolated", "flag_bad"],
        description="Sources with any of these (boolean) columns true are not used in the WCS fit.",
    )
    maxRmsIncrease: float = Field(
        1.5, gt=0,
        description="A refit whose RMS exceeds this factor times the initial WCS's RMS (on the same stars) "
        "is rejected.",
    )

    def validate(self) -> None:
        super().validate()
        if self.wcsProjection != "TAN":
            raise ValueError(f"wcsProjection {self.wcsProjection!r} is not supported; use 'TAN' (with sipDegree).")
        if self.sipDegree is not None and not 2 <= self.sipDegree <= 5:
            raise ValueError(f"sipDegree must be None or 2-5, got {self.sipDegree}.")


def _flag(table: Table, name: str) -> np.ndarray:
    if name not in table.colnames:
        return np.zeros(len(table), dtype=bool)
    column = table[name]
    values = column.filled(True) if hasattr(column, "filled") else column
    return np.asarray(values, dtype=bool)


def _float(table: Table, name: str) -> np.ndarray:
    if name not in table.colnames:
        return np.full(len(table), np.nan)
    column = table[name]
    return np.asarray(column.filled(np.nan) if hasattr(column, "filled") else column, dtype=np.float64)


def usable_sources(sources: Table) -> np.ndarray:
    """Sources that may be matched: finite centroids, not negative detections, not deblended parents."""
    ok = np.isfinite(_float(sources, "centroid_x")) & np.isfinite(_float(sources, "centroid_y"))
    ok &= ~_flag(sources, "is_negative")
    if "deblend_nChild" in sources.colnames:
        ok &= np.asarray(sources["deblend_nChild"]) == 0
    return ok


class AstrometryTask(Task):
    """Match sources to a reference catalogue and fit a WCS (see the module docstring).

    Metadata: ``numRefStars`` (selected reference stars), ``numMatches``, ``numFitStars``,
    ``offsetEast``, ``offsetNorth`` (global offset found [arcsec]), ``astromRmsBefore``,
    ``astromRms`` [arcsec, radial RMS on the fit stars with the initial and the fitted WCS].
    """

    ConfigClass = AstrometryConfig
    _DefaultName = "astrometry"

    def select(self, refcat: Table, exposure: Exposure) -> Table:
        """The reference stars for ``exposure`` (see `select_reference_stars`)."""
        band = exposure.filter.band if exposure.filter is not None else None
        return select_reference_stars(refcat, exposure.wcs, exposure.bbox, band=band,
                                      config=self.config.referenceSelection)

    def match(self, sources: Table, refs: Table, wcs: WCS, *, max_offset: float | None = None) -> MatchResult:
        """Match selected reference stars (`select`) to the sources, positions from ``wcs``."""
        coords = wcs.pixel_to_world(_float(sources, "centroid_x"), _float(sources, "centroid_y"))
        ref_coords = SkyCoord(np.asarray(refs["coord_ra"], float), np.asarray(refs["coord_dec"], float), unit="deg")
        return match_to_reference(
            coords, ref_coords, radius=self.config.matchRadius,
            max_offset=self.config.maxOffset if max_offset is None else max_offset, usable=usable_sources(sources),
        )

    def fit_mask(self, sources: Table) -> np.ndarray:
        """Sources good enough for the WCS fit: unflagged and with ``psfFlux / psfFluxErr >= minSnr``."""
        ok = usable_sources(sources)
        for name in self.config.badFlags:
            ok &= ~_flag(sources, name)
        flux, err = _float(sources, "psfFlux"), _float(sources, "psfFluxErr")
        if np.isfinite(flux).any():
            with np.errstate(divide="ignore", invalid="ignore"):
                ok &= np.nan_to_num(flux / err, nan=0.0) >= self.config.minSnr
        return ok

    @timeMethod
    def run(self, sourceCat: Table, exposure: Exposure, refCat: Table) -> Struct:  # noqa: N803
        """Fit the WCS of ``exposure`` by matching ``sourceCat`` to ``refCat``.

        Parameters
        ----------
        sourceCat : `astropy.table.Table`
            Sources with ``centroid_x``, ``centroid_y`` [px, parent], and ideally ``psfFlux``,
            ``psfFluxErr`` and flag columns (see `fit_mask`).
        exposure : `Exposure`
            Its ``wcs`` is the starting point; not modified.
        refCat : `astropy.table.Table`
            The reference catalogue (see `select_reference_stars`).

        Returns
        -------
        result : `Struct`
            ``wcs`` (fitted), ``refs`` (the selected reference stars), ``matches`` (`MatchResult` with the
            fitted WCS), ``fitUsed`` (bool per match: used in the final fit), ``rms``, ``rmsBefore``
            [arcsec], ``residuals`` (per match, (east, north) [arcsec] with the fitted WCS).

        Raises
        ------
        AlgorithmError
            If the exposure has no WCS, or fewer than ``minMatches`` stars can be matched or fitted, or the
            fit is worse than the initial WCS (``maxRmsIncrease``).
        """
        config = self.config
        if exposure.wcs is None:
            raise AlgorithmError("the exposure has no WCS to start the astrometric fit from.")
        initial = exposure.wcs
        refs = self.select(refCat, exposure)
        self.metadata["numRefStars"] = len(refs)
        if len(refs) < config.minMatches:
            raise AlgorithmError(
                f"only {len(refs)} reference stars are in the exposure's footprint (need {config.minMatches}); "
                "check the reference catalogue covers the field and referenceSelection (magMin, magMax, band)."
            )
        ref_coords = SkyCoord(np.asarray(refs["coord_ra"], float), np.asarray(refs["coord_dec"], float), unit="deg")
        x_all, y_all = _float(sourceCat, "centroid_x"), _float(sourceCat, "centroid_y")
        good = self.fit_mask(sourceCat)

        wcs = initial
        matches = self.match(sourceCat, refs, wcs)
        self.metadata["offsetEast"], self.metadata["offsetNorth"] = (float(v) for v in matches.offset)
        if np.hypot(*matches.offset) > 0:
            self.log.info("global WCS offset of (%.2f, %.2f) arcsec (east, north) found", *matches.offset)
        fit = None
        src_rows = np.zeros(0, dtype=np.int64)
        for iteration in range(config.numIter):
            fit_rows = good[matches.src_index]
            self.log.debug("astrometry iteration %d: %d matches, %d usable for the fit", iteration, len(matches),
                           int(fit_rows.sum()))
            if fit_rows.sum() < config.minMatches:
                raise AlgorithmError(
                    f"only {int(fit_rows.sum())} of {len(matches)} matches (within {config.matchRadius}\" of "
                    f"{len(refs)} reference stars) are usable for the WCS fit (need {config.minMatches}); "
                    "check the WCS is within maxOffset of the truth and the sources' flags and S/N (minSnr)."
                )
            src_rows = matches.src_index[fit_rows]
            fit = fit_wcs(
                x_all[src_rows], y_all[src_rows], ref_coords[matches.ref_index[fit_rows]], initial=wcs,
                bbox=exposure.bbox, sip_degree=config.sipDegree, n_sigma=config.nSigmaClip,
                min_clip=config.minClipRadius, min_points=config.minMatches,
            )
            wcs = fit.wcs
            matches = self.match(sourceCat, refs, wcs, max_offset=0.0)
        assert fit is not None
        # Residuals of the final matches; the RMS of the final fit stars with the fitted and the initial WCS.
        x_match, y_match = x_all[matches.src_index], y_all[matches.src_index]
        residuals = sky_residuals(wcs.pixel_to_world(x_match, y_match), ref_coords[matches.ref_index])
        fit_used = np.isin(matches.src_index, src_rows[fit.used])
        if not fit_used.any():
            raise AlgorithmError("no star of the WCS fit is matched with the fitted WCS; the fit diverged.")
        rms = float(np.sqrt(np.mean(np.sum(residuals[fit_used] ** 2, axis=1))))
        initial_res = sky_residuals(initial.pixel_to_world(x_match, y_match), ref_coords[matches.ref_index])
        rms_initial_same = float(np.sqrt(np.mean(np.sum(initial_res[fit_used] ** 2, axis=1))))
        if rms > config.maxRmsIncrease * rms_initial_same and rms > config.minClipRadius:
            raise AlgorithmError(
                f"the fitted WCS has residuals of {rms:.3f}\" RMS, worse than the initial WCS's "
                f"{rms_initial_same:.3f}\" on the same {int(fit_used.sum())} stars; the matches are probably wrong "
                "(check matchRadius, maxOffset)."
            )
        # Pixel positions of the reference stars with the fitted WCS.
        x_ref, y_ref = (np.asarray(v, dtype=np.float64) for v in wcs.world_to_pixel(ref_coords))
        bbox = exposure.bbox
        refs["x"], refs["y"] = x_ref, y_ref
        refs["inside"] = _inside(x_ref, y_ref, bbox)
        self.metadata["numMatches"] = len(matches)
        self.metadata["numFitStars"] = int(fit_used.sum())
        self.metadata["astromRmsBefore"] = rms_initial_same
        self.metadata["astromRms"] = rms
        self.log.info(
            "astrometry: %d reference stars, %d matches, %d fit stars; RMS %.3f\" -> %.3f\"",
            len(refs), len(matches), int(fit_used.sum()), rms_initial_same, rms,
        )
        return Struct(wcs=wcs, refs=refs, matches=matches, fitUsed=fit_used, rms=rms, rmsBefore=rms_initial_same,
                      residuals=residuals)
