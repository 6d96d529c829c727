"""Source detection: `SourceDetectionTask` and the `FootprintSet` it returns.

Detection follows the LSST stack's ``SourceDetectionTask``:

1. smooth the (background-subtracted) image with a circular Gaussian of the PSF's sigma (the matched filter
   for point sources);
2. threshold the smoothed image at ``thresholdValue`` times its noise: the square root of the median variance
   times the noise reduction of the smoothing kernel, ``sqrt(sum(kernel**2))``; pixels closer to the image
   border than the kernel's half-width are never above threshold and are flagged ``EDGE``;
3. label 8-connected pixels above threshold (`scipy.ndimage.label`) and drop groups of fewer than
   ``minPixels`` pixels;
4. grow every footprint by ``nSigmaToGrow`` PSF sigmas (footprints that touch after growing are merged) and set
   ``DETECTED`` (``DETECTED_NEGATIVE`` for negative footprints) on their pixels;
5. optionally re-estimate the background with the new detections masked and subtract it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from astropy.table import Table
from scipy import ndimage

from graph import Config, ConfigurableField, Field, Struct, Task, timeMethod

from .background import SubtractBackgroundTask
from .errors import ImageError
from .image import Box2I, Exposure

__all__ = [
    "FootprintSet",
    "SourceDetectionConfig",
    "SourceDetectionTask",
    "gaussian_kernel_1d",
    "psf_sigma",
    "smooth_gaussian",
]

_EIGHT = np.ones((3, 3), dtype=bool)


def psf_sigma(exposure: Exposure, *, default: float | None = None) -> float:
    """Gaussian sigma of the exposure's PSF at the centre of the exposure [pixels].

    The sigma is the determinant radius ``(ixx iyy - ixy^2)^(1/4)`` of the PSF's adaptive second moments.

    Parameters
    ----------
    exposure : `Exposure`
        Exposure whose PSF is used.
    default : `float`, optional
        Returned when the exposure has no PSF.

    Raises
    ------
    ImageError
        If the exposure has no PSF and no default is given, or the PSF's sigma is not finite and positive.
    """
    if exposure.psf is None:
        if default is None:
            raise ImageError("the exposure has no PSF: install one (e.g. a GaussianPsf) or pass sigma=... [pixels].")
        return float(default)
    x, y = exposure.bbox.center
    sigma = exposure.psf.determinant_radius(x, y)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ImageError(f"the exposure's PSF has sigma {sigma} pixels at ({x}, {y}); it cannot be used to smooth.")
    return float(sigma)


def gaussian_kernel_1d(sigma: float, *, n_sigma: float = 4.0) -> np.ndarray:
    """A unit-sum Gaussian sampled at integer offsets ``-h..h`` with ``h = ceil(n_sigma * sigma)``."""
    half = max(1, int(math.ceil(n_sigma * sigma)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def smooth_gaussian(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate an image with a separable symmetric kernel, zero outside the image.

    Parameters
    ----------
    image : `numpy.ndarray`, shape (ny, nx)
        Pixels (NaN-free).
    kernel : `numpy.ndarray`, shape (2h + 1,)
        Symmetric 1-D kernel applied along y and then x (e.g. `gaussian_kernel_1d`).

    Returns
    -------
    smoothed : `numpy.ndarray`, shape (ny, nx), float32
    """
    image = np.asarray(image, dtype=np.float32)
    kernel = np.asarray(kernel, dtype=np.float32)
    h = len(kernel) // 2
    ny = image.shape[0]
    # Along y: symmetric shifted sums (numpy is faster than correlate1d across rows), then along x.
    padded = np.pad(image, ((h, h), (0, 0)))
    out = image * kernel[h]
    tmp = np.empty_like(out)
    for j in range(1, h + 1):
        np.add(padded[h - j : h - j + ny], padded[h + j : h + j + ny], out=tmp)
        tmp *= kernel[h + j]
        out += tmp
    ndimage.correlate1d(out, kernel, axis=1, mode="constant", output=out)
    return out


