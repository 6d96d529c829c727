"""Detect and measure sources on a PSF-matched difference image: `DetectAndMeasureTask`.

A difference image (science minus PSF-matched template, `tasks.subtract`) holds *positive* sources
(brighter in the science image: transients, brightened variables) and *negative* ones (fainter), and
*dipoles*: a positive and a negative lobe side by side, left by a source that moved or by a small
misregistration or PSF mismatch.  This task, after ``lsst.ip.diffim.DetectAndMeasureTask``,

1. detects positive and negative footprints above ``detection.thresholdValue`` times the noise
   (``detection``, `tasks.detection.SourceDetectionTask` with ``thresholdPolarity="both"``); the noise comes
   from the difference's variance plane, which is right after decorrelation, and ``DETECTED`` /
   ``DETECTED_NEGATIVE`` are set on the difference's mask;
2. deblends (``doDeblend``, ``deblend``, `tasks.deblend.SourceDeblendTask` with ``doNegative``) every footprint
   of either sign that holds several significant peaks of the same sign, e.g. a transient next to a variable
   star, and keeps the children in place of their parent (as ``lsst.ip.diffim`` does);
3. measures every detection ("lobe") on the difference (``measurement``,
   `tasks.measurement.SingleFrameMeasurementTask`) with the difference's PSF.  Every pixel of the two mask
   planes belongs to one lobe at most (pixels detected with both polarities go to the nearer peak), so the
   neighbour replacement of the measurement removes the opposite lobe of a dipole.  Fluxes are *signed*: a
   negative source has a negative ``psfFlux`` (and aperture fluxes).  The children of one deblended footprint
   are then fitted jointly (``isBlended``): the sum of one PSF per child, positions and amplitudes free, the
   group PSF fitting of DAOPHOT (Stetson 1987, PASP 99, 191), so that a child's PSF flux and centroid do not
   include the wings of its siblings (the segments split only the pixels, not the light); a child that
   becomes a lobe of a dipole takes the dipole fit's values;
4. merges (``doMerge``) a positive and a negative lobe into one dipole when their measured centroids are
   closer than ``dipoleMaxSeparation`` PSF FWHMs (the peaks of the PSF-smoothed image would be pushed apart by
   the overlap of the lobes) and their footprints touch after growing both by ``growFootprint`` pixels
   (closest pairs first, each lobe in one dipole at most), and fits the dipole: the sum of a positive
   and a negative PSF whose positions and amplitudes are fitted jointly (Levenberg-Marquardt, unweighted
   least squares as the PSF fluxes), which undoes the overlap of the two lobes;
5. measures forced PSF fluxes at each source's position on the science image and the PSF-matched template
   (``doForcedMeasurement``; ``scienceFlux``, ``templateFlux``), useful for vetting;
6. drops the sources with any of ``badSourceFlags`` set, and records how many of the remaining sources lie
   within ``matchRadius`` of a science source (`tasks.psf_match.count_false_positives`).

Output columns (``diaSources``; positions in parent pixels, fluxes in counts of the difference image):

``id``, ``parent`` (0), ``centroid_x``, ``centroid_y``, ``centroid_xErr``, ``centroid_yErr``,
``centroid_flag``, ``coord_ra``, ``coord_dec`` [deg, the difference's WCS], ``psfFlux``, ``psfFluxErr``,
``psfFlux_flag``, ``snr`` (``psfFlux / psfFluxErr``, signed), ``apFlux_<r>`` and ``apFlux_<r>Err``, ``apFlux_flag``,
``shape_xx``, ``shape_yy``, ``shape_xy``, ``shape_flag``, ``footprint_npix``, ``peak_value``, ``is_negative``,
``isDipole``, ``dipolePosFlux``, ``dipolePosFluxErr``, ``dipoleNegFlux``, ``dipoleNegFluxErr``,
``dipoleLength`` [pixels], ``dipoleAngle`` [deg], ``dipoleFit_flag``, ``isBlended``, ``blendFit_flag``,
``flag_edge``, ``flag_saturated``, ``flag_interpolated``, ``flag_cr``, ``flag_bad``, ``scienceFlux``, ``scienceFluxErr``, ``scienceFlux_flag``,
``templateFlux``, ``templateFluxErr``, ``templateFlux_flag``.

A dipole's row has its centroid at the midpoint of the fitted lobes, ``psfFlux`` = the net flux
``dipolePosFlux + dipoleNegFlux``, ``is_negative`` False, the lobes' pixel flags OR-ed, and no shape or
aperture fluxes (NaN, ``shape_flag`` and ``apFlux_flag`` set).  A blended source's ``psfFlux``, ``psfFluxErr``
and centroid come from the joint fit of its blend (its own segment's measurement when ``blendFit_flag``); its
shape and aperture fluxes are measured on its segment and include the light of its siblings' wings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.table import Table
from scipy import ndimage
from scipy.spatial import cKDTree

from graph import (
    ConfigurableField,
    Field,
    Input,
    Output,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    Struct,
    timeMethod,
)

from .deblend import SourceDeblendConfig, SourceDeblendTask
from .detection import FootprintSet, SourceDetectionConfig, SourceDetectionTask
from .errors import ImageError
from .image import Box2I, Exposure
from .measurement import SingleFrameMeasurementConfig, SingleFrameMeasurementTask, _col, _sky_coords, psf_amplitudes
from .psf_match import count_false_positives

if TYPE_CHECKING:
    from .characterize import ExposureIdInfo

__all__ = ["DetectAndMeasureConfig", "DetectAndMeasureConnections", "DetectAndMeasureTask", "forced_psf_flux"]

_DIMENSIONS = ("instrument", "visit", "detector")
_EIGHT = np.ones((3, 3), dtype=bool)
_PIXEL_FLAGS = ("flag_edge", "flag_saturated", "flag_interpolated", "flag_cr", "flag_bad")
_FLAG_COLUMNS = (
    *_PIXEL_FLAGS, "centroid_flag", "psfFlux_flag", "apFlux_flag", "shape_flag", "dipoleFit_flag", "blendFit_flag",
    "scienceFlux_flag", "templateFlux_flag",
)
_FD_STEP = 0.05  # [pixels] step of the central differences of the PSF in the joint fits


class DetectAndMeasureConnections(PipelineTaskConnections, dimensions=_DIMENSIONS):
    science = Input(
        name="calexp",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="Science exposure the difference was made from (forced scienceFlux).",
    )
    matchedTemplate = Input(  # noqa: N815 - the LSST stack's name
        name="matchedTemplate",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="Template warped to the science exposure and PSF-matched to it (forced templateFlux).",
    )
    difference = Input(
        name="difference",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="Decorrelated difference image (science - matchedTemplate) with its PSF and variance.",
    )
    sources = Input(
        name="src",
        storageClass="ArrowAstropy",
        dimensions=_DIMENSIONS,
        doc="Sources of the science exposure; DIA sources near them are counted (NFalsePositivesSrcAssociated).",
    )
    diaSources = Output(  # noqa: N815
        name="diaSrc",
        storageClass="ArrowAstropy",
        dimensions=_DIMENSIONS,
        doc="Sources detected and measured on the difference image (positive, negative and dipoles).",
    )
    subtractedMeasuredExposure = Output(  # noqa: N815
        name="subtractedMeasuredExposure",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="The difference image with the DETECTED and DETECTED_NEGATIVE mask planes set.",
    )


class DetectAndMeasureConfig(PipelineTaskConfig, pipelineConnections=DetectAndMeasureConnections):
    """Configuration of `DetectAndMeasureTask`."""

    detection: SourceDetectionConfig = ConfigurableField(
        target=SourceDetectionTask,
        doc="Detect positive and negative sources on the difference (thresholdPolarity 'both', 5 sigma, no "
        "background re-estimation).",
    )
    doDeblend: bool = Field(  # noqa: N815
        True, description="Deblend footprints with several peaks of one sign and fit their children jointly."
    )
    deblend: SourceDeblendConfig = ConfigurableField(
        target=SourceDeblendTask,
        doc="Split blended footprints of both signs (doDeblend; doNegative is set).",
    )
    measurement: SingleFrameMeasurementConfig = ConfigurableField(
        target=SingleFrameMeasurementTask,
        doc="Measure every detection on the difference; its psfFluxBadMaskPlanes and psfFluxMaxMaskedFraction "
        "also rule the dipole fit and the forced science/template fluxes.",
    )
    doMerge: bool = Field(  # noqa: N815
        True, description="Merge nearby positive and negative detections that touch into dipoles."
    )
    growFootprint: int = Field(  # noqa: N815
        2, ge=0,
        description="Grow the positive and negative footprints by this many pixels (square) before testing "
        "whether they touch (doMerge).",
    )
    dipoleMaxSeparation: float = Field(  # noqa: N815
        2.0, gt=0,
        description="Largest distance between the measured centroids of the lobes of a dipole, in units of the "
        "difference PSF's FWHM at the image centre.",
    )
    dipoleFitMaxIter: int = Field(  # noqa: N815
        30, ge=1, description="Maximum number of Levenberg-Marquardt iterations of a dipole fit."
    )
    doForcedMeasurement: bool = Field(  # noqa: N815
        True,
        description="Measure forced PSF fluxes at the DIA source positions on the science exposure "
        "(scienceFlux) and the matched template (templateFlux).",
    )
    matchRadius: float = Field(  # noqa: N815
        3.0, gt=0,
        description="Radius [pixels] within which a DIA source counts as associated with a science source "
        "(NFalsePositives* metadata).",
    )
    badSourceFlags: list[str] = Field(  # noqa: N815
        default_factory=lambda: ["flag_edge"],
        description="DIA sources with any of these flag columns set are dropped from the catalogue; choose "
        f"among {', '.join(_FLAG_COLUMNS)}.",
    )

    def setDefaults(self) -> None:
        super().setDefaults()
        self.detection.thresholdPolarity = "both"
        self.detection.thresholdValue = 5.0
        self.detection.reEstimateBackground = False
        self.deblend.doNegative = True

    def validate(self) -> None:
        super().validate()
        unknown = [name for name in self.badSourceFlags if name not in _FLAG_COLUMNS]
        if unknown:
            raise ValueError(
                f"badSourceFlags {unknown} are not flag columns of diaSrc; choose among {', '.join(_FLAG_COLUMNS)}."
            )


class DetectAndMeasureTask(PipelineTask):
    """Detect and measure positive, negative and dipole sources on a difference image (see the module docstring).

    Subtasks: ``detection``, ``deblend``, ``measurement``.

    Metadata: ``numPositive``, ``numNegative``, ``numDipoles`` (rows of the output of each kind),
    ``numDiaSources`` (their sum), ``numBadDiaSources`` (dropped by ``badSourceFlags``),
    ``numDipoleFitFailed`` (dipoles whose fit failed, ``dipoleFit_flag``), ``numBlended`` (rows of deblended
    sources, ``isBlended``), ``numBlendFitFailed`` (of them, ``blendFit_flag``), and the counts of
    `tasks.psf_match.count_false_positives` over the output rows: ``NFalsePositivesTotal``,
    ``NFalsePositivesRefAssociated`` (0: no reference catalogue is used), ``NFalsePositivesSrcAssociated``,
    ``NFalsePositivesUnassociated``.
    """

    ConfigClass = DetectAndMeasureConfig
    _DefaultName = "detectAndMeasure"

    def __init__(self, *, config: Any = None, **kwargs: Any):
        super().__init__(config=config, **kwargs)
        self.makeSubtask("detection")
        self.makeSubtask("deblend")
        self.makeSubtask("measurement")

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:  # noqa: N802,N803
        """Read the inputs, detect and measure with source ids unique to the visit and detector, write the outputs."""
        from .characterize import ExposureIdInfo

        inputs = butlerQC.get(inputRefs)
        inputs["exposureIdInfo"] = ExposureIdInfo.from_data_id(butlerQC.quantum.data_id)
        outputs = self.run(**inputs)
        butlerQC.put(outputs, outputRefs)

    @timeMethod
    def run(
        self,
        science: Exposure,
        matchedTemplate: Exposure,  # noqa: N803
        difference: Exposure,
        sources: Table | None = None,
        *,
        exposureIdInfo: ExposureIdInfo | None = None,  # noqa: N803
    ) -> Struct:
        """Detect and measure the sources of a difference image.

        Parameters
        ----------
        science : `Exposure`
            Science exposure [counts] on the difference's pixel grid, with a PSF (for ``scienceFlux``).
        matchedTemplate : `Exposure`
            PSF-matched template [counts] on the same grid, with a PSF (for ``templateFlux``).
        difference : `Exposure`
            Difference image ``science - matchedTemplate`` [counts] with a correct variance plane and a PSF.
            Its mask is updated in place (``DETECTED``, ``DETECTED_NEGATIVE``, ``EDGE``).
        sources : `astropy.table.Table`, optional
            Science sources (``centroid_x``, ``centroid_y`` [parent pixels]) for the false-positive counts.
        exposureIdInfo : `ExposureIdInfo`, optional
            Id of the exposure; without it, DIA source ids are 1..N (not unique across exposures).

        Returns
        -------
        result : `Struct`
            ``diaSources`` (`astropy.table.Table`, one row per DIA source, columns in the module docstring;
            ``meta["exposure_id"]`` with ``exposureIdInfo``) and ``subtractedMeasuredExposure`` (the
            ``difference`` itself, with its detection mask planes).

        Raises
        ------
        ImageError
            If the difference has no PSF.
        """
        config = self.config
        if difference.psf is None:
            raise ImageError(
                "the difference image has no PSF; DetectAndMeasureTask needs one to detect and measure "
                "(the subtraction sets it to the science PSF)."
            )
        detections = self.detection.run(difference)
        lobes, footprints, regions = _lobe_footprints(difference, detections.sources)
        blend = np.zeros(len(lobes), dtype=np.int64)
        if config.doDeblend and len(lobes):
            lobes, footprints, blend = self._deblend(difference, lobes, footprints)
            regions["region"] = _peak_components(lobes, regions, difference.xy0)
        measured = self.measurement.run(difference, lobes, footprints)

        fwhm = difference.psf.fwhm(*difference.bbox.center)
        bad_planes = self.measurement.config.psfFluxBadMaskPlanes
        bad_bits = difference.mask.get_plane_bitmask(bad_planes, missing_ok=True)
        max_shift = max(config.dipoleMaxSeparation * fwhm, 2.0)
        _fit_blends(difference, measured, _blend_groups(blend), bad_bits=bad_bits, max_iter=config.dipoleFitMaxIter,
                    max_shift=max_shift)
        measured["isBlended"] = blend > 0
        pos_rows = neg_rows = np.zeros(0, dtype=np.int64)
        if config.doMerge and len(lobes):
            pos_rows, neg_rows = _pair_dipoles(
                measured, regions, max_separation=config.dipoleMaxSeparation * fwhm, grow=config.growFootprint
            )
        fits = _fit_dipoles(
            difference, measured, pos_rows, neg_rows, bad_bits=bad_bits, max_iter=config.dipoleFitMaxIter,
            max_shift=max_shift,
        )
        catalog = _merge_dipoles(measured, pos_rows, neg_rows, fits, difference)

        if config.doForcedMeasurement:
            max_masked = self.measurement.config.psfFluxMaxMaskedFraction
            x = np.asarray(catalog["centroid_x"], dtype=np.float64)
            y = np.asarray(catalog["centroid_y"], dtype=np.float64)
            for prefix, exposure in (("science", science), ("template", matchedTemplate)):
                flux, err, flag = forced_psf_flux(exposure, x, y, bad_planes=bad_planes, max_masked=max_masked)
                _col(catalog, f"{prefix}Flux", flux, "ct", f"Forced PSF flux on the {prefix} image at the DIA "
                     "source position [counts]")
                _col(catalog, f"{prefix}FluxErr", err, "ct", f"1-sigma error of {prefix}Flux")
                catalog[f"{prefix}Flux_flag"] = flag
        else:
            for prefix in ("science", "template"):
                _col(catalog, f"{prefix}Flux", np.full(len(catalog), np.nan), "ct", "Not measured")
                _col(catalog, f"{prefix}FluxErr", np.full(len(catalog), np.nan), "ct", "Not measured")
                catalog[f"{prefix}Flux_flag"] = np.ones(len(catalog), dtype=bool)

        bad = np.zeros(len(catalog), dtype=bool)
        for name in config.badSourceFlags:
            bad |= np.asarray(catalog[name], dtype=bool)
        catalog = catalog[~bad]
        catalog["id"] = np.arange(1, len(catalog) + 1, dtype=np.int64)
        if exposureIdInfo is not None:
            if len(catalog):
                catalog["id"] = exposureIdInfo.make_source_ids(np.asarray(catalog["id"]))
            catalog.meta["exposure_id"] = int(exposureIdInfo.expId)

        is_dipole = np.asarray(catalog["isDipole"], dtype=bool)
        negative = np.asarray(catalog["is_negative"], dtype=bool)
        num = {
            "numPositive": int((~is_dipole & ~negative).sum()),
            "numNegative": int((~is_dipole & negative).sum()),
            "numDipoles": int(is_dipole.sum()),
        }
        for key, value in num.items():
            self.metadata[key] = value
        self.metadata["numDiaSources"] = len(catalog)
        self.metadata["numBadDiaSources"] = int(bad.sum())
        self.metadata["numDipoleFitFailed"] = int(np.asarray(catalog["dipoleFit_flag"])[is_dipole].sum())
        self.metadata["numBlended"] = int(np.asarray(catalog["isBlended"]).sum())
        self.metadata["numBlendFitFailed"] = int(np.asarray(catalog["blendFit_flag"]).sum())
        sources_xy = None
        if sources is not None:
            sources_xy = (np.asarray(sources["centroid_x"], float), np.asarray(sources["centroid_y"], float))
        counts = count_false_positives(
            np.asarray(catalog["centroid_x"], float), np.asarray(catalog["centroid_y"], float), sources_xy, None,
            match_radius=config.matchRadius,
        )
        for key, value in counts.items():
            self.metadata[key] = int(value)
        self.log.info(
            "Detected %d DIA sources: %d positive, %d negative, %d dipoles (%d dropped by badSourceFlags)",
            len(catalog), num["numPositive"], num["numNegative"], num["numDipoles"], int(bad.sum()),
        )
        return Struct(diaSources=catalog, subtractedMeasuredExposure=difference)

    def _deblend(
        self, difference: Exposure, lobes: Table, footprints: FootprintSet
    ) -> tuple[Table, FootprintSet, np.ndarray]:
        """Split blended lobes into children, which replace their parent (with ``parent`` = 0).

        Returns the new lobes (unsplit lobes, then children), their footprints, and for each row the id of the
        footprint it was deblended from (0 for an unsplit lobe).
        """
        deblended = self.deblend.run(difference, lobes, footprints)
        rows = deblended.sources
        keep = np.asarray(rows["deblend_nChild"]) == 0
        blend = np.asarray(rows["parent"], dtype=np.int64)[keep]
        rows = rows[keep]
        rows["parent"] = 0
        rows.remove_column("deblend_nChild")
        return rows, deblended.footprints, blend


def forced_psf_flux(
    exposure: Exposure, x: np.ndarray, y: np.ndarray, *, bad_planes: list[str], max_masked: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares amplitudes of the exposure's PSF at fixed positions (forced PSF photometry).

    The amplitude is ``sum(P d) / sum(P P)`` over the PSF image ``P`` (unit sum, at the position) and the
    pixels ``d`` that are on the image, finite and free of ``bad_planes``, with the error
    ``sqrt(sum(P^2 V)) / sum(P P)`` from the variance plane ``V``, as `SingleFrameMeasurementTask` measures
    ``psfFlux``.

    Parameters
    ----------
    exposure : `Exposure`
        Exposure [counts] with a PSF; not modified.
    x, y : `numpy.ndarray`, shape (n,)
        Parent pixel coordinates of the sources.
    bad_planes : `list` [`str`]
        Mask planes whose pixels are left out of the fit (planes missing from the mask are ignored).
    max_masked : `float`
        Flag a flux when left-out pixels carry more than this fraction of the PSF's power ``sum(P P)``.

    Returns
    -------
    flux, err : `numpy.ndarray`, shape (n,), float64
        Fluxes and 1-sigma errors [counts]; NaN when not measurable.
    flag : `numpy.ndarray` of bool, shape (n,)
        True when the flux is not measurable (no PSF, no valid pixel) or too much of the PSF is masked.
    """
    n = len(x)
    flux = np.full(n, np.nan)
    err = np.full(n, np.nan)
    flag = np.ones(n, dtype=bool)
    if exposure.psf is None or n == 0:
        return flux, err, flag
    models, origins = [], []
    for xi, yi in zip(x, y, strict=True):
        image, box = exposure.psf.compute_image(float(xi), float(yi))
        models.append(image)
        origins.append((box.x0, box.y0))
    origins_arr = np.array(origins, dtype=np.int64)
    bad_bits = exposure.mask.get_plane_bitmask(bad_planes, missing_ok=True)
    for shape in {m.shape for m in models}:
        rows = np.array([k for k in range(n) if models[k].shape == shape], dtype=np.int64)
        model = np.stack([models[k] for k in rows])
        data, var, use = _cut(exposure, origins_arr[rows, 0], origins_arr[rows, 1], shape, bad_bits)
        f, e, masked, ptp = psf_amplitudes(model, data, var, use)
        ok = np.isfinite(f) & np.isfinite(e) & (ptp > 0)
        flux[rows] = np.where(ok, f, np.nan)
        err[rows] = np.where(ok, e, np.nan)
        flag[rows] = ~ok | (masked > max_masked)
    return flux, err, flag


