"""Generic instrument signature removal (ISR): raw ADU with overscans -> an assembled image in electrons.

`IsrTask` turns a raw `Exposure` (the pixels of every amplifier including its serial overscan, in raw
pixel coordinates, with a `Detector` describing the amplifiers) into a ``postISRCCD`` exposure:

1. ``doSaturation``: flag raw pixels at or above their amplifier's saturation level [ADU] as ``SAT``
   (optionally grown by a few pixels);
2. ``doOverscan``: fit each amplifier's overscan (median per row, mean per row, a constant, or a
   polynomial along the rows) and subtract it from the amplifier's pixels;
3. ``doAssembleCcd``: trim the overscans and place the amplifiers' data sections into the detector's
   assembled ``bbox`` (see `amplifier_assembled_boxes`);
4. ``doApplyGains``: multiply each amplifier's pixels by its gain -> electrons;
5. ``doDefect``: flag the detector's defects (bad columns) as ``BAD`` (defects the raw formatter already
   marked in the raw mask are carried through assembly);
6. ``doSetVariance``: variance = image [e-] + read_noise**2 [e-**2] per amplifier;
7. ``doInterpolate``: replace ``BAD`` and ``SAT`` pixels by linear interpolation along rows and flag
   them ``INTRP``;
8. ``edgeMaskWidth``: flag a border of pixels ``EDGE`` (none by default).

Each step is a module-level function (`mask_saturated`, `fit_overscan`, `subtract_overscan`,
`assemble_ccd`, `apply_gains`, `mask_defects`, `set_variance_plane`, `interpolate_over_mask`,
`mask_edges`) so instrument-specific ISR tasks can reuse them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from graph import Field, Input, Output, PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct, timeMethod

from .errors import IsrError
from .image import Amplifier, Box2I, Detector, Exposure, Mask, MaskedImage

__all__ = [
    "IsrTask",
    "IsrTaskConfig",
    "IsrTaskConnections",
    "OverscanFitType",
    "amplifier_assembled_boxes",
    "apply_gains",
    "assemble_ccd",
    "fit_overscan",
    "interpolate_over_mask",
    "mask_defects",
    "mask_edges",
    "mask_saturated",
    "set_variance_plane",
    "subtract_overscan",
]

OverscanFitType = Literal["MEDIAN_PER_ROW", "MEAN_PER_ROW", "MEDIAN", "MEANCLIP", "POLY"]
_PER_ROW = ("MEDIAN_PER_ROW", "MEAN_PER_ROW", "POLY")


# Step functions ----------------------------------------------------------------------------------------------


def _sigma_clipped_mean(values: np.ndarray, n_sigma: float, n_iter: int = 3) -> float:
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    keep = np.ones(values.size, dtype=bool)
    for _ in range(n_iter):
        centre = np.median(values[keep])
        sigma = 1.4826 * np.median(np.abs(values[keep] - centre))
        if sigma == 0:
            break
        new = np.abs(values - centre) <= n_sigma * sigma
        if new.sum() == keep.sum() or not new.any():
            break
        keep = new
    return float(np.mean(values[keep]))


def fit_overscan(
    overscan: np.ndarray,
    *,
    fit_type: OverscanFitType = "MEDIAN_PER_ROW",
    order: int = 1,
    n_sigma: float = 3.0,
) -> np.ndarray:
    """Fit the bias level of an amplifier from its serial overscan pixels.

    Parameters
    ----------
    overscan : `numpy.ndarray`, shape (ny, n_columns)
        Overscan pixels [ADU], one row per image row.
    fit_type : `str`, optional
        ``"MEDIAN_PER_ROW"`` (median of each row), ``"MEAN_PER_ROW"`` (mean of each row),
        ``"MEDIAN"`` (one median of all pixels), ``"MEANCLIP"`` (one sigma-clipped mean) or ``"POLY"``
        (a polynomial of degree ``order`` in the row index, fit to the row medians with sigma clipping).
    order : `int`, optional
        Degree of the ``"POLY"`` fit; >= 0.
    n_sigma : `float`, optional
        Clipping threshold [standard deviations] of ``"MEANCLIP"`` and ``"POLY"``.

    Returns
    -------
    model : `numpy.ndarray`, shape (ny,), float64
        The bias level of each row [ADU].

    Raises
    ------
    IsrError
        If the overscan has no pixels, or ``fit_type`` is unknown.
    """
    overscan = np.asarray(overscan, dtype=np.float64)
    if overscan.ndim != 2 or overscan.size == 0:
        raise IsrError(f"cannot fit an overscan of shape {overscan.shape}: it needs at least one row and column.")
    ny = overscan.shape[0]
    if fit_type == "MEDIAN_PER_ROW":
        return np.median(overscan, axis=1)
    if fit_type == "MEAN_PER_ROW":
        return overscan.mean(axis=1)
    if fit_type == "MEDIAN":
        return np.full(ny, float(np.median(overscan)))
    if fit_type == "MEANCLIP":
        return np.full(ny, _sigma_clipped_mean(overscan, n_sigma))
    if fit_type == "POLY":
        rows = np.median(overscan, axis=1)
        y = np.arange(ny, dtype=np.float64)
        keep = np.ones(ny, dtype=bool)
        degree = min(int(order), max(ny - 1, 0))
        for _ in range(3):
            poly = np.polynomial.Polynomial.fit(y[keep], rows[keep], degree)
            resid = rows - poly(y)
            sigma = 1.4826 * np.median(np.abs(resid[keep] - np.median(resid[keep])))
            if sigma == 0:
                break
            new = np.abs(resid) <= n_sigma * sigma
            if new.sum() <= degree or np.array_equal(new, keep):
                break
            keep = new
        return poly(y)
    raise IsrError(
        f"unknown overscan fit type {fit_type!r}; choose one of MEDIAN_PER_ROW, MEAN_PER_ROW, MEDIAN, MEANCLIP, POLY."
    )


def _check_inside(box: Box2I, parent: Box2I, what: str) -> None:
    if not parent.contains(box):
        raise IsrError(
            f"{what} {box} is outside the image {parent}; the raw does not match its Detector "
            "(check the instrument's camera geometry and the raw formatter)."
        )


def subtract_overscan(
    image: np.ndarray,
    image_bbox: Box2I,
    amplifier: Amplifier,
    *,
    fit_type: OverscanFitType = "MEDIAN_PER_ROW",
    order: int = 1,
    n_sigma: float = 3.0,
    skip_leading: int = 0,
    skip_trailing: int = 0,
) -> dict[str, float]:
    """Fit an amplifier's overscan and subtract it, in place, from its data and overscan sections.

    Parameters
    ----------
    image : `numpy.ndarray`, shape (ny, nx), float
        Raw pixels [ADU] covering ``image_bbox``; modified in place.
    image_bbox : `Box2I`
        Parent-coordinate box of ``image`` (the raw bbox).
    amplifier : `Amplifier`
        Its ``bbox`` (data section) and ``overscan_bbox`` are in the same raw coordinates.
    fit_type, order, n_sigma
        As for `fit_overscan`.
    skip_leading, skip_trailing : `int`, optional
        Overscan columns ignored at the start and end (near the data section, charge may leak into the
        first overscan columns).

    Returns
    -------
    stats : `dict` [`str`, `float`]
        ``mean`` (mean bias level [ADU]) and ``sigma`` (robust standard deviation of the overscan
        pixels after subtraction [ADU], i.e. the read noise in ADU).

    Raises
    ------
    IsrError
        If the amplifier has no overscan, a section lies outside the image, fewer than one overscan
        column remains, or the overscan rows do not cover the data rows for a per-row fit.
    """
    if amplifier.overscan_bbox is None or amplifier.overscan_bbox.is_empty:
        raise IsrError(
            f"amplifier {amplifier.name!r} has no overscan section; set doOverscan=False for this camera."
        )
    os_box, data_box = amplifier.overscan_bbox, amplifier.bbox
    _check_inside(os_box, image_bbox, f"overscan section of amplifier {amplifier.name!r}")
    _check_inside(data_box, image_bbox, f"data section of amplifier {amplifier.name!r}")
    cols = Box2I(os_box.x0 + skip_leading, os_box.y0, os_box.width - skip_leading - skip_trailing, os_box.height)
    if cols.width < 1:
        raise IsrError(
            f"amplifier {amplifier.name!r}: skipping {skip_leading}+{skip_trailing} of its {os_box.width} overscan "
            "columns leaves none; lower overscanNumLeadingColumnsToSkip/TrailingColumnsToSkip."
        )
    overscan = image[cols.slices(image_bbox)]
    model = fit_overscan(overscan, fit_type=fit_type, order=order, n_sigma=n_sigma)
    if fit_type in _PER_ROW:
        if not (os_box.y0 <= data_box.y0 and data_box.y1 <= os_box.y1):
            raise IsrError(
                f"amplifier {amplifier.name!r}: overscan rows {os_box.y0}..{os_box.y1 - 1} do not cover data rows "
                f"{data_box.y0}..{data_box.y1 - 1}; use overscanFitType MEDIAN or MEANCLIP."
            )
        data_model = model[data_box.y0 - os_box.y0 : data_box.y1 - os_box.y0]
    else:
        data_model = np.full(data_box.height, model[0])
    image[data_box.slices(image_bbox)] -= data_model[:, np.newaxis]
    image[os_box.slices(image_bbox)] -= model[:, np.newaxis]
    residual = image[cols.slices(image_bbox)]
    sigma = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    return {"mean": float(np.mean(model)), "sigma": sigma}


def mask_saturated(
    image: np.ndarray,
    mask: Mask,
    saturation: float,
    *,
    bbox: Box2I | None = None,
    mask_name: str = "SAT",
    grow: int = 0,
) -> int:
    """Flag pixels at or above a saturation level.

    Parameters
    ----------
    image : `numpy.ndarray`, shape (ny, nx)
        Pixel values in the units of ``saturation`` (raw ADU for an amplifier's saturation).
    mask : `Mask`
        Mask of the same shape and origin as ``image``; the plane is set in place.
    saturation : `float`
        Saturation level; pixels ``>= saturation`` are flagged.  NaN or infinite disables the check.
    bbox : `Box2I`, optional
        Only look inside this parent-coordinate box (an amplifier's data section); default everywhere.
    mask_name : `str`, optional
        Plane to set.
    grow : `int`, optional
        Grow every saturated region by this many pixels (a square structuring element), within ``bbox``.

    Returns
    -------
    n_saturated : `int`
        Number of pixels flagged (after growing).
    """
    if not np.isfinite(saturation):
        return 0
    region = mask.bbox if bbox is None else bbox
    _check_inside(region, mask.bbox, "saturation region")
    slices = region.slices(mask.bbox)
    saturated = np.asarray(image[slices]) >= saturation
    if grow > 0 and saturated.any():
        saturated = ndimage.binary_dilation(saturated, structure=np.ones((2 * grow + 1, 2 * grow + 1), dtype=bool))
    if saturated.any():
        bit = np.int32(1 << mask.add_plane(mask_name))
        mask.array[slices][saturated] |= bit
    return int(saturated.sum())


def amplifier_assembled_boxes(detector: Detector) -> list[Box2I]:
    """Where each amplifier's data section goes in the assembled detector ``bbox``.

    The data sections are taken to form a grid: amplifiers are sorted into columns by the raw x
    position of their data sections and into rows by the raw y position, and the sections are packed
    side by side (no flips) starting at ``detector.bbox.xy0``.

    Parameters
    ----------
    detector : `Detector`
        A detector with amplifiers.

    Returns
    -------
    boxes : `list` [`Box2I`]
        One assembled box per amplifier, in the order of ``detector.amplifiers``.

    Raises
    ------
    IsrError
        If the detector has no amplifiers, the data sections do not form a grid of consistent widths
        and heights, or the assembled grid does not fill ``detector.bbox``.
    """
    amps = detector.amplifiers
    if not amps:
        raise IsrError(
            f"detector {detector.name!r} has no amplifiers, so its raw cannot be assembled; set "
            "doAssembleCcd=False or fix the instrument's camera geometry."
        )
    xs = sorted({a.bbox.x0 for a in amps})
    ys = sorted({a.bbox.y0 for a in amps})
    widths: dict[int, int] = {}
    heights: dict[int, int] = {}
    for amp in amps:
        if widths.setdefault(amp.bbox.x0, amp.bbox.width) != amp.bbox.width or (
            heights.setdefault(amp.bbox.y0, amp.bbox.height) != amp.bbox.height
        ):
            raise IsrError(
                f"detector {detector.name!r}: amplifier data sections do not form a grid (amplifier {amp.name!r} "
                f"has {amp.bbox}); this camera needs its own assembly step."
            )
    x_start = dict(zip(xs, np.concatenate([[0], np.cumsum([widths[x] for x in xs])[:-1]]), strict=True))
    y_start = dict(zip(ys, np.concatenate([[0], np.cumsum([heights[y] for y in ys])[:-1]]), strict=True))
    total = (sum(heights.values()), sum(widths.values()))
    if total != detector.bbox.shape:
        raise IsrError(
            f"detector {detector.name!r}: the amplifier data sections assemble to shape {total} but the detector "
            f"bbox has shape {detector.bbox.shape}; fix the instrument's camera geometry."
        )
    x0, y0 = detector.bbox.xy0
    return [
        Box2I(x0 + int(x_start[a.bbox.x0]), y0 + int(y_start[a.bbox.y0]), a.bbox.width, a.bbox.height) for a in amps
    ]


def assemble_ccd(masked_image: MaskedImage, detector: Detector) -> MaskedImage:
    """Trim the overscans and place each amplifier's data section into the detector's assembled box.

    Parameters
    ----------
    masked_image : `MaskedImage`
        Raw-layout pixels (image, mask and variance), covering every amplifier's data section.
    detector : `Detector`
        Amplifier data sections (raw coordinates) and the assembled ``bbox``.

    Returns
    -------
    assembled : `MaskedImage`
        A new masked image covering ``detector.bbox`` with the same mask planes.

    Raises
    ------
    IsrError
        As `amplifier_assembled_boxes`, or if a data section lies outside ``masked_image``.
    """
    boxes = amplifier_assembled_boxes(detector)
    out = MaskedImage.from_bbox(detector.bbox, planes=dict(masked_image.mask.planes))
    for amp, box in zip(detector.amplifiers, boxes, strict=True):
        _check_inside(amp.bbox, masked_image.bbox, f"data section of amplifier {amp.name!r}")
        src = amp.bbox.slices(masked_image.bbox)
        dst = box.slices(out.bbox)
        out.image[dst] = masked_image.image[src]
        out.mask.array[dst] = masked_image.mask.array[src]
        out.variance[dst] = masked_image.variance[src]
    return out


def apply_gains(image: np.ndarray, image_bbox: Box2I, boxes: Sequence[Box2I], gains: Sequence[float]) -> None:
    """Multiply each amplifier's pixels by its gain, in place: ADU -> electrons.

    Parameters
    ----------
    image : `numpy.ndarray`, shape (ny, nx), float
        Pixels [ADU] covering ``image_bbox``.
    image_bbox : `Box2I`
        Parent-coordinate box of ``image``.
    boxes : sequence of `Box2I`
        Each amplifier's pixels in ``image`` (parent coordinates).
    gains : sequence of `float`
        Gain of each amplifier [e-/ADU], > 0.

    Raises
    ------
    IsrError
        If a gain is not a positive finite number.
    """
    for box, gain in zip(boxes, gains, strict=True):
        if not (np.isfinite(gain) and gain > 0):
            raise IsrError(f"gain {gain!r} of the amplifier at {box} must be a positive number [e-/ADU].")
        image[box.slices(image_bbox)] *= gain


def mask_defects(mask: Mask, defects: Iterable[Box2I], *, mask_name: str = "BAD") -> int:
    """Flag defects (bad columns, hot pixels) given as parent-coordinate boxes.

    Parameters
    ----------
    mask : `Mask`
        Mask to update in place.
    defects : iterable of `Box2I`
        Defect boxes in the mask's (assembled) parent coordinates; parts outside the mask are ignored.
    mask_name : `str`, optional
        Plane to set.

    Returns
    -------
    n_pixels : `int`
        Number of pixels of the mask inside the defect boxes.
    """
    flagged = np.zeros(mask.shape, dtype=bool)
    for defect in defects:
        box = defect.intersection(mask.bbox)
        if not box.is_empty:
            flagged[box.slices(mask.bbox)] = True
    if flagged.any():
        mask.set_plane(mask_name, flagged)
    return int(flagged.sum())


def set_variance_plane(
    masked_image: MaskedImage, *, gain: float, read_noise: float, bbox: Box2I | None = None
) -> None:
    """Set the variance of Poisson noise plus read noise, in place.

    ``variance = max(image, 0) / gain + (read_noise / gain)**2`` in the image's units squared, so with
    ``gain=1`` and an image in electrons the variance is ``image + read_noise**2`` [e-**2].

    Parameters
    ----------
    masked_image : `MaskedImage`
        Image (after overscan subtraction) whose variance is set.
    gain : `float`
        Electrons per image unit: the amplifier gain [e-/ADU] for an image in ADU, 1 for an image in
        electrons.
    read_noise : `float`
        Read noise [e-].
    bbox : `Box2I`, optional
        Only set the variance in this parent-coordinate box (one amplifier); default everywhere.

    Raises
    ------
    IsrError
        If ``gain`` is not positive or ``read_noise`` is negative.
    """
    if not (np.isfinite(gain) and gain > 0) or not (np.isfinite(read_noise) and read_noise >= 0):
        raise IsrError(
            f"cannot set a variance with gain {gain!r} (> 0 needed) and read noise {read_noise!r} (>= 0 needed)."
        )
    region = masked_image.bbox if bbox is None else bbox
    _check_inside(region, masked_image.bbox, "variance region")
    slices = region.slices(masked_image.bbox)
    image = np.asarray(masked_image.image[slices], dtype=np.float64)
    masked_image.variance[slices] = (np.maximum(image, 0.0) / gain + (read_noise / gain) ** 2).astype(np.float32)


def interpolate_over_mask(
    masked_image: MaskedImage, mask_names: Sequence[str], *, interpolated_name: str = "INTRP"
) -> int:
    """Replace masked pixels by linear interpolation along their row, in place.

    Image and variance are interpolated between the nearest unmasked pixels of the same row (constant
    beyond the last one); rows with no unmasked pixel are left unchanged.  Interpolated pixels get the
    ``interpolated_name`` plane; their original planes are kept.

    Parameters
    ----------
    masked_image : `MaskedImage`
        Image to repair.
    mask_names : sequence of `str`
        Planes whose pixels are interpolated (planes the mask does not have are ignored).
    interpolated_name : `str`, optional
        Plane set on the interpolated pixels.

    Returns
    -------
    n_interpolated : `int`
        Number of pixels replaced.
    """
    names = [n for n in mask_names if n in masked_image.mask.planes]
    if not names:
        return 0
    bad = masked_image.mask.get_plane(names)
    rows = np.flatnonzero(bad.any(axis=1) & ~bad.all(axis=1))
    if rows.size == 0:
        return 0
    x = np.arange(bad.shape[1], dtype=np.float64)
    image, variance = masked_image.image, masked_image.variance
    for row in rows:
        b = bad[row]
        image[row, b] = np.interp(x[b], x[~b], image[row, ~b])
        variance[row, b] = np.interp(x[b], x[~b], variance[row, ~b])
    done = np.zeros_like(bad)
    done[rows] = bad[rows]
    masked_image.mask.set_plane(interpolated_name, done)
    return int(done.sum())


def mask_edges(mask: Mask, width: int, *, mask_name: str = "EDGE") -> int:
    """Flag a border ``width`` pixels wide on every side of the mask.

    Returns
    -------
    n_pixels : `int`
        Number of border pixels (0 when ``width <= 0``).
    """
    if width <= 0:
        return 0
    edge = np.ones(mask.shape, dtype=bool)
    edge[width:-width, width:-width] = False
    mask.set_plane(mask_name, edge)
    return int(edge.sum())


# The task ------------------------------------------------------------------------------------------------------

_EXPOSURE_DIMENSIONS = ("instrument", "exposure", "detector")


class IsrTaskConnections(PipelineTaskConnections, dimensions=_EXPOSURE_DIMENSIONS):
    ccdExposure = Input(  # noqa: N815 - the LSST stack's name
        name="raw",
        storageClass="ExposureF",
        dimensions=_EXPOSURE_DIMENSIONS,
        doc="Raw pixels of one detector [ADU], overscans included, with its Detector (amplifiers).",
    )
    exposure = Output(
        name="postISRCCD",
        storageClass="ExposureF",
        dimensions=_EXPOSURE_DIMENSIONS,
        doc="Overscan-corrected, assembled exposure in electrons with SAT/BAD masks and a variance plane.",
    )


class IsrTaskConfig(PipelineTaskConfig, pipelineConnections=IsrTaskConnections):
    """Configuration of `IsrTask` (field names as in the LSST stack's ``IsrTaskConfig``)."""

    doSaturation: bool = Field(True, description="Flag raw pixels >= their amplifier's saturation level [ADU].")
    saturatedMaskName: str = Field("SAT", description="Mask plane of saturated pixels.")
    growSaturationFootprintSize: int = Field(1, ge=0, description="Grow saturated regions by this many pixels.")
    doOverscan: bool = Field(True, description="Fit and subtract each amplifier's overscan.")
    overscanFitType: OverscanFitType = Field(
        "MEDIAN_PER_ROW",
        description="Overscan model: MEDIAN_PER_ROW, MEAN_PER_ROW, MEDIAN, MEANCLIP (one constant) or POLY "
        "(polynomial along the rows).",
    )
    overscanOrder: int = Field(1, ge=0, le=10, description="Degree of the POLY overscan fit.")
    overscanNumSigmaClip: float = Field(3.0, gt=0, description="Clipping threshold of MEANCLIP and POLY fits.")
    overscanNumLeadingColumnsToSkip: int = Field(0, ge=0, description="Overscan columns ignored next to the data.")
    overscanNumTrailingColumnsToSkip: int = Field(0, ge=0, description="Overscan columns ignored at the far end.")
    doAssembleCcd: bool = Field(True, description="Trim overscans and assemble the amplifiers into the detector bbox.")
    doApplyGains: bool = Field(True, description="Multiply by each amplifier's gain: output in electrons.")
    doDefect: bool = Field(True, description="Flag the detector's defects (bad columns) in the BAD plane.")
    defectMaskName: str = Field("BAD", description="Mask plane of defects.")
    doSetVariance: bool = Field(True, description="Set variance = image + read_noise**2 (per amplifier).")
    doInterpolate: bool = Field(True, description="Interpolate over the maskListToInterpolate planes along rows.")
    maskListToInterpolate: list[str] = Field(
        default_factory=lambda: ["BAD", "SAT"], description="Mask planes interpolated over (flagged INTRP)."
    )
    edgeMaskWidth: int = Field(0, ge=0, description="Width of the border flagged EDGE [pixels]; 0 = none.")

    def validate(self) -> None:
        super().validate()
        if self.doApplyGains and not self.doOverscan:
            # Gains multiply the bias level too; the result would be meaningless.
            raise ValueError("doApplyGains=True needs doOverscan=True (the bias must be removed before gains).")


class IsrTask(PipelineTask):
    """Generic ISR: overscan, assembly, gains, saturation and defect masks, variance (see module docs).

    Raw input: an `Exposure` whose bbox is the raw layout (``detector.raw_bbox``), pixel values in ADU,
    with ``detector`` listing the amplifiers; defects already known to the raw formatter may be set in
    the raw's ``BAD`` plane.  Output: an `Exposure` over ``detector.bbox`` in electrons with the raw's
    WCS, visit info, filter and metadata (``BUNIT = 'electron'``).

    Metadata: ``overscanMean.<amp>`` and ``overscanSigma.<amp>`` [ADU], ``nSaturated``, ``nBad``,
    ``nInterpolated`` [pixels].
    """

    ConfigClass = IsrTaskConfig
    _DefaultName = "isr"

    @timeMethod
    def run(self, ccdExposure: Exposure, *, defects: Iterable[Box2I] | None = None) -> Struct:  # noqa: N803
        """Remove the instrument signature of one raw.

        Parameters
        ----------
        ccdExposure : `Exposure`
            The raw [ADU]; not modified.
        defects : iterable of `Box2I`, optional
            Extra defects in assembled (output) pixel coordinates, flagged ``BAD`` with ``doDefect``.

        Returns
        -------
        result : `Struct`
            ``exposure``: the processed `Exposure` (float32, electrons when ``doApplyGains``).

        Raises
        ------
        IsrError
            If the raw has no detector or amplifiers where a step needs them, or its layout does not
            match the detector.
        """
        config = self.config
        detector = ccdExposure.detector
        needs_amps = config.doOverscan or config.doAssembleCcd or config.doApplyGains or config.doSaturation
        if detector is None or (needs_amps and not detector.amplifiers):
            raise IsrError(
                "the raw exposure has no Detector with amplifiers; the instrument's raw formatter must attach the "
                "camera geometry (or disable doOverscan, doAssembleCcd, doApplyGains and doSaturation)."
            )
        work = ccdExposure.masked_image.copy()
        raw_bbox = work.bbox
        image = work.image.astype(np.float64)

        n_saturated = 0
        if config.doSaturation:
            for amp in detector.amplifiers:
                _check_inside(amp.bbox, raw_bbox, f"data section of amplifier {amp.name!r}")
                n_saturated += mask_saturated(
                    image, work.mask, amp.saturation, bbox=amp.bbox, mask_name=config.saturatedMaskName,
                    grow=config.growSaturationFootprintSize,
                )
        if config.doOverscan:
            for amp in detector.amplifiers:
                stats = subtract_overscan(
                    image, raw_bbox, amp, fit_type=config.overscanFitType, order=config.overscanOrder,
                    n_sigma=config.overscanNumSigmaClip, skip_leading=config.overscanNumLeadingColumnsToSkip,
                    skip_trailing=config.overscanNumTrailingColumnsToSkip,
                )
                self.metadata[f"overscanMean.{amp.name}"] = stats["mean"]
                self.metadata[f"overscanSigma.{amp.name}"] = stats["sigma"]
        work.image[...] = image

        if config.doAssembleCcd:
            out = assemble_ccd(work, detector)
            amp_boxes = amplifier_assembled_boxes(detector)
        else:
            out = work
            amp_boxes = [amp.bbox for amp in detector.amplifiers]

        image = out.image.astype(np.float64)
        if config.doApplyGains:
            apply_gains(image, out.bbox, amp_boxes, [amp.gain for amp in detector.amplifiers])
        out.image[...] = image

        n_bad = 0
        if config.doDefect:
            mask_defects(out.mask, defects or (), mask_name=config.defectMaskName)
            if config.defectMaskName in out.mask.planes:
                n_bad = int(out.mask.get_plane(config.defectMaskName).sum())
        if config.doSetVariance:
            for amp, box in zip(detector.amplifiers, amp_boxes, strict=True):
                gain = 1.0 if config.doApplyGains else amp.gain
                set_variance_plane(out, gain=gain, read_noise=amp.read_noise, bbox=box)
        n_interpolated = 0
        if config.doInterpolate:
            n_interpolated = interpolate_over_mask(out, config.maskListToInterpolate)
        mask_edges(out.mask, config.edgeMaskWidth)

        self.metadata["nSaturated"] = n_saturated
        self.metadata["nBad"] = n_bad
        self.metadata["nInterpolated"] = n_interpolated
        self.log.info(
            "ISR of detector %s: %d saturated, %d bad, %d interpolated pixels", detector.name, n_saturated, n_bad,
            n_interpolated,
        )
        metadata = ccdExposure.metadata.copy()
        metadata["BUNIT"] = ("electron" if config.doApplyGains else "adu", "Unit of the pixel values")
        exposure = Exposure(
            out,
            wcs=None if ccdExposure.wcs is None else ccdExposure.wcs.deepcopy(),
            psf=ccdExposure.psf,
            photo_calib=ccdExposure.photo_calib,
            visit_info=ccdExposure.visit_info,
            detector=detector,
            filter=ccdExposure.filter,
            metadata=metadata,
        )
        return Struct(exposure=exposure)
