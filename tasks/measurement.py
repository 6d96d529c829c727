"""Single-frame source measurement: `SingleFrameMeasurementTask`.

For every detected source the task measures, on small postage stamps cut around the source and vectorised
over all sources:

* a **centroid**: the Gaussian-weighted centroid with a weight of the PSF's sigma, iterated to convergence by
  Newton steps (for a Gaussian PSF and background-limited noise this is the maximum-likelihood position);
  errors by linear propagation of the variance plane through the estimating equation;
* **adaptive second moments** (Bernstein & Jarvis 2002, AJ 123, 583) about the centroid: the elliptical
  Gaussian weight matched to the source, solved with the Gaussian update ``M^-1 = M_w^-1 - W^-1``;
* a **PSF flux**: the linear least-squares amplitude of the exposure's PSF model image at the centroid;
* **aperture fluxes** in circles of ``apertureRadii`` pixels, with exact pixel/circle overlaps
  (`photutils.geometry.circular_overlap_grid`);
* **pixel flags** from the mask planes.

Before measuring a source, the pixels of every *other* footprint in its stamps are set to zero (the
background), as the LSST stack's noise replacer does, so that neighbours do not bias the measurement.  A
source is matched to its footprint by the footprint label at its input position (the detection peak); a
deblended parent (a row that other rows name as ``parent``) owns the footprints of its children.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.table import Table
from photutils.geometry import circular_overlap_grid

from graph import Config, Field, Task, timeMethod

from .detection import FootprintSet
from .image import Exposure

__all__ = ["SingleFrameMeasurementConfig", "SingleFrameMeasurementTask", "aperture_flux_name"]

_STAMP_HALF_SIZES = (8, 12, 16, 24, 32, 48, 64)
"""Half-sizes of the moment stamps [pixels]: sources are grouped by the smallest class that holds them."""


def aperture_flux_name(radius: float) -> str:
    """Column name of an aperture flux: ``apFlux_3_0`` for a radius of 3.0 pixels."""
    return "apFlux_" + f"{radius:.1f}".replace(".", "_")


class SingleFrameMeasurementConfig(Config):
    """Configuration of `SingleFrameMeasurementTask`."""

    apertureRadii: list[float] = Field(
        default_factory=lambda: [3.0, 4.5, 6.0, 9.0, 12.0], description="Radii of the aperture fluxes [pixels]."
    )
    doPsfFlux: bool = Field(True, description="Measure PSF fluxes (needs a PSF on the exposure).")
    doShape: bool = Field(True, description="Measure adaptive second moments.")
    doReplaceNeighbors: bool = Field(
        True, description="Set the pixels of other footprints to zero in each source's stamps."
    )
    defaultSigma: float = Field(
        2.0, gt=0, description="Centroid weight sigma [pixels] when the exposure has no PSF."
    )
    centroidMaxShift: float = Field(
        2.0, gt=0, description="Flag the centroid (and fall back to the peak) if it moves further [pixels]."
    )
    centroidMaxIter: int = Field(20, ge=1, description="Maximum number of centroid iterations.")
    shapeMaxIter: int = Field(60, ge=1, description="Maximum number of adaptive-moment iterations.")
    shapeTolerance: float = Field(1e-5, gt=0, description="Relative convergence tolerance of the moments.")
    shapeMaxHalfSize: int = Field(
        64, ge=8, description="Largest moment stamp half-size [pixels]; larger sources get shape_flag."
    )
    psfFluxBadMaskPlanes: list[str] = Field(
        default_factory=lambda: ["BAD", "SAT", "NO_DATA"], description="Pixels left out of the PSF-flux fit."
    )
    psfFluxMaxMaskedFraction: float = Field(
        0.3, ge=0, le=1, description="Flag the PSF flux when masked pixels carry more of the PSF's power."
    )
    edgeMaskPlanes: list[str] = Field(
        default_factory=lambda: ["EDGE", "NO_DATA"], description="Planes that set flag_edge (any footprint pixel)."
    )


class SingleFrameMeasurementTask(Task):
    """Measure centroids, adaptive moments, PSF and aperture fluxes, and pixel flags of detected sources.

    Metadata: ``numMeasured``, ``numCentroidFlagged``, ``numShapeFlagged``, ``numPsfFluxFlagged``.
    """

    ConfigClass = SingleFrameMeasurementConfig
    _DefaultName = "measurement"

    @timeMethod
    def run(self, exposure: Exposure, sources: Table, footprints: FootprintSet) -> Table:
        """Measure sources on a background-subtracted exposure.

        Parameters
        ----------
        exposure : `Exposure`
            Background-subtracted exposure [counts] with a variance plane; its PSF (if any) gives the PSF
            fluxes and the centroid weight.  Not modified.
        sources : `astropy.table.Table`
            Detections: ``id``, ``parent``, ``centroid_x``, ``centroid_y`` (peak positions [parent pixels]),
            ``footprint_npix``, ``peak_value``, ``is_negative`` (as `SourceDetectionTask` returns them; missing
            optional columns get defaults).
        footprints : `FootprintSet`
            The footprints of the detections.

        Returns
        -------
        catalog : `astropy.table.Table`
            One row per source (same order) with the source-catalogue columns: positions [parent pixels],
            moments [pixels^2], fluxes [counts], flags (see the module docstring); input columns that are not
            catalogue columns follow them unchanged.  ``flag_edge``, ``flag_saturated`` and ``flag_bad`` are
            set when any pixel of the source's footprint (or of the 3x3 pixels about its centroid) has
            EDGE/NO_DATA, SAT or BAD; ``flag_interpolated`` and ``flag_cr`` when one of the 3x3 central pixels
            has INTRP or CR.  Incomplete apertures (off the image or with NO_DATA pixels) give NaN fluxes and
            ``apFlux_flag``.
        """
        config = self.config
        n = len(sources)
        x_in = np.asarray(sources["centroid_x"], dtype=np.float64)
        y_in = np.asarray(sources["centroid_y"], dtype=np.float64)
        ids = np.asarray(sources["id"], dtype=np.int64)
        parent = (
            np.asarray(sources["parent"], dtype=np.int64) if "parent" in sources.colnames else np.zeros(n, np.int64)
        )
        negative = (
            np.asarray(sources["is_negative"], dtype=bool) if "is_negative" in sources.colnames else np.zeros(n, bool)
        )
        sign = np.where(negative, -1.0, 1.0)

        mi = exposure.masked_image
        x0, y0 = mi.xy0
        image = mi.image
        variance = mi.variance
        mask = mi.mask
        invalid_bits = mask.get_plane_bitmask(["NO_DATA"], missing_ok=True)
        labels = _labels_on(footprints, exposure)
        row_label, parent_row = _ownership(labels, x_in - x0, y_in - y0, ids, parent)

        sigma = _psf_sigma(exposure, config.defaultSigma)
        stamps = _StampCutter(image, variance, mask.array, labels, invalid_bits, row_label, parent_row,
                              replace=config.doReplaceNeighbors)

        # Centroids ------------------------------------------------------------------------------------------
        cx, cy, cx_err, cy_err, c_flag = _centroids(
            stamps, x_in - x0, y_in - y0, sign, sigma, max_shift=config.centroidMaxShift,
            max_iter=config.centroidMaxIter,
        )

        # Shapes -----------------------------------------------------------------------------------------------
        if config.doShape:
            # The footprint (grown by ~2.4 PSF sigmas) bounds the source; at least 5 PSF sigmas.
            half_needed = np.full(n, max(int(math.ceil(5.0 * sigma)), 8))
            half_needed = np.maximum(half_needed, _footprint_half_extent(footprints, row_label, parent_row))
            sxx, syy, sxy, s_flag = _shapes(
                stamps, cx, cy, sign, half_needed, sigma, max_half=config.shapeMaxHalfSize,
                max_iter=config.shapeMaxIter, tol=config.shapeTolerance,
            )
            s_flag |= c_flag
        else:
            sxx = syy = sxy = np.full(n, np.nan)
            s_flag = np.ones(n, dtype=bool)

        # PSF fluxes -------------------------------------------------------------------------------------------
        if config.doPsfFlux and exposure.psf is not None and n:
            bad_bits = mask.get_plane_bitmask(config.psfFluxBadMaskPlanes, missing_ok=True)
            psf_flux, psf_err, p_flag = _psf_fluxes(
                stamps, exposure, cx + x0, cy + y0, bad_bits, config.psfFluxMaxMaskedFraction
            )
        else:
            psf_flux = psf_err = np.full(n, np.nan)
            p_flag = np.ones(n, dtype=bool)

        # Aperture fluxes --------------------------------------------------------------------------------------
        radii = [float(r) for r in config.apertureRadii]
        ap_flux, ap_err, ap_flag = _aperture_fluxes(stamps, cx, cy, radii)

        # Pixel flags ------------------------------------------------------------------------------------------
        fp_bits = _footprint_bits(mask.array, labels, row_label, parent_row)
        centre_bits, centre_off = _centre_bits(mask.array, cx, cy)
        has = lambda names: mask.get_plane_bitmask(names, missing_ok=True)  # noqa: E731
        flag_edge = ((fp_bits | centre_bits) & has(config.edgeMaskPlanes)) != 0
        flag_edge |= centre_off
        flag_sat = ((fp_bits | centre_bits) & has(["SAT"])) != 0
        flag_bad = ((fp_bits | centre_bits) & has(["BAD"])) != 0
        flag_intrp = (centre_bits & has(["INTRP"])) != 0
        flag_cr = (centre_bits & has(["CR"])) != 0
        ap_flag |= flag_edge

        x_out = cx + x0
        y_out = cy + y0
        catalog = Table()
        catalog["id"] = ids
        catalog["parent"] = parent
        _col(catalog, "centroid_x", x_out, "pix", "Weighted centroid x [parent pixels]")
        _col(catalog, "centroid_y", y_out, "pix", "Weighted centroid y [parent pixels]")
        _col(catalog, "centroid_xErr", cx_err, "pix", "1-sigma error of centroid_x")
        _col(catalog, "centroid_yErr", cy_err, "pix", "1-sigma error of centroid_y")
        catalog["centroid_flag"] = c_flag
        _col(catalog, "shape_xx", sxx, "pix2", "Adaptive second moment xx")
        _col(catalog, "shape_yy", syy, "pix2", "Adaptive second moment yy")
        _col(catalog, "shape_xy", sxy, "pix2", "Adaptive second moment xy")
        catalog["shape_flag"] = s_flag
        _col(catalog, "psfFlux", psf_flux, "ct", "PSF-model flux [instrumental counts]")
        _col(catalog, "psfFluxErr", psf_err, "ct", "1-sigma error of psfFlux")
        catalog["psfFlux_flag"] = p_flag
        for k, radius in enumerate(radii):
            name = aperture_flux_name(radius)
            _col(catalog, name, ap_flux[:, k], "ct", f"Flux in a circle of radius {radius} pixels")
            _col(catalog, name + "Err", ap_err[:, k], "ct", f"1-sigma error of {name}")
        catalog["apFlux_flag"] = ap_flag
        catalog["footprint_npix"] = (
            np.asarray(sources["footprint_npix"], dtype=np.int64) if "footprint_npix" in sources.colnames
            else np.zeros(n, np.int64)
        )
        catalog["peak_value"] = (
            np.asarray(sources["peak_value"], dtype=np.float64) if "peak_value" in sources.colnames
            else np.full(n, np.nan)
        )
        catalog["is_negative"] = negative
        catalog["flag_edge"] = flag_edge
        catalog["flag_saturated"] = flag_sat
        catalog["flag_interpolated"] = flag_intrp
        catalog["flag_cr"] = flag_cr
        catalog["flag_bad"] = flag_bad
        for name in ("calib_psf_candidate", "calib_psf_used", "calib_psf_reserved"):
            catalog[name] = (
                np.asarray(sources[name], dtype=bool) if name in sources.colnames else np.zeros(n, dtype=bool)
            )
        ra, dec = _sky_coords(exposure, x_out, y_out)
        _col(catalog, "coord_ra", ra, "deg", "Right ascension of the centroid (exposure WCS)")
        _col(catalog, "coord_dec", dec, "deg", "Declination of the centroid (exposure WCS)")
        for name in sources.colnames:  # pass other input columns through (e.g. deblend_nChild)
            if name not in catalog.colnames:
                catalog[name] = sources[name]
        catalog.meta["apertureRadii"] = radii
        catalog.meta["centroidWeightSigma"] = float(sigma)

        self.metadata["numMeasured"] = n
        self.metadata["numCentroidFlagged"] = int(c_flag.sum())
        self.metadata["numShapeFlagged"] = int(s_flag.sum())
        self.metadata["numPsfFluxFlagged"] = int(p_flag.sum())
        self.log.info("Measured %d sources (%d centroids flagged)", n, int(c_flag.sum()))
        return catalog


# Helpers ------------------------------------------------------------------------------------------------------


def _col(table: Table, name: str, values: np.ndarray, unit: str, description: str) -> None:
    table[name] = np.asarray(values, dtype=np.float64)
    if unit:
        table[name].unit = unit
    table[name].description = description


def _labels_on(footprints: FootprintSet, exposure: Exposure) -> np.ndarray:
    """The footprint labels on the exposure's pixel grid (0 outside the footprint set's bbox)."""
    if footprints.bbox == exposure.bbox:
        return footprints.labels
    out = np.zeros(exposure.shape, dtype=np.int32)
    box = footprints.bbox.intersection(exposure.bbox)
    if not box.is_empty:
        out[box.slices(exposure.bbox)] = footprints.labels[box.slices(footprints.bbox)]
    return out


def _ownership(
    labels: np.ndarray, x: np.ndarray, y: np.ndarray, ids: np.ndarray, parent: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Which footprint labels each source owns.

    A source owns the label under its input position and, when it is a deblended parent, the labels of its
    children.  Sources sharing a label (children measured on their parent's footprint) share its pixels.

    Returns
    -------
    row_label : `numpy.ndarray` of int64, shape (n,)
        Label under each source's input position (0: none).
    parent_row : `numpy.ndarray` of int64, shape (max_label + 1,)
        Row of the parent of the child sources on each label (-1 when none).
    """
    n_labels = int(labels.max()) + 1 if labels.size else 1
    parent_row = np.full(n_labels, -1, dtype=np.int64)
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64), parent_row
    ny, nx = labels.shape
    ix = np.clip(np.floor(x + 0.5).astype(np.int64), 0, nx - 1)
    iy = np.clip(np.floor(y + 0.5).astype(np.int64), 0, ny - 1)
    row_label = labels[iy, ix].astype(np.int64)
    order = np.argsort(ids)
    pos = np.clip(np.searchsorted(ids[order], parent), 0, n - 1)
    has_parent = (parent != 0) & (ids[order][pos] == parent)
    child = has_parent & (row_label > 0)
    parent_row[row_label[child]] = order[pos][child]
    parent_row[0] = -1
    return row_label, parent_row


