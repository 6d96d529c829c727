"""Calibrate a characterized image: detect and measure faint sources, fit the WCS and the photometric zero point.

`CalibrateTask` takes the outputs of `tasks.characterize.CharacterizeImageTask` (``icExp``, its background
``icExpBackground`` and bright-source catalogue ``icSrc``) and a reference catalogue (``refcat``), and

1. detects sources to a fainter threshold than characterization (``detection``; the background is refined
   with them masked), deblends (``deblend``, ``doDeblend``) and measures them (``measurement``) with the PSF
   measured by characterization;
2. copies the ``calib_psf_*`` flags of ``icSrc`` onto the new sources matched within ``matchRadiusPix``;
3. fits the WCS (``astrometry``, `tasks.astrometry.AstrometryTask`): reference stars in the footprint,
   an offset search, matching within ``astrometry.matchRadius`` and a clipped TAN(-SIP) fit;
4. fits the photometric zero point (``photoCal``, `tasks.photo_cal.PhotoCalTask`) on unsaturated, isolated
   matches: a clipped weighted mean of ``refFlux [nJy] / (apCorr * psfFlux)`` becomes the `PhotoCalib`;
5. sets ``calexp.wcs`` and ``calexp.photo_calib``, recomputes ``coord_ra``/``coord_dec`` with the new WCS, and
   adds calibrated fluxes ``<flux>_nJy``, ``<flux>_nJyErr`` and ``calib_astrometry_used``,
   ``calib_photometry_used`` to the catalogue.

This follows ``lsst.pipe.tasks.calibrate.CalibrateTask`` (Gen3 era), with one reference catalogue for both
astrometry and photometry (the Stripe 82 ``refcat`` of the demo: ``ra``, ``dec`` [deg], ``u``..``z`` and
``*_err`` [AB mag], ``starnotgal``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table
from scipy.spatial import cKDTree

from graph import (
    ConfigurableField,
    Field,
    Input,
    Output,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    PrerequisiteInput,
    Struct,
    timeMethod,
)
from graph.errors import AlgorithmError

from .astrometry import AstrometryConfig, AstrometryTask, MatchResult
from .deblend import SourceDeblendConfig, SourceDeblendTask
from .detection import SourceDetectionConfig, SourceDetectionTask
from .image import BackgroundList, Exposure
from .measurement import SingleFrameMeasurementConfig, SingleFrameMeasurementTask
from .photo_cal import PhotoCalConfig, PhotoCalTask

if TYPE_CHECKING:
    from .characterize import ExposureIdInfo

__all__ = ["CalibrateConfig", "CalibrateConnections", "CalibrateTask"]

_DIMENSIONS = ("instrument", "visit", "detector")
_MAG_PER_LN = 2.5 / math.log(10.0)


class CalibrateConnections(PipelineTaskConnections, dimensions=_DIMENSIONS):
    icSourceCat = Input(  # noqa: N815 - the LSST stack's name
        name="icSrc",
        storageClass="ArrowAstropy",
        dimensions=_DIMENSIONS,
        doc="Bright sources of characterization; their calib_psf_* flags are copied to the new catalogue.",
    )
    exposure = Input(
        name="icExp",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="Characterized exposure (background-subtracted, with a PSF).",
    )
    background = Input(
        name="icExpBackground",
        storageClass="Background",
        dimensions=_DIMENSIONS,
        doc="Background models subtracted by characterization.",
    )
    refCat = PrerequisiteInput(  # noqa: N815
        name="refcat",
        storageClass="AstropyFitsTable",
        dimensions=(),
        doc="Reference catalogue (ra, dec [deg], <band>, <band>_err [AB mag], starnotgal), found in the input "
        "collections (e.g. the 'refcats' chain).",
    )
    outputExposure = Output(  # noqa: N815
        name="calexp",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="Calibrated exposure: fitted WCS and PhotoCalib [nJy per count].",
    )
    outputCat = Output(  # noqa: N815
        name="src",
        storageClass="ArrowAstropy",
        dimensions=_DIMENSIONS,
        doc="Sources measured on the calibrated exposure, with sky coordinates and calibrated fluxes.",
    )
    outputBackground = Output(  # noqa: N815
        name="calexpBackground",
        storageClass="Background",
        dimensions=_DIMENSIONS,
        doc="Every background model subtracted from the exposure (icExpBackground plus the refinement here).",
    )
    matches = Output(
        name="srcMatch",
        storageClass="ArrowAstropy",
        dimensions=_DIMENSIONS,
        doc="Source-reference matches (doWriteMatches).",
    )

    def __init__(self, *, config: Any):
        super().__init__(config=config)
        if not config.doWriteMatches:
            del self.matches
        if not (config.doAstrometry or config.doPhotoCal):
            del self.refCat


class CalibrateConfig(PipelineTaskConfig, pipelineConnections=CalibrateConnections):
    """Configuration of `CalibrateTask`."""

    detection: SourceDetectionConfig = ConfigurableField(
        target=SourceDetectionTask, doc="Detect sources (to a fainter threshold than characterization)."
    )
    doDeblend: bool = Field(
        True,
        description="Deblend the detected footprints before measurement (as the LSST stack's CalibrateTask does); "
        "stars blended with a brighter neighbour are then matched too.",
    )
    deblend: SourceDeblendConfig = ConfigurableField(target=SourceDeblendTask, doc="Deblend footprints (doDeblend).")
    measurement: SingleFrameMeasurementConfig = ConfigurableField(
        target=SingleFrameMeasurementTask, doc="Measure centroids, shapes and fluxes."
    )
    doCopyIcSourceFields: bool = Field(
        True, description="Copy icSourceFieldsToCopy from icSrc to the sources within matchRadiusPix."
    )
    icSourceFieldsToCopy: list[str] = Field(  # noqa: N815
        default_factory=lambda: ["calib_psf_candidate", "calib_psf_used", "calib_psf_reserved"],
        description="Boolean icSrc columns copied to the output catalogue (False where no icSrc source matches).",
    )
    matchRadiusPix: float = Field(3.0, gt=0, description="Match radius of icSrc to the new sources [pixels].")
    doAstrometry: bool = Field(True, description="Fit the WCS against the reference catalogue.")
    requireAstrometry: bool = Field(
        True, description="Raise if the astrometric fit fails (otherwise keep the input WCS and warn)."
    )
    astrometry: AstrometryConfig = ConfigurableField(
        target=AstrometryTask, doc="Reference selection, matching and the WCS fit (also used for matching alone)."
    )
    doPhotoCal: bool = Field(True, description="Fit the photometric zero point against the reference catalogue.")
    requirePhotoCal: bool = Field(
        True, description="Raise if the zero-point fit fails (otherwise keep the input PhotoCalib and warn)."
    )
    photoCal: PhotoCalConfig = ConfigurableField(  # noqa: N815
        target=PhotoCalTask, doc="The photometric zero point from the matches."
    )
    doWriteMatches: bool = Field(False, description="Write the source-reference matches as 'srcMatch'.")
    completenessMagLimit: float = Field(
        20.0,
        description="Metadata fracRefMatched: fraction of the reference stars inside the exposure and brighter "
        "than this [AB mag] that are matched.",
    )

    def setDefaults(self) -> None:
        super().setDefaults()
        self.detection.thresholdValue = 5.0
        self.detection.reEstimateBackground = True


class CalibrateTask(PipelineTask):
    """Detect and measure sources and calibrate an exposure's astrometry and photometry (see the module docstring).

    Subtasks: ``detection``, ``deblend``, ``measurement``, ``astrometry``, ``photoCal``.

    Metadata: ``numSources``; ``numRefStars`` (reference stars selected in the footprint), ``numMatches``,
    ``fracRefMatched`` (see ``completenessMagLimit``); ``astromRmsBefore``, ``astromRms`` [arcsec: radial RMS
    of the astrometric fit stars with the input and the fitted WCS], ``numAstromStars``; ``zeroPoint`` (AB
    magnitude of 1 count), ``zeroPointErr``, ``photoRms`` [mag], ``numPhotoCalStars``, ``apCorr``.
    """

    ConfigClass = CalibrateConfig
    _DefaultName = "calibrate"

    def __init__(self, *, config: Any = None, **kwargs: Any):
        super().__init__(config=config, **kwargs)
        for name in ("detection", "deblend", "measurement", "astrometry", "photoCal"):
            self.makeSubtask(name)

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:  # noqa: N802,N803
        """Read the inputs, calibrate with source ids unique to the visit and detector, write the outputs."""
        from .characterize import ExposureIdInfo

        inputs = butlerQC.get(inputRefs)
        inputs["exposureIdInfo"] = ExposureIdInfo.from_data_id(butlerQC.quantum.data_id)
        outputs = self.run(**inputs)
        butlerQC.put(outputs, outputRefs)

    @timeMethod
    def run(
        self,
        exposure: Exposure,
        exposureIdInfo: ExposureIdInfo | None = None,  # noqa: N803
        background: BackgroundList | None = None,
        icSourceCat: Table | None = None,  # noqa: N803
        refCat: Table | None = None,  # noqa: N803
    ) -> Struct:
        """Calibrate a characterized exposure.

        Parameters
        ----------
        exposure : `Exposure`
            Characterized exposure (``icExp``): background-subtracted [counts], with a PSF and an approximate
            WCS; not modified (a copy is calibrated).
        exposureIdInfo : `ExposureIdInfo`, optional
            Id of the exposure; without it, source ids are 1..N (not unique across exposures).
        background : `BackgroundList`, optional
            Background models already subtracted (``icExpBackground``).
        icSourceCat : `astropy.table.Table`, optional
            Characterization's catalogue (``icSrc``), whose ``icSourceFieldsToCopy`` are copied.
        refCat : `astropy.table.Table`, optional
            Reference catalogue; required with ``doAstrometry`` or ``doPhotoCal``.

        Returns
        -------
        result : `Struct`
            ``outputExposure`` (the calibrated `Exposure`), ``outputCat`` (`astropy.table.Table`: the
            measurement columns, ``coord_ra``/``coord_dec`` [deg] from the fitted WCS, ``<flux>_nJy``,
            ``<flux>_nJyErr`` [nJy] for psfFlux (aperture corrected: ``psfFlux_apCorr``) and every
            apFlux_*, ``calib_astrometry_used``, ``calib_photometry_used`` and the copied ``calib_psf_*``),
            ``outputBackground`` (`BackgroundList`), ``matches`` (`astropy.table.Table`, one row per
            source-reference match, see `matches_table`), and the LSST aliases ``exposure``, ``sourceCat``,
            ``background``.

        Raises
        ------
        AlgorithmError
            If astrometry or photometric calibration fails (e.g. fewer than ``minMatches`` matches) and
            ``requireAstrometry`` / ``requirePhotoCal`` is set, or if no reference catalogue is given.
        """
        config = self.config
        if (config.doAstrometry or config.doPhotoCal) and refCat is None:
            raise AlgorithmError(
                "CalibrateTask needs a reference catalogue (refCat) for doAstrometry/doPhotoCal; ingest one "
                "(butler ingest-files ... refcat) and add its collection to the inputs."
            )
        exposure = exposure.copy()
        background = BackgroundList(background or [])

        detections = self.detection.run(exposure, doSmooth=True)
        if detections.background:
            background.extend(detections.background)
        sources, footprints = detections.sources, detections.footprints
        if config.doDeblend:
            result = self.deblend.run(exposure, sources, footprints)
            sources = getattr(result, "sources", result)
        source_cat = self.measurement.run(exposure, sources, footprints)
        if config.doCopyIcSourceFields:
            self._copy_ic_source_fields(source_cat, icSourceCat)
        source_cat = self._finalize_ids(source_cat, exposureIdInfo)
        self.metadata["numSources"] = len(source_cat)

        n = len(source_cat)
        astrom_used = np.zeros(n, dtype=bool)
        photo_used = np.zeros(n, dtype=bool)
        matches = MatchResult(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(2))
        refs = None
        fit_used = np.zeros(0, dtype=bool)
        astrom_rms: float | None = None
        zero_point: float | None = None
        if config.doAstrometry:
            try:
                astrom = self.astrometry.run(source_cat, exposure, refCat)
            except AlgorithmError as err:
                if config.requireAstrometry:
                    raise AlgorithmError(f"astrometric calibration failed: {err}") from err
                self.log.warning("astrometric calibration failed; keeping the input WCS: %s", err)
            else:
                exposure.wcs = astrom.wcs
                refs, matches, fit_used = astrom.refs, astrom.matches, astrom.fitUsed
                astrom_used[matches.src_index[fit_used]] = True
                self.metadata["astromRmsBefore"] = astrom.rmsBefore
                self.metadata["astromRms"] = astrom_rms = astrom.rms
                self.metadata["numAstromStars"] = int(fit_used.sum())
        if refs is None and refCat is not None and exposure.wcs is not None:
            refs = self.astrometry.select(refCat, exposure)
            matches = self.astrometry.match(source_cat, refs, exposure.wcs)
            fit_used = np.zeros(len(matches), dtype=bool)
        match_table = self.matches_table(source_cat, refs, matches, exposure)

        photo_used_match = np.zeros(len(match_table), dtype=bool)
        ap_corr = 1.0
        if config.doPhotoCal:
            try:
                if refs is None:
                    raise AlgorithmError("the exposure has no WCS to match the reference catalogue with.")
                isolated = self._isolated(source_cat, refs, matches, exposure)
                photo = self.photoCal.run(source_cat, match_table, isolated=isolated)
            except AlgorithmError as err:
                if config.requirePhotoCal:
                    raise AlgorithmError(f"photometric calibration failed: {err}") from err
                self.log.warning("photometric calibration failed; keeping the input PhotoCalib: %s", err)
            else:
                exposure.photo_calib = photo.photoCalib
                ap_corr = photo.apCorr
                photo_used_match = photo.used
                photo_used[matches.src_index[photo.used]] = True
                self.metadata["zeroPoint"] = zero_point = photo.zeroPoint
                self.metadata["zeroPointErr"] = photo.zeroPointErr
                self.metadata["photoRms"] = photo.photoRms
                self.metadata["numPhotoCalStars"] = int(photo.used.sum())
                self.metadata["apCorr"] = ap_corr
                exposure.metadata["MAGZERO"] = (photo.zeroPoint, "[mag] AB magnitude of 1 count (CalibrateTask)")
                exposure.metadata["MAGZERR"] = (photo.zeroPointErr, "[mag] error of MAGZERO")
        if astrom_rms is not None:
            exposure.metadata["ASTRMS"] = (astrom_rms, "[arcsec] RMS of the WCS fit (CalibrateTask)")
        match_table["calib_astrometry_used"] = (fit_used if len(fit_used) == len(match_table)
                                                else np.zeros(len(match_table), dtype=bool))
        match_table["calib_photometry_used"] = photo_used_match

        source_cat["calib_astrometry_used"] = astrom_used
        source_cat["calib_photometry_used"] = photo_used
        self._set_coords(source_cat, exposure)
        self._calibrate_fluxes(source_cat, exposure, ap_corr)
        self._record_match_metadata(refs, matches)
        self.log.info(
            "calibrated: %d sources, %d matches, astrometric RMS %s arcsec, zero point %s mag",
            len(source_cat), len(matches), _fmt(astrom_rms), _fmt(zero_point),
        )
        return Struct(
            outputExposure=exposure,
            outputCat=source_cat,
            outputBackground=background,
            matches=match_table,
            exposure=exposure,
            sourceCat=source_cat,
            background=background,
        )

    # Catalogue helpers -------------------------------------------------------------------------------------

    def _copy_ic_source_fields(self, catalog: Table, ic_catalog: Table | None) -> None:
        """Copy the boolean ``icSourceFieldsToCopy`` of the nearest icSrc source within ``matchRadiusPix``."""
        names = list(self.config.icSourceFieldsToCopy)
        values = {name: np.zeros(len(catalog), dtype=bool) for name in names}
        if ic_catalog is not None and len(ic_catalog) and len(catalog):
            present = [name for name in names if name in ic_catalog.colnames]
            missing = sorted(set(names) - set(present))
            if missing:
                self.log.warning("icSrc has no column(s) %s to copy", ", ".join(missing))
            ic_xy, xy = _xy(ic_catalog), _xy(catalog)
            ok = np.isfinite(ic_xy).all(axis=1)
            if ok.any() and present:
                tree = cKDTree(np.nan_to_num(xy, nan=-1e9))  # NaN centroids never match
                distance, nearest = tree.query(ic_xy[ok], distance_upper_bound=self.config.matchRadiusPix)
                found = np.isfinite(distance)
                ic_rows = np.flatnonzero(ok)[found]
                rows = nearest[found]
                for name in present:
                    column = np.asarray(ic_catalog[name], dtype=bool)
                    values[name][rows] |= column[ic_rows]
                self.metadata["numIcSourcesMatched"] = int(found.sum())
        for name in names:
            catalog[name] = values[name]

    @staticmethod
    def _finalize_ids(catalog: Table, exposure_id_info: ExposureIdInfo | None) -> Table:
        if exposure_id_info is not None and len(catalog):
            old = np.asarray(catalog["id"], dtype=np.int64)
            new = exposure_id_info.make_source_ids(old)
            catalog["id"] = new
            if "parent" in catalog.colnames:
                parent = np.asarray(catalog["parent"], dtype=np.int64)
                mapped = exposure_id_info.make_source_ids(np.where(parent > 0, parent, 0))
                catalog["parent"] = np.where(parent > 0, mapped, 0)
        if exposure_id_info is not None:
            catalog.meta["exposure_id"] = int(exposure_id_info.expId)
        return catalog

    @staticmethod
    def _set_coords(catalog: Table, exposure: Exposure) -> None:
        if exposure.wcs is None or not len(catalog):
            if "coord_ra" not in catalog.colnames:
                catalog["coord_ra"] = np.full(len(catalog), np.nan)
                catalog["coord_dec"] = np.full(len(catalog), np.nan)
            return
        sky = exposure.wcs.pixel_to_world(*_xy(catalog).T)
        catalog["coord_ra"] = np.asarray(sky.ra.deg, dtype=np.float64)
        catalog["coord_dec"] = np.asarray(sky.dec.deg, dtype=np.float64)
        catalog["coord_ra"].unit = catalog["coord_dec"].unit = "deg"

    @staticmethod
    def _calibrate_fluxes(catalog: Table, exposure: Exposure, ap_corr: float) -> None:
        """Add ``<flux>_nJy`` and ``<flux>_nJyErr`` for psfFlux (aperture-corrected) and every apFlux_*."""
        catalog["psfFlux_apCorr"] = np.full(len(catalog), ap_corr)
        calib = exposure.photo_calib
        if calib is None:
            return
        names = [c for c in catalog.colnames
                 if c == "psfFlux" or (c.startswith("apFlux_") and c[7:].replace("_", "").isdigit())]
        for name in names:
            flux = np.asarray(catalog[name], dtype=np.float64) * (ap_corr if name == "psfFlux" else 1.0)
            err_name = name + "Err"
            err = (np.asarray(catalog[err_name], dtype=np.float64) * (ap_corr if name == "psfFlux" else 1.0)
                   if err_name in catalog.colnames else np.full(len(catalog), np.nan))
            njy, njy_err = calib.instflux_to_nanojansky(flux, err)
            catalog[name + "_nJy"] = njy
            catalog[name + "_nJyErr"] = njy_err
            catalog[name + "_nJy"].unit = catalog[name + "_nJyErr"].unit = "nJy"

    def _isolated(self, catalog: Table, refs: Table, matches: MatchResult, exposure: Exposure) -> np.ndarray:
        """Per match: no other source and no other reference star within ``photoCal.isolationRadius``."""
        radius = self.config.photoCal.isolationRadius
        isolated = np.ones(len(matches), dtype=bool)
        if radius <= 0 or not len(matches):
            return isolated
        scale = float(math.sqrt(abs(np.linalg.det(exposure.wcs.celestial.pixel_scale_matrix))) * 3600.0)
        radius_px = radius / scale
        xy = _xy(catalog)
        usable = np.isfinite(xy).all(axis=1)
        if "is_negative" in catalog.colnames:
            usable &= ~np.asarray(catalog["is_negative"], dtype=bool)
        if "deblend_nChild" in catalog.colnames:
            usable &= np.asarray(catalog["deblend_nChild"]) == 0
        tree = cKDTree(xy[usable])
        counts = np.array([len(v) for v in tree.query_ball_point(xy[matches.src_index], radius_px)])
        isolated &= counts <= 1
        ref_coords = SkyCoord(np.asarray(refs["coord_ra"], float), np.asarray(refs["coord_dec"], float), unit="deg")
        _, separation, _ = ref_coords[matches.ref_index].match_to_catalog_sky(ref_coords, nthneighbor=2)
        isolated &= separation.to_value(u.arcsec) > radius
        return isolated

    def matches_table(self, catalog: Table, refs: Table | None, matches: MatchResult, exposure: Exposure) -> Table:
        """The source-reference pairs as a table.

        Columns: ``src_id``, ``src_index`` (row in the source catalogue), ``ref_id`` (the reference catalogue's
        ``id`` column, else its row), ``ref_index`` (row in the reference catalogue), ``ref_coord_ra``,
        ``ref_coord_dec`` [deg], ``ref_mag``, ``ref_magErr`` [AB mag], ``ref_flux``, ``ref_fluxErr`` [nJy],
        ``src_centroid_x``, ``src_centroid_y`` [px], ``src_psfFlux``, ``src_psfFluxErr`` [counts] and
        ``distance`` [arcsec, with the exposure's current WCS].
        """
        n = len(matches)
        table = Table()
        if refs is None or n == 0:
            for name, dtype in (("src_id", np.int64), ("src_index", np.int64), ("ref_id", np.int64),
                                ("ref_index", np.int64), ("ref_coord_ra", float), ("ref_coord_dec", float),
                                ("ref_mag", float), ("ref_magErr", float), ("ref_flux", float), ("ref_fluxErr", float),
                                ("src_centroid_x", float), ("src_centroid_y", float), ("src_psfFlux", float),
                                ("src_psfFluxErr", float), ("distance", float)):
                table[name] = np.zeros(0, dtype=dtype)
            return table
        src_rows, ref_rows = matches.src_index, matches.ref_index
        table["src_id"] = np.asarray(catalog["id"], dtype=np.int64)[src_rows]
        table["src_index"] = src_rows
        table["ref_id"] = (np.asarray(refs["id"], dtype=np.int64)[ref_rows] if "id" in refs.colnames
                           else np.asarray(refs["ref_index"], dtype=np.int64)[ref_rows])
        table["ref_index"] = np.asarray(refs["ref_index"], dtype=np.int64)[ref_rows]
        for out, name in (("ref_coord_ra", "coord_ra"), ("ref_coord_dec", "coord_dec"), ("ref_mag", "mag"),
                          ("ref_magErr", "magErr"), ("ref_flux", "flux"), ("ref_fluxErr", "fluxErr")):
            table[out] = np.asarray(refs[name], dtype=np.float64)[ref_rows]
        x = np.asarray(catalog["centroid_x"], dtype=np.float64)[src_rows]
        y = np.asarray(catalog["centroid_y"], dtype=np.float64)[src_rows]
        table["src_centroid_x"], table["src_centroid_y"] = x, y
        for name in ("psfFlux", "psfFluxErr"):
            table["src_" + name] = (np.asarray(catalog[name], dtype=np.float64)[src_rows] if name in catalog.colnames
                                    else np.full(n, np.nan))
        sky = exposure.wcs.pixel_to_world(x, y)
        ref_sky = SkyCoord(np.asarray(table["ref_coord_ra"], float), np.asarray(table["ref_coord_dec"], float),
                           unit="deg")
        table["distance"] = sky.separation(ref_sky).to_value(u.arcsec)
        for name, unit in (("ref_coord_ra", "deg"), ("ref_coord_dec", "deg"), ("ref_mag", "mag"), ("ref_magErr", "mag"),
                           ("ref_flux", "nJy"), ("ref_fluxErr", "nJy"), ("src_centroid_x", "pix"),
                           ("src_centroid_y", "pix"), ("distance", "arcsec")):
            table[name].unit = unit
        band = exposure.filter.band if exposure.filter is not None else None
        table.meta["band"] = self.config.astrometry.referenceSelection.band or band
        return table

    def _record_match_metadata(self, refs: Table | None, matches: MatchResult) -> None:
        self.metadata["numMatches"] = len(matches)
        if refs is None:
            self.metadata["numRefStars"] = 0
            return
        self.metadata["numRefStars"] = len(refs)
        bright = np.asarray(refs["mag"], float) <= self.config.completenessMagLimit
        inside = np.asarray(refs["inside"], dtype=bool) & bright
        matched = np.zeros(len(refs), dtype=bool)
        matched[matches.ref_index] = True
        n_inside = int(inside.sum())
        self.metadata["numRefStarsInside"] = n_inside
        self.metadata["fracRefMatched"] = float((matched & inside).sum() / n_inside) if n_inside else float("nan")


def _xy(catalog: Table) -> np.ndarray:
    """Centroids (x, y) [parent pixels], shape (n, 2), float64."""
    return np.column_stack([np.asarray(catalog["centroid_x"], float), np.asarray(catalog["centroid_y"], float)])


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"