@dataclass
class FootprintSet:
    """Labelled footprints over a pixel box.

    Attributes
    ----------
    labels : `numpy.ndarray`, shape ``bbox.shape``, int32
        Footprint id of every pixel, indexed [y, x]; 0 where there is no footprint.
    bbox : `Box2I`
        Parent-coordinate box of ``labels``.
    ids : `numpy.ndarray` of int64, shape (n,)
        Footprint ids (the label values), in increasing order.
    bboxes : `list` [`Box2I`]
        Parent-coordinate bounding box of each footprint, in the order of ``ids``.
    peaks : `astropy.table.Table`
        One row per footprint (order of ``ids``): ``x``, ``y`` (int64, parent pixel of the highest
        significance), ``value`` (the smoothed image there, in counts; positive for negative footprints too).
    is_negative : `numpy.ndarray` of bool, shape (n,)
        True for footprints of negative sources.
    """

    labels: np.ndarray
    bbox: Box2I
    ids: np.ndarray
    bboxes: list[Box2I]
    peaks: Table
    is_negative: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    _npix: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def npix(self) -> np.ndarray:
        """Number of pixels of each footprint, int64 array in the order of ``ids``."""
        if self._npix is not None and len(self._npix) == len(self.ids):
            return self._npix
        if len(self.ids) == 0:
            return np.zeros(0, dtype=np.int64)
        flat = self.labels.ravel()
        counts = np.bincount(flat[np.flatnonzero(flat)], minlength=int(self.ids.max()) + 1)
        return counts[self.ids].astype(np.int64)

    def index(self, footprint_id: int) -> int:
        """Position of a footprint id in ``ids``.

        Raises
        ------
        KeyError
            If there is no such footprint.
        """
        i = int(np.searchsorted(self.ids, footprint_id))
        if i >= len(self.ids) or self.ids[i] != footprint_id:
            raise KeyError(f"no footprint with id {footprint_id}; ids run from {self.ids[:1]} to {self.ids[-1:]}.")
        return i

    def footprint_mask(self, footprint_id: int) -> tuple[np.ndarray, Box2I]:
        """Boolean mask of one footprint over its bounding box.

        Returns
        -------
        mask : `numpy.ndarray` of bool, shape ``box.shape``
        box : `Box2I`
            The footprint's parent-coordinate bounding box.
        """
        box = self.bboxes[self.index(footprint_id)]
        return self.labels[box.slices(self.bbox)] == footprint_id, box

    @classmethod
    def empty(cls, bbox: Box2I) -> FootprintSet:
        """A set with no footprint over ``bbox``."""
        return cls(
            labels=np.zeros(bbox.shape, dtype=np.int32),
            bbox=bbox,
            ids=np.zeros(0, dtype=np.int64),
            bboxes=[],
            peaks=Table({"x": np.zeros(0, np.int64), "y": np.zeros(0, np.int64), "value": np.zeros(0)}),
            is_negative=np.zeros(0, dtype=bool),
        )

    @classmethod
    def from_labels(
        cls, labels: np.ndarray, bbox: Box2I, peaks: Table, is_negative: np.ndarray | None = None
    ) -> FootprintSet:
        """Build a set from a label image; ids are the positive labels present, bboxes come from the labels.

        Parameters
        ----------
        labels : `numpy.ndarray` of int, shape ``bbox.shape``
            Label image (0 = no footprint); labels need not be consecutive.
        bbox : `Box2I`
            Parent-coordinate box of ``labels``.
        peaks : `astropy.table.Table`
            ``x``, ``y``, ``value`` per footprint in increasing label order.
        is_negative : `numpy.ndarray` of bool, optional
            Per footprint; default all False.
        """
        labels = np.asarray(labels, dtype=np.int32)
        slices = ndimage.find_objects(labels)
        ids = np.array([i + 1 for i, s in enumerate(slices) if s is not None], dtype=np.int64)
        bboxes = [
            Box2I(bbox.x0 + s[1].start, bbox.y0 + s[0].start, s[1].stop - s[1].start, s[0].stop - s[0].start)
            for s in slices
            if s is not None
        ]
        if is_negative is None:
            is_negative = np.zeros(len(ids), dtype=bool)
        if len(peaks) != len(ids) or len(is_negative) != len(ids):
            raise ImageError(f"{len(ids)} footprints but {len(peaks)} peaks and {len(is_negative)} polarity flags.")
        return cls(labels, bbox, ids, bboxes, peaks, np.asarray(is_negative, dtype=bool))


