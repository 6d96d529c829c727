"""Sky background estimation and subtraction: `SubtractBackgroundTask`.

The task divides the exposure into bins of ``binSize`` pixels, computes a sigma-clipped statistic of the
unmasked pixels of each bin, interpolates the bin values into a smooth `Background` and subtracts it from the
exposure in place.  Bins with too few usable pixels are filled from their neighbours (as `Background.fit` does).

The clipping is vectorised over all bins at once and never sorts the full bins: the starting centre and width
are the median and interquartile width of a subsample of each bin (at most 1024 pixels per bin),
then ``nIter`` passes clip every pixel about the running clipped mean (afw's ``MEANCLIP`` recipe).  This is
about five times faster than `Background.fit` on a 2048x1489 frame and gives the same values to a small
fraction of the per-bin noise.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from graph import Config, Field, Struct, Task, timeMethod

from .errors import NoUsableBinsError
from .image import Background, BackgroundList, Exposure, MaskedImage
from .image.background import _MIN_USABLE_FRACTION, _MIN_USABLE_PIXELS, _fill_bins

__all__ = ["SubtractBackgroundConfig", "SubtractBackgroundTask", "fit_background_fast"]

_START_SAMPLE = 1024
"""Maximum number of pixels per bin used for the starting median and interquartile range."""
_SUBSAMPLE = 4096
"""Maximum number of pixels per bin used for the ``median`` statistic."""

_IQR_TO_SIGMA = 0.741301  # sigma of a Gaussian / its interquartile range


def fit_background_fast(
    masked_image: MaskedImage,
    *,
    bin_size: int | tuple[int, int] = 128,
    bad_mask_planes: tuple[str, ...] | list[str] = ("BAD", "SAT", "NO_DATA", "DETECTED", "EDGE"),
    statistic: str = "meanclip",
    clip: float = 3.0,
    n_iter: int = 3,
    interpolation: str = "spline",
) -> tuple[Background, float]:
    """Fit a binned, sigma-clipped background (vectorised over bins, no full sort).

    Parameters
    ----------
    masked_image : `MaskedImage`
        Image to model [counts]; NaN pixels are ignored.
    bin_size : `int` or `tuple` [`int`, `int`], optional
        Bin size (by, bx) [pixels].
    bad_mask_planes : sequence of `str`, optional
        Mask planes whose pixels are ignored; planes the mask does not define are skipped.
    statistic : `str`, optional
        ``"meanclip"`` (clipped mean) or ``"median"`` (median of the clipped pixels of a subsample of at most
        4096 pixels per bin).
    clip : `float`, optional
        Clipping threshold [standard deviations].
    n_iter : `int`, optional
        Number of clipping passes over all pixels (>= 1).
    interpolation : `str`, optional
        Interpolation style of the returned `Background` (see `tasks.image.background.INTERPOLATIONS`).

    Returns
    -------
    background : `Background`
        ``values`` [counts], ``counts`` (pixels kept per bin; 0 for bins filled from neighbours) and
        ``variances`` (variance of each bin value [counts^2]).
    pixel_rms : `float`
        Median over usable bins of the clipped standard deviation of the pixels [counts].

    Raises
    ------
    NoUsableBinsError
        If fewer than 4 bins (or, on an image with fewer than 4 bins, not every bin) are usable.
    """
    if isinstance(bin_size, (int, np.integer)):
        by, bx = int(bin_size), int(bin_size)
    else:
        by, bx = (int(v) for v in bin_size)
    bbox = masked_image.bbox
    ny, nx = masked_image.shape
    ny_b, nx_b = -(-ny // by), -(-nx // bx)
    data = np.full((ny_b * by, nx_b * bx), np.nan, dtype=np.float32)
    data[:ny, :nx] = masked_image.image
    data[:ny, :nx][masked_image.mask.get_plane(bad_mask_planes, missing_ok=True)] = np.nan
    blocks = data.reshape(ny_b, by, nx_b, bx).transpose(0, 2, 1, 3).reshape(ny_b, nx_b, by * bx)
    valid = np.isfinite(blocks)
    n_valid = valid.sum(axis=2)

    # Starting centre and width from a subsample: median and interquartile range.
    step = max(1, (by * bx) // _START_SAMPLE)
    q25, centre, q75 = _sorted_quantiles(blocks[:, :, ::step], (0.25, 0.5, 0.75))
    width = _IQR_TO_SIGMA * (q75 - q25)
    centre = np.where(np.isfinite(centre), centre, 0.0).astype(np.float32)
    width = np.where(np.isfinite(width) & (width > 0), width, np.inf).astype(np.float32)

    filled = np.where(valid, blocks, np.float32(0.0))
    keep = valid
    count = n_valid
    mean = centre.astype(np.float64)
    var = np.zeros_like(mean)
    for _ in range(max(int(n_iter), 1)):
        dev = filled - centre[..., None]
        keep = valid & (np.abs(dev) <= (clip * width)[..., None])
        count = keep.sum(axis=2)
        dev = np.where(keep, dev, np.float32(0.0))
        s1 = dev.sum(axis=2, dtype=np.float64)
        s2 = np.einsum("ijk,ijk->ij", dev, dev, dtype=np.float64)
        safe = np.maximum(count, 1)
        mean_dev = s1 / safe
        var = np.maximum(s2 / safe - mean_dev**2, 0.0) * safe / np.maximum(count - 1, 1)
        mean = centre + mean_dev
        centre = mean.astype(np.float32)
        width = np.where(var > 0, np.sqrt(var), np.inf).astype(np.float32)

    if statistic == "median":
        step = max(1, (by * bx) // _SUBSAMPLE)
        (values,) = _sorted_quantiles(np.where(keep[:, :, ::step], blocks[:, :, ::step], np.nan), (0.5,))
        n_sub = keep[:, :, ::step].sum(axis=2)
        stat_var = var * (np.pi / 2.0) / np.maximum(n_sub, 1)
    elif statistic == "meanclip":
        values = mean
        stat_var = var / np.maximum(count, 1)
    else:
        raise ValueError(f"unknown background statistic {statistic!r}; choose meanclip or median.")

    bin_h = np.minimum(by, ny - by * np.arange(ny_b))
    bin_w = np.minimum(bx, nx - bx * np.arange(nx_b))
    n_pix = bin_h[:, None] * bin_w[None, :]
    usable = (count >= np.maximum(_MIN_USABLE_PIXELS, _MIN_USABLE_FRACTION * n_pix)) & np.isfinite(values)
    n_required = min(4, ny_b * nx_b)
    n_usable = int(usable.sum())
    if n_usable < n_required:
        raise NoUsableBinsError(
            f"only {n_usable} of {ny_b * nx_b} background bins of {by}x{bx} pixels have enough unmasked pixels "
            f"(need {n_required}; masked planes: {', '.join(p for p in bad_mask_planes if p in masked_image.mask.planes) or 'none'}). Use a smaller binSize or fewer "
            "ignoredPixelMask planes."
        )
    pixel_rms = float(np.median(np.sqrt(var[usable])))
    counts = count.astype(np.float64)
    if not usable.all():
        values = _fill_bins(np.where(usable, values, np.nan), usable)
        counts = np.where(usable, counts, 0.0)
        stat_var = np.where(usable, stat_var, np.nan)
    background = Background(
        bbox, (by, bx), values, counts=counts, variances=stat_var, interpolation=interpolation
    )
    return background, pixel_rms


def _sorted_quantiles(samples: np.ndarray, quantiles: tuple[float, ...]) -> list[np.ndarray]:
    """Quantiles along the last axis ignoring NaN (linear interpolation); NaN where a row has no value."""
    ordered = np.sort(samples, axis=-1)  # NaN sort last
    n = np.isfinite(ordered).sum(axis=-1)
    out = []
    for q in quantiles:
        pos = q * np.maximum(n - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
        a = np.take_along_axis(ordered, lo[..., None], axis=-1)[..., 0].astype(np.float64)
        b = np.take_along_axis(ordered, hi[..., None], axis=-1)[..., 0].astype(np.float64)
        out.append(np.where(n > 0, a + (pos - lo) * (b - a), np.nan))
    return out


class SubtractBackgroundConfig(Config):
    """Configuration of `SubtractBackgroundTask` (names as in the LSST stack's ``SubtractBackgroundConfig``)."""

    binSize: int = Field(128, ge=8, description="Side of a square background bin [pixels].")
    statistic: Literal["meanclip", "median"] = Field(
        "meanclip", description="Per-bin statistic of the unmasked pixels after sigma clipping."
    )
    clip: float = Field(3.0, gt=0, description="Clipping threshold [standard deviations].")
    nIter: int = Field(3, ge=1, le=20, description="Number of sigma-clipping passes.")
    interpolation: Literal["constant", "linear", "spline", "akima"] = Field(
        "spline",
        description="Interpolation of the bin values to pixels: cubic spline (akima avoids overshoots near "
        "steps but is 2.5 times slower to evaluate).",
    )
    ignoredPixelMask: list[str] = Field(
        default_factory=lambda: ["BAD", "SAT", "NO_DATA", "DETECTED", "EDGE"],
        description="Mask planes whose pixels are not used to estimate the background.",
    )


class SubtractBackgroundTask(Task):
    """Fit a smooth background to an exposure and subtract it in place.

    Metadata: ``bgMean`` (mean of the subtracted model [counts]), ``bgRms`` (median over bins of the clipped
    pixel standard deviation [counts]: the sky noise).
    """

    ConfigClass = SubtractBackgroundConfig
    _DefaultName = "subtractBackground"

    def fit(self, masked_image: MaskedImage) -> tuple[Background, float]:
        """Fit the background model of a masked image without subtracting it.

        Returns
        -------
        background : `Background`
            The model.
        pixel_rms : `float`
            Clipped pixel standard deviation [counts].
        """
        config = self.config
        return fit_background_fast(
            masked_image,
            bin_size=config.binSize,
            bad_mask_planes=tuple(config.ignoredPixelMask),
            statistic=config.statistic,
            clip=config.clip,
            n_iter=config.nIter,
            interpolation=config.interpolation,
        )

    @timeMethod
    def run(self, exposure: Exposure, background: BackgroundList | None = None) -> Struct:
        """Fit a background to ``exposure``, subtract it in place, and append it to a copy of ``background``.

        Parameters
        ----------
        exposure : `Exposure`
            Exposure [counts]; its image is modified in place (variance and mask are unchanged).
        background : `BackgroundList`, optional
            Models already subtracted from ``exposure``; not modified.

        Returns
        -------
        result : `Struct`
            ``background``: a new `BackgroundList` with the given models followed by the new one.

        Raises
        ------
        NoUsableBinsError
            If too few bins have unmasked pixels (e.g. a nearly all-masked exposure).
        """
        model, pixel_rms = self.fit(exposure.masked_image)
        image = model.get_image()
        exposure.image[...] -= image
        result = BackgroundList(background or ())
        result.append(model)
        self.metadata["bgMean"] = float(image.mean())
        self.metadata["bgRms"] = pixel_rms
        self.log.debug("Subtracted a background of mean %.3f (sky rms %.3f)", image.mean(), pixel_rms)
        return Struct(background=result)