# Footprints and dipole pairs ------------------------------------------------------------------------------------


def _lobe_footprints(difference: Exposure, detected: Table) -> tuple[Table, FootprintSet, dict[str, Any]]:
    """Footprints of the detections in which every detected pixel belongs to exactly one detection.

    The ``DETECTED`` and ``DETECTED_NEGATIVE`` planes are labelled (8-connected; each component is one grown
    detection footprint); a pixel in both planes goes to the nearer of the two peaks.

    Returns
    -------
    lobes : `astropy.table.Table`
        The detections (``detected`` with ``footprint_npix`` counted on the new footprints).
    footprints : `FootprintSet`
        Label ``k`` is the footprint of row ``k - 1`` of ``lobes``.
    regions : `dict`
        ``pos``, ``neg``: the label images of the two planes; ``region``: the component of each row's
        polarity that holds its peak; ``slices``: `scipy.ndimage.find_objects` of both label images.
    """
    mask = difference.mask
    x0, y0 = difference.xy0
    n = len(detected)
    px = np.asarray(detected["centroid_x"], dtype=np.int64) - x0
    py = np.asarray(detected["centroid_y"], dtype=np.int64) - y0
    negative = np.asarray(detected["is_negative"], dtype=bool)
    pos_lab, n_pos = ndimage.label(mask.get_plane("DETECTED"), structure=_EIGHT)
    neg_lab, n_neg = ndimage.label(mask.get_plane("DETECTED_NEGATIVE"), structure=_EIGHT)
    regions = {"pos": pos_lab, "neg": neg_lab}
    region = _peak_components(detected, regions, difference.xy0)
    # Source number (1..n) of each component of each polarity (0: a component without a peak).
    pos_src = np.zeros(n_pos + 1, dtype=np.int64)
    neg_src = np.zeros(n_neg + 1, dtype=np.int64)
    numbers = np.arange(1, n + 1, dtype=np.int64)
    pos_src[region[~negative]] = numbers[~negative]
    neg_src[region[negative]] = numbers[negative]
    label_pos = pos_src[pos_lab]
    label_neg = neg_src[neg_lab]
    labels = np.where(label_pos > 0, label_pos, label_neg)
    both = (label_pos > 0) & (label_neg > 0)
    if both.any():
        by, bx = np.nonzero(both)
        lp = label_pos[by, bx] - 1
        ln = label_neg[by, bx] - 1
        d_pos = (bx - px[lp]) ** 2 + (by - py[lp]) ** 2
        d_neg = (bx - px[ln]) ** 2 + (by - py[ln]) ** 2
        labels[by, bx] = np.where(d_neg < d_pos, ln + 1, lp + 1)
    labels = labels.astype(np.int32)
    lobes = detected.copy()
    lobes["footprint_npix"] = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
    peaks = Table({"x": px + x0, "y": py + y0, "value": np.abs(np.asarray(detected["peak_value"], float))})
    footprints = FootprintSet.from_labels(labels, difference.bbox, peaks, negative)
    regions["region"] = region
    regions["slices"] = {"pos": ndimage.find_objects(pos_lab), "neg": ndimage.find_objects(neg_lab)}
    return lobes, footprints, regions