class SourceDetectionConfig(Config):
    """Configuration of `SourceDetectionTask` (names as in the LSST stack's ``SourceDetectionConfig``)."""

    thresholdValue: float = Field(5.0, gt=0, description="Detection threshold, in units of thresholdType.")
    thresholdType: Literal["stdev", "value"] = Field(
        "stdev",
        description="stdev: thresholdValue times the noise of the smoothed image (from the median variance); "
        "value: an absolute threshold on the smoothed image [counts].",
    )
    thresholdPolarity: Literal["positive", "negative", "both"] = Field(
        "positive", description="Detect sources above (positive), below (negative) the background, or both."
    )
    minPixels: int = Field(5, ge=1, description="Minimum number of pixels above threshold in a footprint.")
    nSigmaToGrow: float = Field(
        2.4, ge=0, description="Grow footprints by this many PSF sigmas [pixels = nSigmaToGrow * sigma, rounded]."
    )
    edgeMaskName: str = Field("EDGE", description="Mask plane set on the border where the smoothing is incomplete.")
    reEstimateBackground: bool = Field(
        True, description="Fit and subtract a background again with the new detections masked."
    )
    background: SubtractBackgroundTask.ConfigClass = ConfigurableField(
        target=SubtractBackgroundTask, doc="Background re-estimation (reEstimateBackground)."
    )
    badMaskPlanes: list[str] = Field(
        default_factory=lambda: ["NO_DATA"], description="Pixels never detected (set to 0 before smoothing)."
    )