class _StampCutter:
    """Vectorised extraction of square stamps around many positions (array coordinates).

    Pixels off the image or flagged ``invalid_bits`` (or NaN) are returned as 0 with ``valid`` False; with
    ``replace``, pixels of footprints that the source does not own are returned as 0 (still valid).
    """

    def __init__(self, image, variance, mask, labels, invalid_bits, row_label, parent_row, *, replace):
        self.image = image
        self.variance = variance
        self.mask = mask
        self.labels = labels
        self.invalid_bits = invalid_bits
        self.row_label = row_label
        self.parent_row = parent_row
        self.replace = replace

    def cut(self, ix: np.ndarray, iy: np.ndarray, half_w: int, half_h: int | None = None, rows=None):
        """Stamps of shape (n, 2 half_h + 1, 2 half_w + 1) centred on integer pixels (ix, iy).

        Returns
        -------
        data, var : float64 arrays; valid : bool array; mask : int32 array (0 off the image).
        """
        half_h = half_w if half_h is None else half_h
        ny, nx = self.image.shape
        yy = iy[:, None] + np.arange(-half_h, half_h + 1)[None, :]
        xx = ix[:, None] + np.arange(-half_w, half_w + 1)[None, :]
        in_y = (yy >= 0) & (yy < ny)
        in_x = (xx >= 0) & (xx < nx)
        yc = np.clip(yy, 0, ny - 1)[:, :, None]
        xc = np.clip(xx, 0, nx - 1)[:, None, :]
        inside = in_y[:, :, None] & in_x[:, None, :]
        data = self.image[yc, xc].astype(np.float64)
        var = self.variance[yc, xc].astype(np.float64)
        mask = np.where(inside, self.mask[yc, xc], 0)
        valid = inside & np.isfinite(data) & np.isfinite(var)
        if self.invalid_bits:
            valid &= (mask & self.invalid_bits) == 0
        if self.replace and rows is not None:
            lab = self.labels[yc, xc]
            rows_b = np.asarray(rows)[:, None, None]
            own_label = self.row_label[np.asarray(rows)][:, None, None]
            other = (lab > 0) & (lab != own_label) & (self.parent_row[lab] != rows_b)
            data[other & inside] = 0.0
        data[~valid] = 0.0
        var[~valid] = 0.0
        return data, var, valid, mask