def _peak_components(rows: Table, regions: dict[str, Any], xy0: tuple[int, int]) -> np.ndarray:
    """Label of the component of each row's detection plane (``regions["pos"]`` or ``["neg"]``) holding its peak.

    ``rows`` have ``centroid_x``, ``centroid_y`` (the peak pixel, before measurement) and ``is_negative``.

    Raises
    ------
    ImageError
        If a peak lies outside its plane (the mask was changed after detection).
    """
    px = np.asarray(rows["centroid_x"], dtype=np.int64) - xy0[0]
    py = np.asarray(rows["centroid_y"], dtype=np.int64) - xy0[1]
    negative = np.asarray(rows["is_negative"], dtype=bool)
    region = np.where(negative, regions["neg"][py, px], regions["pos"][py, px]).astype(np.int64)
    if (region == 0).any():
        raise ImageError(
            "a detection peak lies outside the DETECTED/DETECTED_NEGATIVE mask planes; was the mask changed after "
            "detection?"
        )
    return region


def _pair_dipoles(
    lobes: Table, regions: dict[str, Any], *, max_separation: float, grow: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the positive and negative lobes of each dipole (closest pairs first).

    ``lobes`` are the measured lobes (``centroid_x``, ``centroid_y``, ``is_negative``).  A pair qualifies when
    its centroids are at most ``max_separation`` pixels apart and the two footprints
    (the full components of the detection planes) touch once both are grown by ``grow`` pixels: their
    Chebyshev distance is at most ``2 grow + 1``.
    """
    negative = np.asarray(lobes["is_negative"], dtype=bool)
    pos_rows = np.flatnonzero(~negative)
    neg_rows = np.flatnonzero(negative)
    empty = np.zeros(0, dtype=np.int64)
    if pos_rows.size == 0 or neg_rows.size == 0:
        return empty, empty
    xy = np.column_stack([np.asarray(lobes["centroid_x"], float), np.asarray(lobes["centroid_y"], float)])
    distances = cKDTree(xy[pos_rows]).sparse_distance_matrix(
        cKDTree(xy[neg_rows]), max_separation, output_type="ndarray"
    )
    order = np.lexsort((distances["j"], distances["i"], distances["v"]))
    reach = 2 * int(grow) + 1
    structure = np.ones((2 * reach + 1, 2 * reach + 1), dtype=bool)
    pos_lab, neg_lab = regions["pos"], regions["neg"]
    region = regions["region"]
    used = np.zeros(len(lobes), dtype=bool)
    out_pos, out_neg = [], []
    for k in order:  # loop over candidate pairs (few), not pixels
        ip, jn = pos_rows[distances["i"][k]], neg_rows[distances["j"][k]]
        if used[ip] or used[jn]:
            continue
        a, b = region[ip], region[jn]
        sp, sn = regions["slices"]["pos"][a - 1], regions["slices"]["neg"][b - 1]
        y_lo = max(min(sp[0].start, sn[0].start) - reach, 0)
        y_hi = max(sp[0].stop, sn[0].stop) + reach
        x_lo = max(min(sp[1].start, sn[1].start) - reach, 0)
        x_hi = max(sp[1].stop, sn[1].stop) + reach
        crop = (slice(y_lo, y_hi), slice(x_lo, x_hi))
        grown = ndimage.binary_dilation(pos_lab[crop] == a, structure=structure)
        if (grown & (neg_lab[crop] == b)).any():
            used[ip] = used[jn] = True
            out_pos.append(ip)
            out_neg.append(jn)
    return np.array(out_pos, dtype=np.int64), np.array(out_neg, dtype=np.int64)


# Joint PSF fits: dipoles and blends ---------------------------------------------------------------------------------


def _blend_groups(blend: np.ndarray) -> list[np.ndarray]:
    """Rows of the children of each deblended footprint (``blend``: the footprint's id per row, 0 for unsplit
    rows)."""
    return [np.flatnonzero(blend == parent) for parent in np.unique(blend[blend > 0])]


def _fit_blends(
    difference: Exposure,
    measured: Table,
    groups: list[np.ndarray],
    *,
    bad_bits: int,
    max_iter: int,
    max_shift: float,
) -> None:
    """Fit every blend's children jointly (one PSF each) and write their ``psfFlux``, ``psfFluxErr``, centroids,
    their errors and sky coordinates into ``measured``; set ``blendFit_flag`` where the fit failed (see
    `_fit_psf_group`), which keeps the children's own measurements."""
    measured["blendFit_flag"] = np.zeros(len(measured), dtype=bool)
    cx = np.asarray(measured["centroid_x"], dtype=np.float64)
    cy = np.asarray(measured["centroid_y"], dtype=np.float64)
    sign = np.where(np.asarray(measured["is_negative"], dtype=bool), -1.0, 1.0)
    for rows in groups:  # loop over blends (few), each fit vectorised over its stamp
        signs = sign[rows]
        start = np.column_stack([cx[rows], cy[rows]])
        result = _fit_psf_group(difference, start, signs, bad_bits, max_iter=max_iter, max_shift=max_shift)
        if result is None:
            measured["blendFit_flag"][rows] = True
            continue
        p, c = result
        k = len(rows)
        var = c.diagonal()
        measured["centroid_x"][rows], measured["centroid_y"][rows] = p[0 : 2 * k : 2], p[1 : 2 * k : 2]
        measured["centroid_xErr"][rows] = np.sqrt(var[0 : 2 * k : 2])
        measured["centroid_yErr"][rows] = np.sqrt(var[1 : 2 * k : 2])
        measured["psfFlux"][rows], measured["psfFluxErr"][rows] = p[2 * k :], np.sqrt(var[2 * k :])
        ra, dec = _sky_coords(difference, p[0 : 2 * k : 2], p[1 : 2 * k : 2])
        measured["coord_ra"][rows], measured["coord_dec"][rows] = ra, dec


def _fit_dipoles(
    difference: Exposure,
    measured: Table,
    pos_rows: np.ndarray,
    neg_rows: np.ndarray,
    *,
    bad_bits: int,
    max_iter: int,
    max_shift: float,
) -> dict[str, np.ndarray]:
    """Fit a positive plus a negative PSF to every dipole, starting from the measured lobe centroids.

    Returns
    -------
    fits : `dict` [`str`, `numpy.ndarray`]
        Per dipole: ``params`` (m, 6) = (x+, y+, x-, y-, A+, A-) [parent pixels, counts; A- < 0], ``cov``
        (m, 6, 6) their covariance, ``flag`` (the fit failed, see `_fit_psf_group`; NaN ``params`` then).
    """
    m = len(pos_rows)
    params = np.full((m, 6), np.nan)
    cov = np.full((m, 6, 6), np.nan)
    flag = np.ones(m, dtype=bool)
    cx = np.asarray(measured["centroid_x"], dtype=np.float64)
    cy = np.asarray(measured["centroid_y"], dtype=np.float64)
    signs = np.array([1.0, -1.0])
    for k in range(m):  # loop over dipoles, each fit vectorised over its stamp
        start = np.array([[cx[pos_rows[k]], cy[pos_rows[k]]], [cx[neg_rows[k]], cy[neg_rows[k]]]])
        result = _fit_psf_group(difference, start, signs, bad_bits, max_iter=max_iter, max_shift=max_shift)
        if result is not None:
            params[k], cov[k], flag[k] = result[0], result[1], False
    return {"params": params, "cov": cov, "flag": flag}


def _fit_psf_group(
    difference: Exposure, start: np.ndarray, signs: np.ndarray, bad_bits: int, *, max_iter: int, max_shift: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """Levenberg-Marquardt fit of ``sum_i A_i P(x_i, y_i)`` to the difference around a group of k sources.

    Unweighted least squares over the stamp (the group's extent padded by the PSF's half size), as the PSF
    fluxes; the covariance is propagated from the variance plane, ``(J^T J)^-1 J^T V J (J^T J)^-1``.

    Parameters
    ----------
    start : `numpy.ndarray`, shape (k, 2)
        Starting positions (x, y) [parent pixels].
    signs : `numpy.ndarray`, shape (k,)
        Required sign of each amplitude (+1 or -1).

    Returns
    -------
    params : `numpy.ndarray`, shape (3k,)
        ``(x_1, y_1, ..., x_k, y_k, A_1, ..., A_k)`` [parent pixels, counts].
    cov : `numpy.ndarray`, shape (3k, 3k)
        Their covariance.

    None when a start is not finite, or the fit does not converge, is singular, moves a source more than
    ``max_shift`` pixels or gives an amplitude of the wrong sign.
    """
    if not np.all(np.isfinite(start)):
        return None
    psf = difference.psf
    k = len(start)
    xc, yc = start.mean(axis=0)
    kernel_shape = psf.compute_image(xc, yc)[0].shape
    pad = max(kernel_shape) // 2 + 2
    lo = np.floor(start.min(axis=0) + 0.5).astype(int) - pad
    hi = np.floor(start.max(axis=0) + 0.5).astype(int) + pad
    box = Box2I(int(lo[0]), int(lo[1]), int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1))
    data, var, use = _cut(difference, np.array([box.x0]), np.array([box.y0]), box.shape, bad_bits)
    data, var, use = data[0][use[0]], var[0][use[0]], use[0]
    if data.size < 4 * k:
        return None

    def lobe(x: float, y: float) -> np.ndarray:
        image, pbox = psf.compute_image(x, y)
        out = np.zeros(box.shape)
        inter = pbox.intersection(box)
        if not inter.is_empty:
            out[inter.slices(box)] = image[inter.slices(pbox)]
        return out[use]

    def basis(p: np.ndarray) -> np.ndarray:
        return np.column_stack([lobe(p[2 * i], p[2 * i + 1]) for i in range(k)])

    def jacobian(p: np.ndarray, b: np.ndarray) -> np.ndarray:
        cols = []
        for i in range(2 * k):
            up, down = p[: 2 * k].copy(), p[: 2 * k].copy()
            up[i] += _FD_STEP
            down[i] -= _FD_STEP
            j = i - i % 2
            amp = p[2 * k + i // 2]
            cols.append(amp * (lobe(up[j], up[j + 1]) - lobe(down[j], down[j + 1])) / (2 * _FD_STEP))
        return np.column_stack([*cols, b])

    start = np.asarray(start, dtype=np.float64).ravel()
    b = basis(start)
    amps, *_ = np.linalg.lstsq(b, data, rcond=None)
    p = np.concatenate([start, amps])
    resid = data - b @ amps
    rss = float(resid @ resid)
    lam = 1e-3
    converged = False
    for _ in range(max_iter):
        jac = jacobian(p, b)
        a = jac.T @ jac
        g = jac.T @ resid
        improved = False
        while lam < 1e8:
            try:
                step = np.linalg.solve(a + lam * np.diag(np.diag(a)), g)
            except np.linalg.LinAlgError:
                return None
            step[: 2 * k] = np.clip(step[: 2 * k], -1.0, 1.0)  # at most a pixel per iteration
            trial = p + step
            b_trial = basis(trial)
            resid_trial = data - b_trial @ trial[2 * k :]
            rss_trial = float(resid_trial @ resid_trial)
            if rss_trial <= rss:
                p, b, resid, rss = trial, b_trial, resid_trial, rss_trial
                lam = max(lam / 10.0, 1e-9)
                improved = True
                break
            lam *= 10.0
        if not improved or np.max(np.abs(step[: 2 * k])) < 1e-4:
            converged = True  # no step lowers the residuals any more, or the positions are stable
            break
    if not converged:
        return None
    jac = jacobian(p, b)
    a = jac.T @ jac
    try:
        a_inv = np.linalg.inv(a)
    except np.linalg.LinAlgError:
        return None
    cov = a_inv @ (jac.T * var) @ jac @ a_inv
    moved = np.hypot(*(p[: 2 * k] - start).reshape(k, 2).T)
    if moved.max() > max_shift or np.any(signs * p[2 * k :] <= 0) or not np.all(np.isfinite(cov.diagonal())):
        return None
    return p, cov


# The catalogue ----------------------------------------------------------------------------------------------------


def _merge_dipoles(
    measured: Table, pos_rows: np.ndarray, neg_rows: np.ndarray, fits: dict[str, np.ndarray], difference: Exposure
) -> Table:
    """The DIA source catalogue: measured lobes, with each dipole's two lobes replaced by one dipole row."""
    catalog = measured.copy()
    catalog.remove_columns([c for c in catalog.colnames if c.startswith("calib_psf_")])
    n = len(catalog)
    nan = np.full(n, np.nan)
    columns = {
        "dipolePosFlux": ("ct", "Flux of a dipole's positive lobe [counts] (> 0); NaN for other sources"),
        "dipolePosFluxErr": ("ct", "1-sigma error of dipolePosFlux"),
        "dipoleNegFlux": ("ct", "Signed flux of a dipole's negative lobe [counts] (< 0); NaN for other sources"),
        "dipoleNegFluxErr": ("ct", "1-sigma error of dipoleNegFlux"),
        "dipoleLength": ("pix", "Distance between a dipole's lobes [pixels]; NaN for other sources"),
        "dipoleAngle": ("deg", "Direction from the negative to the positive lobe [deg, counter-clockwise from +x]"),
    }
    values = {name: nan.copy() for name in columns}
    is_dipole = np.zeros(n, dtype=bool)
    fit_flag = np.zeros(n, dtype=bool)
    if len(pos_rows):
        p, c, failed = fits["params"], fits["cov"], fits["flag"]
        col = lambda name: np.asarray(catalog[name], dtype=np.float64)  # noqa: E731
        # Failed fits fall back to the separate lobe measurements.
        xp = np.where(failed, col("centroid_x")[pos_rows], p[:, 0])
        yp = np.where(failed, col("centroid_y")[pos_rows], p[:, 1])
        xn = np.where(failed, col("centroid_x")[neg_rows], p[:, 2])
        yn = np.where(failed, col("centroid_y")[neg_rows], p[:, 3])
        fp = np.where(failed, col("psfFlux")[pos_rows], p[:, 4])
        fn = np.where(failed, col("psfFlux")[neg_rows], p[:, 5])
        ep_lobe, en_lobe = col("psfFluxErr")[pos_rows], col("psfFluxErr")[neg_rows]
        ep = np.where(failed, ep_lobe, np.sqrt(c[:, 4, 4]))
        en = np.where(failed, en_lobe, np.sqrt(c[:, 5, 5]))
        net_err = np.where(failed, np.hypot(ep_lobe, en_lobe), np.sqrt(c[:, 4, 4] + c[:, 5, 5] + 2 * c[:, 4, 5]))
        x_err = np.where(
            failed, 0.5 * np.hypot(col("centroid_xErr")[pos_rows], col("centroid_xErr")[neg_rows]),
            0.5 * np.sqrt(c[:, 0, 0] + c[:, 2, 2] + 2 * c[:, 0, 2]),
        )
        y_err = np.where(
            failed, 0.5 * np.hypot(col("centroid_yErr")[pos_rows], col("centroid_yErr")[neg_rows]),
            0.5 * np.sqrt(c[:, 1, 1] + c[:, 3, 3] + 2 * c[:, 1, 3]),
        )
        x_mid, y_mid = 0.5 * (xp + xn), 0.5 * (yp + yn)

        r = pos_rows
        values["dipolePosFlux"][r], values["dipolePosFluxErr"][r] = fp, ep
        values["dipoleNegFlux"][r], values["dipoleNegFluxErr"][r] = fn, en
        values["dipoleLength"][r] = np.hypot(xp - xn, yp - yn)
        values["dipoleAngle"][r] = np.degrees(np.arctan2(yp - yn, xp - xn))
        is_dipole[r] = True
        fit_flag[r] = failed
        catalog["centroid_x"][r], catalog["centroid_y"][r] = x_mid, y_mid
        catalog["centroid_xErr"][r], catalog["centroid_yErr"][r] = x_err, y_err
        lobe_flag = lambda name: np.asarray(catalog[name])[pos_rows] | np.asarray(catalog[name])[neg_rows]  # noqa: E731
        catalog["centroid_flag"][r] = failed & lobe_flag("centroid_flag")
        catalog["psfFlux"][r], catalog["psfFluxErr"][r] = fp + fn, net_err
        catalog["psfFlux_flag"][r] = failed & lobe_flag("psfFlux_flag")
        for name in ("shape_xx", "shape_yy", "shape_xy"):
            catalog[name][r] = np.nan
        catalog["shape_flag"][r] = True
        for name in catalog.colnames:
            if name.startswith("apFlux_") and name != "apFlux_flag":
                catalog[name][r] = np.nan
        catalog["apFlux_flag"][r] = True
        catalog["footprint_npix"][r] = catalog["footprint_npix"][pos_rows] + catalog["footprint_npix"][neg_rows]
        for name in _PIXEL_FLAGS:
            catalog[name][r] = lobe_flag(name)
        ra, dec = _sky_coords(difference, x_mid, y_mid)
        catalog["coord_ra"][r], catalog["coord_dec"][r] = ra, dec

    catalog["isDipole"] = is_dipole
    for name, (unit, description) in columns.items():
        _col(catalog, name, values[name], unit, description)
    catalog["dipoleFit_flag"] = fit_flag
    psf_flux = np.asarray(catalog["psfFlux"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = psf_flux / np.asarray(catalog["psfFluxErr"], dtype=np.float64)
    _col(catalog, "snr", snr, "", "Signed signal-to-noise ratio psfFlux / psfFluxErr")
    catalog["psfFlux"].description = (
        "PSF flux on the difference image [counts], signed: negative for negative sources (is_negative), the "
        "net flux dipolePosFlux + dipoleNegFlux for dipoles"
    )
    catalog["centroid_x"].description = "Centroid x [parent pixels]; the midpoint of the lobes for dipoles"
    catalog["centroid_y"].description = "Centroid y [parent pixels]; the midpoint of the lobes for dipoles"
    for name in catalog.colnames:
        if name.startswith("apFlux_") and not name.endswith(("Err", "_flag")):
            catalog[name].description += " [counts, signed; NaN for dipoles]"
    keep = np.ones(n, dtype=bool)
    keep[neg_rows] = False
    catalog = catalog[keep]
    order = [
        "id", "parent", "centroid_x", "centroid_y", "centroid_xErr", "centroid_yErr", "centroid_flag",
        "coord_ra", "coord_dec", "psfFlux", "psfFluxErr", "psfFlux_flag", "snr",
    ]
    rest = [c for c in catalog.colnames if c not in order]
    return catalog[order + rest]


def _cut(
    exposure: Exposure, x0: np.ndarray, y0: np.ndarray, shape: tuple[int, int], bad_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stamps of ``shape`` (h, w) whose first pixels are at parent (x0, y0): data, variance and usable pixels.

    Pixels off the image, non-finite or with ``bad_bits`` are unusable (and 0 in data and variance).
    """
    h, w = shape
    ny, nx = exposure.shape
    ex0, ey0 = exposure.xy0
    yy = (np.asarray(y0) - ey0)[:, None] + np.arange(h)[None, :]
    xx = (np.asarray(x0) - ex0)[:, None] + np.arange(w)[None, :]
    inside = ((yy >= 0) & (yy < ny))[:, :, None] & ((xx >= 0) & (xx < nx))[:, None, :]
    yc = np.clip(yy, 0, ny - 1)[:, :, None]
    xc = np.clip(xx, 0, nx - 1)[:, None, :]
    data = exposure.image[yc, xc].astype(np.float64)
    var = exposure.variance[yc, xc].astype(np.float64)
    use = inside & np.isfinite(data) & np.isfinite(var)
    if bad_bits:
        use &= (exposure.mask.array[yc, xc] & bad_bits) == 0
    data[~use] = 0.0
    var[~use] = 0.0
    return data, var, use