class SourceDetectionTask(Task):
    """Detect sources as connected pixels above a threshold in the PSF-smoothed image.

    Metadata: ``nGrow`` [pixels], ``sigma`` (smoothing sigma [pixels]), ``threshold`` (on the smoothed image
    [counts]), ``noise`` (noise of the smoothed image [counts]), ``numPos``, ``numNeg``.
    """

    ConfigClass = SourceDetectionConfig
    _DefaultName = "sourceDetection"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.makeSubtask("background")

    @timeMethod
    def run(self, exposure: Exposure, *, doSmooth: bool = True, sigma: float | None = None) -> Struct:  # noqa: N803
        """Detect sources on a background-subtracted exposure; set DETECTED / DETECTED_NEGATIVE.

        Parameters
        ----------
        exposure : `Exposure`
            Background-subtracted exposure [counts]; its mask is updated (``DETECTED``, ``DETECTED_NEGATIVE``
            cleared and set, ``EDGE`` set on the border) and, with ``reEstimateBackground``, its image.
        doSmooth : `bool`, optional
            Smooth with a Gaussian before thresholding (False: threshold the pixels as they are).
        sigma : `float`, optional
            Gaussian sigma [pixels] used when the exposure has no PSF (and to override the PSF's sigma).

        Returns
        -------
        result : `Struct`
            ``sources``: `astropy.table.Table` (``id``, ``parent`` = 0, ``centroid_x``, ``centroid_y`` = peak
            pixel [parent pixels], ``footprint_npix``, ``peak_value`` [counts, smoothed image, signed],
            ``is_negative``); ``footprints``: `FootprintSet` (ids equal the source ids); ``numPos``,
            ``numNeg``; ``background``: `BackgroundList` of the re-estimated background (or None).

        Raises
        ------
        ImageError
            If ``doSmooth`` and the exposure has neither a PSF nor a ``sigma``.
        """
        config = self.config
        sigma = float(sigma) if sigma is not None else psf_sigma(exposure, default=None if doSmooth else 1.0)
        if not sigma > 0:
            raise ImageError(f"the smoothing sigma must be > 0 pixels, got {sigma}.")
        mask = exposure.mask
        names = ("DETECTED", "DETECTED_NEGATIVE", config.edgeMaskName)
        bits = {name: np.int32(1 << mask.add_plane(name)) for name in names}
        mask_array = mask.array
        mask_array &= ~(bits["DETECTED"] | bits["DETECTED_NEGATIVE"])

        image = exposure.image
        bad = mask.get_plane(config.badMaskPlanes, missing_ok=True)
        if not np.isfinite(image.sum(dtype=np.float64)):
            bad |= ~np.isfinite(image)
        if not bad.any():
            bad = None
        data = image if bad is None else np.where(bad, np.float32(0.0), image)

        if doSmooth:
            kernel = gaussian_kernel_1d(sigma)
            smoothed = smooth_gaussian(data, kernel)
            noise_factor = float(np.sum(kernel**2))  # sqrt(sum k2d^2) = sum k1d^2 for a separable kernel
            border = len(kernel) // 2
        else:
            smoothed = np.asarray(data, dtype=np.float32)
            noise_factor = 1.0
            border = 0
        if border:
            for sl in _border_slices(border):
                mask_array[sl] |= bits[config.edgeMaskName]

        noise = self._noise(exposure, bad, border) * noise_factor
        if config.thresholdType == "stdev":
            threshold = config.thresholdValue * noise
        else:
            threshold = config.thresholdValue
        n_grow = int(round(config.nSigmaToGrow * sigma))

        ny, nx = image.shape
        polarities = {"positive": (1,), "negative": (-1,), "both": (1, -1)}[config.thresholdPolarity]
        labels = None
        pixel_sets, peak_sets = [], []
        for sign in polarities:
            above = (smoothed > threshold) if sign > 0 else (smoothed < -threshold)
            for sl in _border_slices(border):
                above[sl] = False
            if bad is not None:
                above &= ~bad
            found = _footprints(above, smoothed if sign > 0 else -smoothed, config.minPixels, n_grow)
            grown_labels, grown_idx, grown_lab, px, py, pv = found
            if len(px) == 0:
                continue
            gy, gx = np.divmod(grown_idx, nx)
            mask_array[gy, gx] |= bits["DETECTED" if sign > 0 else "DETECTED_NEGATIVE"]
            offset = sum(len(p[0]) for p in peak_sets)
            if labels is None:
                labels = grown_labels
            else:  # a later (negative) footprint only gets the pixels no earlier footprint has
                free = labels[gy, gx] == 0
                labels[gy[free], gx[free]] = grown_lab[free].astype(np.int32) + offset
            pixel_sets.append(grown_idx)
            peak_sets.append((px, py, pv, np.full(len(px), sign < 0)))

        x0, y0 = exposure.xy0
        if labels is None:
            footprints = FootprintSet.empty(exposure.bbox)
        else:
            px, py, pv, neg = (np.concatenate(parts) for parts in zip(*peak_sets, strict=True))
            idx = pixel_sets[0] if len(pixel_sets) == 1 else np.unique(np.concatenate(pixel_sets))
            lab = labels.ravel()[idx]
            n_all = len(px)
            npix = np.bincount(lab, minlength=n_all + 1)[1:]
            keep = npix > 0
            if not keep.all():  # negative footprints entirely covered by positive ones
                remap = np.zeros(n_all + 1, dtype=np.int32)
                remap[1:][keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
                labels = remap[labels]
                lab = remap[lab]
                px, py, pv, neg, npix = px[keep], py[keep], pv[keep], neg[keep], npix[keep]
            bboxes = _label_bboxes(idx, lab, len(px), nx, exposure.xy0)
            peaks = Table({"x": px + x0, "y": py + y0, "value": pv})
            footprints = FootprintSet(
                labels, exposure.bbox, np.arange(1, len(px) + 1, dtype=np.int64), bboxes, peaks, neg
            )
            footprints._npix = npix.astype(np.int64)
        num_pos = int((~footprints.is_negative).sum())
        num_neg = int(footprints.is_negative.sum())

        signed_value = np.where(footprints.is_negative, -1.0, 1.0) * np.asarray(footprints.peaks["value"], float)
        sources = Table(
            {
                "id": footprints.ids.astype(np.int64),
                "parent": np.zeros(len(footprints), dtype=np.int64),
                "centroid_x": np.asarray(footprints.peaks["x"], dtype=np.float64),
                "centroid_y": np.asarray(footprints.peaks["y"], dtype=np.float64),
                "footprint_npix": footprints.npix,
                "peak_value": signed_value,
                "is_negative": footprints.is_negative.copy(),
            }
        )
        sources["centroid_x"].unit = sources["centroid_y"].unit = "pix"

        background = None
        if config.reEstimateBackground:
            background = self.background.run(exposure).background

        self.metadata["sigma"] = sigma
        self.metadata["nGrow"] = n_grow
        self.metadata["noise"] = float(noise)
        self.metadata["threshold"] = float(threshold)
        self.metadata["numPos"] = num_pos
        self.metadata["numNeg"] = num_neg
        self.log.info(
            "Detected %d positive and %d negative sources above %.2f %s (smoothing sigma %.2f px)",
            num_pos, num_neg, config.thresholdValue, config.thresholdType, sigma,
        )
        return Struct(
            sources=sources, footprints=footprints, numPos=num_pos, numNeg=num_neg, background=background
        )

    def _noise(self, exposure: Exposure, bad: np.ndarray | None, border: int) -> float:
        """Per-pixel noise [counts]: sqrt of the median variance of the pixels away from the border and bad pixels.

        Falls back to the interquartile width of the image when the variance plane is not set.
        """
        ny, nx = exposure.shape
        step = max(1, int(math.sqrt(ny * nx / 250_000)))  # a few 1e5 pixels are plenty for a median
        sub_valid = np.ones(((ny + step - 1) // step, (nx + step - 1) // step), dtype=bool)
        if bad is not None:
            sub_valid &= ~bad[::step, ::step]
        if border and ny > 2 * border and nx > 2 * border:
            rows = np.arange(0, ny, step)
            cols = np.arange(0, nx, step)
            sub_valid &= ((rows >= border) & (rows < ny - border))[:, None]
            sub_valid &= ((cols >= border) & (cols < nx - border))[None, :]
        variance = exposure.variance[::step, ::step][sub_valid]
        positive = variance[np.isfinite(variance) & (variance > 0)]
        if positive.size > 0.5 * max(variance.size, 1):
            return float(np.sqrt(np.median(positive)))
        values = exposure.image[::step, ::step][sub_valid]
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ImageError("the exposure has no valid pixel to estimate the noise of; is it all NO_DATA/NaN?")
        q25, q75 = np.percentile(values, [25.0, 75.0])
        return float(0.741301 * (q75 - q25))


def _footprints(
    above: np.ndarray, significance: np.ndarray, min_pixels: int, n_grow: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Label pixels above threshold, drop small groups, grow and merge, and find each footprint's peak.

    Returns
    -------
    labels : `numpy.ndarray` of int32
        Grown footprints labelled 1..n (array coordinates), 0 elsewhere.
    grown_idx : `numpy.ndarray` of int64
        Flat indices of the footprint pixels (increasing).
    grown_lab : `numpy.ndarray` of int32
        Their labels.
    peak_x, peak_y : `numpy.ndarray` of int64
        Array coordinates of each footprint's highest ``significance`` pixel (before growing).
    peak_value : `numpy.ndarray` of float64
        ``significance`` at the peak.
    """
    empty = np.zeros(0, dtype=np.int64)
    raw, n_raw = ndimage.label(above, structure=_EIGHT)
    if n_raw == 0:
        return raw, empty, empty.astype(np.int32), empty, empty, np.zeros(0)
    flat = np.flatnonzero(above)
    raw_lab = raw.ravel()[flat]
    sizes = np.bincount(raw_lab, minlength=n_raw + 1)
    core_idx = flat[sizes[raw_lab] >= min_pixels]
    if core_idx.size == 0:
        return np.zeros_like(raw), empty, empty.astype(np.int32), empty, empty, np.zeros(0)
    core = np.zeros(above.shape, dtype=bool)
    core.ravel()[core_idx] = True
    grown = _grow(core, n_grow, core_idx)
    labels, n = ndimage.label(grown, structure=_EIGHT)
    grown_idx = np.flatnonzero(grown)
    grown_lab = labels.ravel()[grown_idx]
    # The highest-significance core pixel of every grown footprint: sort the core pixels by (label, -value).
    core_lab = labels.ravel()[core_idx]
    values = significance.ravel()[core_idx]
    order = np.lexsort((-values, core_lab))
    first = order[np.r_[True, core_lab[order][1:] != core_lab[order][:-1]]]
    py, px = np.divmod(core_idx[first], above.shape[1])
    return (
        labels.astype(np.int32, copy=False), grown_idx, grown_lab, px.astype(np.int64), py.astype(np.int64),
        values[first].astype(np.float64),
    )


def _border_slices(border: int) -> list[tuple[slice, slice]]:
    """Slices of the ``border``-pixel frame of an image (empty for ``border <= 0``)."""
    if border <= 0:
        return []
    return [
        (slice(0, border), slice(None)),
        (slice(-border, None), slice(None)),
        (slice(None), slice(0, border)),
        (slice(None), slice(-border, None)),
    ]


def _label_bboxes(idx: np.ndarray, lab: np.ndarray, n: int, nx: int, xy0: tuple[int, int]) -> list[Box2I]:
    """Parent-coordinate bounding boxes of labels 1..n from the flat indices of their pixels."""
    ys, xs = np.divmod(idx, nx)
    order = np.argsort(lab, kind="stable")
    lab_sorted = lab[order]
    starts = np.searchsorted(lab_sorted, np.arange(1, n + 1))
    ymin = np.minimum.reduceat(ys[order], starts)
    ymax = np.maximum.reduceat(ys[order], starts)
    xmin = np.minimum.reduceat(xs[order], starts)
    xmax = np.maximum.reduceat(xs[order], starts)
    x0, y0 = xy0
    return [
        Box2I(int(a) + x0, int(b) + y0, int(c - a) + 1, int(d - b) + 1)
        for a, b, c, d in zip(xmin, ymin, xmax, ymax, strict=True)
    ]


def _grow(core: np.ndarray, n_grow: int, core_idx: np.ndarray | None = None) -> np.ndarray:
    """Dilate a boolean mask by a digital disk of radius ``n_grow`` pixels (``dx^2 + dy^2 <= n_grow^2``).

    Only the boundary pixels of ``core`` are stamped with the disk's offsets (cheap for sparse detections);
    dense masks fall back to `scipy.ndimage.binary_dilation`.  ``core_idx`` (the flat indices of ``core``)
    saves a pass over the image when known.
    """
    if n_grow <= 0:
        return core.copy()
    r = int(n_grow)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = dx * dx + dy * dy <= r * r
    ny, nx = core.shape
    if core_idx is None:
        core_idx = np.flatnonzero(core)
    by, bx = np.divmod(core_idx, nx)
    # Boundary pixels: a 4-neighbour is outside the mask (or the image).
    flat = core.ravel()
    interior = (by > 0) & (by < ny - 1) & (bx > 0) & (bx < nx - 1)
    ci = core_idx[interior]
    inner = flat[ci - 1] & flat[ci + 1] & flat[ci - nx] & flat[ci + nx]
    boundary = np.ones(core_idx.size, dtype=bool)
    boundary[np.flatnonzero(interior)[inner]] = False
    by, bx = by[boundary], bx[boundary]
    n_offsets = int(disk.sum())
    if by.size * n_offsets > core.size // 2:
        return ndimage.binary_dilation(core, structure=disk)
    out = core.copy()
    oy, ox = dy[disk], dx[disk]
    yy = (by[:, None] + oy[None, :]).ravel()
    xx = (bx[:, None] + ox[None, :]).ravel()
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    out[yy[inside], xx[inside]] = True
    return out