def _psf_sigma(exposure: Exposure, default: float) -> float:
    if exposure.psf is None:
        return float(default)
    sigma = exposure.psf.determinant_radius(*exposure.bbox.center)
    return float(sigma) if math.isfinite(sigma) and sigma > 0 else float(default)


def _centroids(stamps: _StampCutter, x, y, sign, sigma, *, max_shift, max_iter):
    """Gaussian-weighted centroids by Newton iteration (array coordinates); see the module docstring."""
    n = len(x)
    if n == 0:
        empty = np.zeros(0)
        return empty, empty, empty, empty, np.zeros(0, dtype=bool)
    ix = np.floor(x + 0.5).astype(np.int64)
    iy = np.floor(y + 0.5).astype(np.int64)
    half = int(math.ceil(4.0 * sigma + max_shift)) + 1
    data, var, valid, _ = stamps.cut(ix, iy, half, rows=np.arange(n))
    data *= sign[:, None, None]
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    xc = x - ix  # relative to the stamp centre
    yc = y - iy
    s2 = sigma * sigma
    converged = np.zeros(n, dtype=bool)
    for _ in range(max_iter):
        dx = offsets[None, :] - xc[:, None]  # (n, S) along x
        dy = offsets[None, :] - yc[:, None]
        wx = np.exp(-0.5 * dx * dx / s2)
        wy = np.exp(-0.5 * dy * dy / s2)
        wd = data * valid * wy[:, :, None] * wx[:, None, :]
        s0 = wd.sum(axis=(1, 2))
        px = wd.sum(axis=1)  # (n, S) profile along x
        py = wd.sum(axis=2)
        fx = (px * dx).sum(axis=1)
        fy = (py * dy).sum(axis=1)
        jx = (px * (1.0 - dx * dx / s2)).sum(axis=1)
        jy = (py * (1.0 - dy * dy / s2)).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            step_x = fx / np.maximum(jx, 0.25 * s0)
            step_y = fy / np.maximum(jy, 0.25 * s0)
        step_x = np.clip(np.nan_to_num(step_x), -1.0, 1.0)
        step_y = np.clip(np.nan_to_num(step_y), -1.0, 1.0)
        active = ~converged
        xc = np.where(active, xc + step_x, xc)
        yc = np.where(active, yc + step_y, yc)
        converged |= (np.abs(step_x) < 1e-5) & (np.abs(step_y) < 1e-5)
        if converged.all():
            break
    # Errors at the solution: var = sum(w^2 d^2 V) / J^2 (linearised estimating equation).
    dx = offsets[None, :] - xc[:, None]
    dy = offsets[None, :] - yc[:, None]
    wx = np.exp(-0.5 * dx * dx / s2)
    wy = np.exp(-0.5 * dy * dy / s2)
    w = valid * wy[:, :, None] * wx[:, None, :]
    wd = data * w
    s0 = wd.sum(axis=(1, 2))
    jx = (wd.sum(axis=1) * (1.0 - dx * dx / s2)).sum(axis=1)
    jy = (wd.sum(axis=2) * (1.0 - dy * dy / s2)).sum(axis=1)
    w2v = w * w * var
    vx = (w2v.sum(axis=1) * dx * dx).sum(axis=1)
    vy = (w2v.sum(axis=2) * dy * dy).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_err = np.sqrt(vx) / jx
        y_err = np.sqrt(vy) / jy
    centre_valid = valid[:, half, half]
    shift = np.hypot(xc - (x - ix), yc - (y - iy))
    flag = (
        ~converged | (s0 <= 0) | (jx <= 0) | (jy <= 0) | ~np.isfinite(x_err) | ~np.isfinite(y_err)
        | (shift > max_shift) | ~centre_valid
    )
    x_out = np.where(flag, x, ix + xc)
    y_out = np.where(flag, y, iy + yc)
    x_err = np.where(flag, np.nan, x_err)
    y_err = np.where(flag, np.nan, y_err)
    return x_out, y_out, x_err, y_err, flag


def _per_row(per_label: np.ndarray, row_label: np.ndarray, parent_row: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    """Combine per-label values into per-source values: own label, then the labels of a parent's children."""
    out = per_label[row_label].copy()
    out[row_label == 0] = 0
    children = np.flatnonzero(parent_row >= 0)
    ufunc.at(out, parent_row[children], per_label[children])
    return out


def _footprint_half_extent(footprints: FootprintSet, row_label: np.ndarray, parent_row: np.ndarray) -> np.ndarray:
    """Half the larger side of each source's footprint bounding box [pixels] (0 without a footprint)."""
    per_label = np.zeros(len(parent_row), dtype=np.int64)
    if len(footprints):
        sides = np.array([(max(b.width, b.height) + 1) // 2 for b in footprints.bboxes], dtype=np.int64)
        inside = footprints.ids < len(per_label)
        per_label[footprints.ids[inside]] = sides[inside]
    return _per_row(per_label, row_label, parent_row, np.maximum)


def _shapes(stamps: _StampCutter, x, y, sign, half_needed, sigma, *, max_half, max_iter, tol):
    """Adaptive moments about (x, y) (array coordinates), grouped by stamp size."""
    n = len(x)
    sxx = np.full(n, np.nan)
    syy = np.full(n, np.nan)
    sxy = np.full(n, np.nan)
    flag = np.ones(n, dtype=bool)
    classes = [h for h in _STAMP_HALF_SIZES if h <= max_half] or [max_half]
    chosen = np.full(n, classes[-1])
    for h in reversed(classes):
        chosen = np.where(half_needed <= h, h, chosen)
    too_big = half_needed > classes[-1]
    promoted = np.zeros(n, dtype=bool)
    for c, h in enumerate(classes):
        rows = np.flatnonzero((chosen == h) | promoted)
        promoted[:] = False
        if rows.size == 0:
            continue
        ix = np.floor(x[rows] + 0.5).astype(np.int64)
        iy = np.floor(y[rows] + 0.5).astype(np.int64)
        data, _, valid, _ = stamps.cut(ix, iy, h, rows=rows)
        data *= sign[rows, None, None]
        offsets = np.arange(-h, h + 1, dtype=np.float64)
        dx = offsets[None, None, :] - (x[rows] - ix)[:, None, None]
        dy = offsets[None, :, None] - (y[rows] - iy)[:, None, None]
        m, ok = _adaptive_moments(data * valid, dx, dy, sigma * sigma, max_iter=max_iter, tol=tol)
        # Moments too large for the stamp are truncated: measure them again on the next larger stamp.
        small_enough = np.maximum(m[:, 0], m[:, 1]) < (h / 3.5) ** 2
        if c + 1 < len(classes):
            promoted[rows[ok & ~small_enough]] = True
        ok &= small_enough
        sxx[rows], syy[rows], sxy[rows] = m[:, 0], m[:, 1], m[:, 2]
        flag[rows] = ~ok
    flag |= too_big
    return sxx, syy, sxy, flag


def _adaptive_moments(data, dx, dy, s2, *, max_iter, tol):
    """Vectorised adaptive moments of stamps ``data`` (n, h, w) with offsets ``dx``, ``dy`` from the centroid.

    Returns ``m`` (n, 3) = (xx, yy, xy) [pixels^2] and a success flag per stamp.
    """
    n = data.shape[0]
    m = np.tile(np.array([s2, s2, 0.0]), (n, 1))
    dxx = dx * dx
    dyy = dy * dy
    dxy = dx * dy
    converged = np.zeros(n, dtype=bool)
    failed = np.zeros(n, dtype=bool)
    for _ in range(max_iter):
        active = ~(converged | failed)
        if not active.any():
            break
        a = np.flatnonzero(active)
        mm = m[a]
        det = mm[:, 0] * mm[:, 1] - mm[:, 2] ** 2
        ixx = (mm[:, 1] / det)[:, None, None]
        iyy = (mm[:, 0] / det)[:, None, None]
        ixy = (-mm[:, 2] / det)[:, None, None]
        axx_, ayy_, axy_ = dxx[a], dyy[a], dxy[a]
        wd = np.exp(-0.5 * ixx * axx_ - 0.5 * iyy * ayy_ - ixy * axy_) * data[a]
        s0 = wd.sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            wxx = (wd * axx_).sum(axis=(1, 2)) / s0
            wyy = (wd * ayy_).sum(axis=(1, 2)) / s0
            wxy = (wd * axy_).sum(axis=(1, 2)) / s0
            wdet = wxx * wyy - wxy**2
            # M_new^-1 = M_w^-1 - M^-1 (exact for Gaussian profiles).
            axx = wyy / wdet - ixx[:, 0, 0]
            ayy = wxx / wdet - iyy[:, 0, 0]
            axy = -wxy / wdet - ixy[:, 0, 0]
            adet = axx * ayy - axy**2
            nxx = ayy / adet
            nyy = axx / adet
            nxy = -axy / adet
        good = (s0 > 0) & (wdet > 0) & (adet > 0) & (axx > 0) & np.isfinite(nxx) & np.isfinite(nyy)
        # Fall back to 2 M_w (the fixed-point update) where the Gaussian update is not positive definite.
        fallback = (s0 > 0) & (wdet > 0) & ~good
        nxx = np.where(good, nxx, 2 * wxx)
        nyy = np.where(good, nyy, 2 * wyy)
        nxy = np.where(good, nxy, 2 * wxy)
        bad = ~(good | fallback) | ~np.isfinite(nxx) | (nxx <= 0) | (nyy <= 0) | (nxx * nyy - nxy**2 <= 0)
        # Keep the weight within the stamp and not below a fraction of a pixel.
        nxx = np.clip(nxx, 0.05, 1e4)
        nyy = np.clip(nyy, 0.05, 1e4)
        scale = np.maximum(np.abs(mm[:, 0]), np.abs(mm[:, 1]))
        change = np.max(np.abs(np.stack([nxx, nyy, nxy], axis=1) - mm), axis=1)
        new = np.stack([nxx, nyy, nxy], axis=1)
        m[a] = np.where(bad[:, None], mm, new)
        failed[a] |= bad
        converged[a] |= ~bad & (change <= tol * scale)
    return m, converged & ~failed


def psf_amplitudes(
    model: np.ndarray, data: np.ndarray, variance: np.ndarray, use: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares amplitudes of PSF images fitted to stamps (PSF photometry), ignoring unusable pixels.

    Parameters
    ----------
    model : `numpy.ndarray`, shape (n, h, w)
        PSF images ``P`` (unit sum) at the sources' positions.
    data, variance : `numpy.ndarray`, shape (n, h, w)
        Stamps of the image [counts] and its variance [counts^2].
    use : `numpy.ndarray` of bool, shape (n, h, w)
        Usable pixels (on the image, finite, unmasked).

    Returns
    -------
    flux, err : `numpy.ndarray`, shape (n,)
        ``sum(P d) / sum(P P)`` and ``sqrt(sum(P^2 V)) / sum(P P)`` over the usable pixels [counts]; not finite
        where no pixel is usable.
    masked_fraction : `numpy.ndarray`, shape (n,)
        Share of the PSF's power ``sum(P P)`` on unusable pixels.
    ptp : `numpy.ndarray`, shape (n,)
        ``sum(P P)`` over the usable pixels.
    """
    p = model * use
    ptp = (p * model).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        flux = (p * data).sum(axis=(1, 2)) / ptp
        err = np.sqrt((p * p * variance).sum(axis=(1, 2))) / ptp
    return flux, err, 1.0 - ptp / (model * model).sum(axis=(1, 2)), ptp


def _psf_fluxes(stamps: _StampCutter, exposure: Exposure, x, y, bad_bits, max_masked):
    """Least-squares amplitude of the PSF image at (x, y) (parent coordinates) for every source."""
    n = len(x)
    flux = np.full(n, np.nan)
    err = np.full(n, np.nan)
    flag = np.ones(n, dtype=bool)
    x0, y0 = exposure.xy0
    models = []
    origins = []
    for k in range(n):
        image, box = exposure.psf.compute_image(float(x[k]), float(y[k]))
        models.append(image)
        origins.append((box.x0 - x0, box.y0 - y0))
    shapes = {m.shape for m in models}
    for shape in shapes:
        rows = np.array([k for k in range(n) if models[k].shape == shape], dtype=np.int64)
        model = np.stack([models[k] for k in rows])
        h, w = shape
        ox = np.array([origins[k][0] for k in rows], dtype=np.int64)
        oy = np.array([origins[k][1] for k in rows], dtype=np.int64)
        data, var, valid, mask = stamps.cut(ox + w // 2, oy + h // 2, w // 2, h // 2, rows=rows)
        use = valid & ((mask & bad_bits) == 0) if bad_bits else valid
        f, e, masked_fraction, ptp = psf_amplitudes(model, data, var, use)
        off_image = ~(valid | ((mask & bad_bits) != 0)).all(axis=(1, 2))
        flux[rows] = f
        err[rows] = e
        flag[rows] = ~np.isfinite(f) | ~np.isfinite(e) | (ptp <= 0) | (masked_fraction > max_masked) | off_image
    return flux, err, flag


def _aperture_fluxes(stamps: _StampCutter, x, y, radii):
    """Fluxes in circles about (x, y) (array coordinates) with exact overlaps; NaN when incomplete."""
    n = len(x)
    k = len(radii)
    flux = np.full((n, k), np.nan)
    err = np.full((n, k), np.nan)
    flag = np.zeros(n, dtype=bool)
    if n == 0 or k == 0:
        return flux, err, flag
    half = int(math.ceil(max(radii))) + 1
    ix = np.floor(x + 0.5).astype(np.int64)
    iy = np.floor(y + 0.5).astype(np.int64)
    data, var, valid, _ = stamps.cut(ix, iy, half, rows=np.arange(n))
    size = 2 * half + 1
    fx = x - ix
    fy = y - iy
    for j, radius in enumerate(radii):
        weights = np.empty((n, size, size))
        for i in range(n):
            # Grid edges relative to the centre: pixel centres at integer offsets minus the sub-pixel shift.
            weights[i] = circular_overlap_grid(
                -half - 0.5 - fx[i], half + 0.5 - fx[i], -half - 0.5 - fy[i], half + 0.5 - fy[i],
                size, size, radius, 1, 1,
            )
        incomplete = ((weights > 0) & ~valid).any(axis=(1, 2))
        f = (weights * data).sum(axis=(1, 2))
        e = np.sqrt((weights * weights * var).sum(axis=(1, 2)))
        flux[:, j] = np.where(incomplete, np.nan, f)
        err[:, j] = np.where(incomplete, np.nan, e)
        flag |= incomplete
    return flux, err, flag


def _footprint_bits(mask: np.ndarray, labels: np.ndarray, row_label: np.ndarray, parent_row: np.ndarray) -> np.ndarray:
    """OR of the mask bits over each source's footprint pixels (its children's too for a deblended parent)."""
    per_label = np.zeros(len(parent_row), dtype=np.int64)
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    if idx.size:
        values = mask.ravel()[idx].astype(np.int64)
        nz = values != 0
        np.bitwise_or.at(per_label, flat[idx][nz], values[nz])
    return _per_row(per_label, row_label, parent_row, np.bitwise_or)


def _centre_bits(mask: np.ndarray, x, y) -> tuple[np.ndarray, np.ndarray]:
    """OR of the mask bits in the 3x3 pixels about (x, y), and whether part of them is off the image."""
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    ny, nx = mask.shape
    ix = np.floor(x + 0.5).astype(np.int64)
    iy = np.floor(y + 0.5).astype(np.int64)
    yy = iy[:, None] + np.array([-1, 0, 1])[None, :]
    xx = ix[:, None] + np.array([-1, 0, 1])[None, :]
    inside = ((yy >= 0) & (yy < ny))[:, :, None] & ((xx >= 0) & (xx < nx))[:, None, :]
    values = mask[np.clip(yy, 0, ny - 1)[:, :, None], np.clip(xx, 0, nx - 1)[:, None, :]].astype(np.int64)
    values = np.where(inside, values, 0)
    return np.bitwise_or.reduce(values.reshape(n, 9), axis=1), ~inside.reshape(n, 9).all(axis=1)


def _sky_coords(exposure: Exposure, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if exposure.wcs is None or len(x) == 0:
        return np.full(len(x), np.nan), np.full(len(x), np.nan)
    ra, dec = exposure.wcs.all_pix2world(x, y, 0)
    return np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64)
