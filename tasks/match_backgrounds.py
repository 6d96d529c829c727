"""Match the backgrounds of the warps of several visits to one reference visit: `MatchBackgroundsTask`.

Warps of background-unsubtracted exposures (``psfMatchedWarp`` by default) of one tract and band are brought
to a common sky level, that of a reference visit, so that a coadd of them keeps a smooth, continuous
background (the LSST "background matching" recipe of ``lsst.pipe.tasks.matchBackgrounds``; see the seed
documentation):

1. Choose the reference visit (unless ``refVisitId`` is set): bin every visit's warps over the whole tract
   (`TractBackground`, ``tractBgModel`` settings) and score each visit by ``bestRefWeightGlobalCoverage``
   x (1 - its share of the covered bins' pixels relative to the best-covered visit) +
   ``bestRefWeightVariance`` x (1 - sqrt(min variance / its pixel variance)) + ``bestRefWeightChi2`` x
   (1 - min chi^2 / its mean reduced chi^2 when the other visits' binned backgrounds are fitted to it);
   the lowest score wins.  Coverage dominates by default: regions of a visit the reference does not cover
   can only be extrapolated.
2. For every other visit, bin the per-pixel difference ``reference - visit`` over the pixels both cover
   (patch by patch, each patch's inner box only, so overlapping patch borders count once), and fit a smooth
   `TractBackground` to it (Chebyshev polynomial weighted by the bin variances, with bin rejection), over the
   box of the visit's own footprint so the model extends to the visit's pixels the reference does not
   cover.
3. Add the model, evaluated on each warp's pixels, to every warp of the visit: the matched warps.  The
   reference visit gets a zero model and unchanged pixels.

Everything is in nJy: warps with a `PhotoCalib` other than 1 nJy/count are calibrated first, and the matched
warps carry ``PhotoCalib(1.0)``.

Warps are identified by visit and patch: from the data IDs of deferred handles (`runQuantum`), else from
the ``visitIds`` / ``patchIds`` arguments, else from ``exposure.visit_info.id`` and the patch of the tract
whose outer box equals the warp's bbox.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graph import (
    Field,
    Input,
    Output,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    Struct,
    timeMethod,
)
from graph.errors import NoWorkFound

from .errors import MatchBackgroundsError, NoUsableBinsError
from .image import Box2I, Exposure, MaskedImage, PhotoCalib, SkyMap, TractBackground, TractBackgroundConfig
from .image.skymap import TractInfo

__all__ = ["MatchBackgroundsConfig", "MatchBackgroundsConnections", "MatchBackgroundsTask"]

_WARP_DIMENSIONS = ("skymap", "tract", "patch", "visit", "instrument")


class MatchBackgroundsConnections(
    PipelineTaskConnections, dimensions=("skymap", "tract", "band"), defaultTemplates={"warpType": "psfMatched"}
):
    warps = Input(
        name="{warpType}Warp",
        storageClass="ExposureF",
        dimensions=_WARP_DIMENSIONS,
        doc="Background-unsubtracted warps of every visit and patch of the tract [nJy].",
        multiple=True,
        deferLoad=True,
    )
    skyMap = Input(  # noqa: N815 - the LSST stack's name
        name="skyMap",
        storageClass="SkyMap",
        dimensions=("skymap",),
        doc="The skymap: the tract's bbox and the patches' inner boxes.",
    )
    backgroundInfoList = Output(  # noqa: N815
        name="{warpType}WarpBackgroundDiff",
        storageClass="TractBackground",
        dimensions=_WARP_DIMENSIONS,
        doc="The difference background (reference - visit) of each warp's visit [nJy]; add its image to the warp.",
        multiple=True,
    )
    matchedImageList = Output(  # noqa: N815
        name="{warpType}WarpMatched",
        storageClass="ExposureF",
        dimensions=_WARP_DIMENSIONS,
        doc="Background-matched warps [nJy].",
        multiple=True,
    )


class MatchBackgroundsConfig(PipelineTaskConfig, pipelineConnections=MatchBackgroundsConnections):
    """Configuration of `MatchBackgroundsTask` (names as in ``lsst.pipe.tasks.matchBackgrounds``)."""

    refVisitId: int | None = Field(
        None, description="Visit to match every other visit to; None: choose the best visit automatically."
    )
    bestRefWeightChi2: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Weight of the goodness of fit (mean reduced chi^2 of the other visits' binned backgrounds "
        "fitted to the candidate) in the reference choice; prefers smooth backgrounds.",
    )
    bestRefWeightVariance: float = Field(
        0.2, ge=0, le=1, description="Weight of the pixel noise in the reference choice; prefers low noise."
    )
    bestRefWeightGlobalCoverage: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Weight of the coverage (pixels with data, relative to the best-covered visit) in the "
        "reference choice; prefers visits covering the most of the tract.",
    )
    tractBgModel: TractBackgroundConfig = Field(
        default_factory=TractBackgroundConfig,
        description="Binning (binSize, badMaskPlanes, clipping) and fit (order, usePolynomial) of the tract "
        "backgrounds and difference backgrounds.",
    )
    minGoodBins: int = Field(
        3,
        ge=1,
        description="Fewest difference bins (pixels covered by both the visit and the reference) to match a "
        "visit; visits with fewer are left out of the outputs with a warning.",
    )


@dataclass
class _Warp:
    """One input warp: where it comes from and what it is."""

    index: int
    source: Any  # an Exposure or a deferred handle with .get()
    visit: int
    patch: int | None
    region: Box2I | None  # the patch's inner box (pixels counted for this warp), None: the whole warp

    @property
    def key(self) -> Any:
        return self.patch if self.patch is not None else ("bbox", self.region)

    def load(self) -> Exposure:
        exposure = self.source if isinstance(self.source, Exposure) else self.source.get()
        return _to_nanojansky(exposure)


def _to_nanojansky(exposure: Exposure) -> Exposure:
    """The exposure in nJy (itself when already in nJy; a calibrated copy otherwise)."""
    calib = exposure.photo_calib
    if calib is None or calib.calibration_mean == 1.0:
        return exposure
    out = exposure.copy()
    out.masked_image = calib.calibrate_image(exposure.masked_image)
    out.photo_calib = PhotoCalib(1.0)
    return out


def _valid_pixels(exposure: Exposure, bad_planes: Sequence[str]) -> np.ndarray:
    """Pixels with finite values and none of the bad planes set, shape (ny, nx), bool."""
    return np.isfinite(exposure.image) & ~exposure.mask.get_plane(bad_planes, missing_ok=True)


def _footprint_box(exposure: Exposure) -> Box2I | None:
    """The box of an exposure's pixels with data (finite, not NO_DATA), or None if it has none."""
    has_data = _valid_pixels(exposure, ["NO_DATA"])
    rows = np.flatnonzero(has_data.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(has_data.any(axis=0))
    x0, y0 = exposure.bbox.x0, exposure.bbox.y0
    return Box2I(x0 + int(cols[0]), y0 + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def _union(a: Box2I | None, b: Box2I | None) -> Box2I | None:
    if a is None:
        return b
    if b is None:
        return a
    return a.union(b)


class MatchBackgroundsTask(PipelineTask):
    """Match the backgrounds of a list of warped exposures to a reference visit.

    See the module docstring for the algorithm.

    Metadata: ``refVisitId``, ``refVisitAuto`` (chosen automatically), ``visitCount``, ``matchedVisitCount``
    (visits with outputs, the reference included), ``unmatchedVisitCount``, and per visit ``v``:
    ``visit_<v>_chi2`` (reduced chi^2 of the difference fit; 0 for the reference), ``visit_<v>_rms`` (RMS of
    the kept bins about the fit [nJy]), ``visit_<v>_nGoodBins`` (bins kept by the fit), ``visit_<v>_order``
    (polynomial degree used, -1 for an interpolated model), ``visit_<v>_meanOffset`` (mean of the model over
    the box of the visit's footprint [nJy]); with an automatic choice also ``visit_<v>_coverage`` (pixels with data /
    those of the best-covered visit), ``visit_<v>_pixelRms`` (clipped pixel noise [nJy]), ``visit_<v>_refChi2``
    (mean reduced chi^2 of the others fitted to it) and ``visit_<v>_refCost`` (the score; lowest wins).
    """

    ConfigClass = MatchBackgroundsConfig
    _DefaultName = "matchBackgrounds"
    config: MatchBackgroundsConfig

    # Quantum I/O -------------------------------------------------------------------------------------------

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:  # noqa: N802,N803
        """Read the skymap, defer the warps, match them, and write each output to the ref of its warp's
        (patch, visit)."""
        inputs = butlerQC.get(inputRefs)
        warps = sorted(inputs["warps"], key=lambda h: (int(h.data_id["patch"]), int(h.data_id["visit"])))
        result = self.run(warps, inputs["skyMap"], tractId=int(butlerQC.quantum.data_id["tract"]))
        for name in ("backgroundInfoList", "matchedImageList"):
            refs = {
                (int(ref.data_id["patch"]), int(ref.data_id["visit"])): ref for ref in getattr(outputRefs, name)
            }
            for obj, patch, visit in zip(getattr(result, name), result.patchIds, result.visitIds):
                ref = refs.get((patch, visit))
                if ref is None:
                    raise MatchBackgroundsError(
                        f"{name}: the quantum predicts no output for patch {patch}, visit {visit}."
                    )
                butlerQC.put(obj, ref)

    # The algorithm -----------------------------------------------------------------------------------------

    @timeMethod
    def run(
        self,
        warps: Sequence[Any],
        skyMap: SkyMap,  # noqa: N803
        *,
        visitIds: Sequence[int] | None = None,  # noqa: N803
        patchIds: Sequence[int] | None = None,  # noqa: N803
        tractId: int | None = None,  # noqa: N803
    ) -> Struct:
        """Match the backgrounds of warps to those of a reference visit, chosen automatically unless
        ``config.refVisitId`` is set.

        Parameters
        ----------
        warps : sequence of `Exposure` or deferred handles
            Warps of one tract (any number of visits and patches), ordered by patch then visit by convention;
            each an `Exposure` in the tract frame or an object whose ``get()`` returns one and whose
            ``data_id`` gives ``visit``, ``patch`` (and ``tract``).  Background not subtracted; nJy or with a
            `PhotoCalib`.
        skyMap : `SkyMap`
            The skymap of the warps.
        visitIds, patchIds : sequence of `int`, optional
            Visit and patch of each warp, overriding the handles' data IDs and the exposures' visit info / bbox.
        tractId : `int`, optional
            The tract; default from the handles' data IDs, or the only tract of the skymap.

        Returns
        -------
        result : `Struct`
            ``backgroundInfoList`` (`list` of `TractBackground`: each warp's visit's difference background
            [nJy]), ``matchedImageList`` (`list` of `Exposure`: matched warps [nJy]), ``visitIds`` and
            ``patchIds`` (`list` of `int`, those of each output), and ``refVisitId``.  Outputs follow the
            order of ``warps``; warps of visits that could not be matched are left out.

        Raises
        ------
        NoWorkFound
            If there are no warps.
        MatchBackgroundsError
            If ``config.refVisitId`` is not one of the warps' visits, or a warp's visit, patch or tract cannot
            be determined.
        """
        if len(warps) == 0:
            raise NoWorkFound("MatchBackgroundsTask: no warps to match.")
        entries, tract = self._identify(warps, skyMap, visitIds, patchIds, tractId)
        if self.config.refVisitId is None:
            ref_visit = self._chooseReference(entries, tract)
            self.metadata["refVisitAuto"] = True
        else:
            ref_visit = int(self.config.refVisitId)
            self.metadata["refVisitAuto"] = False
            self.log.info("using the configured reference visit %d", ref_visit)
        result = self._match(entries, tract, ref_visit)
        result.refVisitId = ref_visit
        return result

    @timeMethod
    def matchBackgrounds(
        self,
        warps: Sequence[Any],
        skyMap: SkyMap,  # noqa: N803
        refVisitId: int,  # noqa: N803
        *,
        visitIds: Sequence[int] | None = None,  # noqa: N803
        patchIds: Sequence[int] | None = None,  # noqa: N803
        tractId: int | None = None,  # noqa: N803
    ) -> Struct:
        """Match every visit's background to that of the reference visit ``refVisitId``.

        Builds the binned difference images ``reference - visit`` over the tract, fits a `TractBackground` to
        each, and adds its image to every warp of the visit.  Parameters, returns and errors as `run`
        (without ``refVisitId`` in the result).
        """
        if len(warps) == 0:
            raise NoWorkFound("MatchBackgroundsTask: no warps to match.")
        entries, tract = self._identify(warps, skyMap, visitIds, patchIds, tractId)
        return self._match(entries, tract, int(refVisitId))

    # Identification ----------------------------------------------------------------------------------------

    def _identify(
        self,
        warps: Sequence[Any],
        skyMap: SkyMap,  # noqa: N803
        visitIds: Sequence[int] | None,  # noqa: N803
        patchIds: Sequence[int] | None,  # noqa: N803
        tractId: int | None,  # noqa: N803
    ) -> tuple[list[_Warp], TractInfo]:
        for name, ids in (("visitIds", visitIds), ("patchIds", patchIds)):
            if ids is not None and len(ids) != len(warps):
                raise MatchBackgroundsError(f"{name} has {len(ids)} entries for {len(warps)} warps.")
        if tractId is None:
            tracts = {int(w.data_id["tract"]) for w in warps if hasattr(w, "data_id")}
            if len(tracts) > 1:
                raise MatchBackgroundsError(
                    f"the warps belong to several tracts {sorted(tracts)}; match one tract at a time."
                )
            if tracts:
                tractId = tracts.pop()
            elif len(skyMap) == 1:
                tractId = 0
            else:
                raise MatchBackgroundsError(
                    f"cannot tell the tract of the warps: skymap {skyMap.name!r} has {len(skyMap)} tracts; "
                    "pass tractId."
                )
        tract = skyMap[int(tractId)]
        by_outer = {patch.outer_bbox: patch for patch in tract}
        entries = []
        for i, warp in enumerate(warps):
            data_id = getattr(warp, "data_id", None)
            if visitIds is not None:
                visit = int(visitIds[i])
            elif data_id is not None:
                visit = int(data_id["visit"])
            elif isinstance(warp, Exposure) and warp.visit_info is not None and warp.visit_info.id is not None:
                visit = int(warp.visit_info.id)
            else:
                raise MatchBackgroundsError(
                    f"warp {i} has no visit: pass visitIds, deferred handles with data IDs, or exposures with "
                    "visit_info.id."
                )
            patch: int | None = None
            if patchIds is not None:
                patch = int(patchIds[i])
            elif data_id is not None:
                patch = int(data_id["patch"])
            elif isinstance(warp, Exposure) and warp.bbox in by_outer:
                patch = by_outer[warp.bbox].sequential_index
            region = tract.patch_info(patch).inner_bbox if patch is not None else None
            if region is None:
                self.log.warning(
                    "warp %d (visit %d): bbox %s is no patch's outer box; all its pixels are used", i, visit, warp.bbox
                )
            entries.append(_Warp(i, warp, visit, patch, region))
        return entries, tract

    # Reference choice --------------------------------------------------------------------------------------

    def _chooseReference(self, entries: list[_Warp], tract: TractInfo) -> int:  # noqa: N802
        """Bin every visit over the tract and return the visit of lowest cost (see the module docstring)."""
        config = self.config
        visits = sorted({e.visit for e in entries})
        if len(visits) == 1:
            self.log.info("only one visit (%d): it is the reference", visits[0])
            return visits[0]
        backgrounds = {v: TractBackground(tract.bbox, config=config.tractBgModel) for v in visits}
        for entry in entries:
            warp = entry.load()
            backgrounds[entry.visit].add_image(warp.masked_image, bbox=entry.region)
        pixels = {v: float(bg.counts.sum()) for v, bg in backgrounds.items()}
        best_cover = max(pixels.values())
        coverage = {v: pixels[v] / best_cover if best_cover > 0 else 0.0 for v in visits}
        pixel_var = {}
        for v, bg in backgrounds.items():
            good = bg.good
            pixel_var[v] = float(np.median((bg.variances * bg.counts)[good])) if good.any() else math.inf
        chi2 = {}
        for r in visits:
            values = []
            for v in visits:
                if v == r:
                    continue
                diff = backgrounds[r].binned_difference(backgrounds[v])
                if diff.good.sum() < config.minGoodBins:
                    continue
                try:
                    diff.fit()
                except NoUsableBinsError:
                    continue
                if math.isfinite(diff.chi2):
                    values.append(diff.chi2)
            chi2[r] = float(np.mean(values)) if values else math.inf
        min_var = min(pixel_var.values())
        finite_chi2 = [c for c in chi2.values() if math.isfinite(c) and c > 0]
        min_chi2 = min(finite_chi2) if finite_chi2 else math.nan
        costs = {}
        for v in visits:
            cov_cost = 1.0 - coverage[v]
            var_cost = 1.0 - math.sqrt(min_var / pixel_var[v]) if math.isfinite(pixel_var[v]) and min_var > 0 else 1.0
            chi2_cost = 1.0 - min_chi2 / chi2[v] if math.isfinite(chi2[v]) and chi2[v] > 0 else 1.0
            if not finite_chi2:
                chi2_cost = 0.0
            costs[v] = (
                config.bestRefWeightGlobalCoverage * cov_cost
                + config.bestRefWeightVariance * var_cost
                + config.bestRefWeightChi2 * chi2_cost
            )
            self.metadata[f"visit_{v}_coverage"] = coverage[v]
            self.metadata[f"visit_{v}_pixelRms"] = math.sqrt(pixel_var[v]) if math.isfinite(pixel_var[v]) else math.nan
            self.metadata[f"visit_{v}_refChi2"] = chi2[v] if math.isfinite(chi2[v]) else math.nan
            self.metadata[f"visit_{v}_refCost"] = costs[v]
        ref = min(visits, key=lambda v: (costs[v], v))
        self.log.info(
            "chose reference visit %d of %d (coverage %.3f, pixel rms %.3g nJy, mean chi2 %.3g, cost %.3f)",
            ref, len(visits), coverage[ref], math.sqrt(pixel_var[ref]), chi2[ref], costs[ref],
        )
        return ref

    # Matching ----------------------------------------------------------------------------------------------

    def _match(self, entries: list[_Warp], tract: TractInfo, ref_visit: int) -> Struct:
        config = self.config
        bg_config = config.tractBgModel
        visits = sorted({e.visit for e in entries})
        if ref_visit not in visits:
            raise MatchBackgroundsError(
                f"reference visit {ref_visit} has no warp among the inputs; visits: {visits}. Set refVisitId to one "
                "of them or to None (automatic choice)."
            )
        by_key: dict[Any, dict[int, _Warp]] = defaultdict(dict)
        for entry in entries:
            by_key[entry.key][entry.visit] = entry

        # Binned differences (reference - visit), patch by patch, and each visit's footprint box.
        differences = {v: TractBackground(tract.bbox, config=bg_config) for v in visits if v != ref_visit}
        footprints: dict[int, Box2I | None] = {v: None for v in visits}
        for key, group in by_key.items():
            ref_entry = group.get(ref_visit)
            ref_warp = ref_entry.load() if ref_entry is not None else None
            if ref_warp is not None:
                footprints[ref_visit] = _union(footprints[ref_visit], _footprint_box(ref_warp))
                ref_valid = _valid_pixels(ref_warp, bg_config.badMaskPlanes)
            for visit, entry in group.items():
                if visit == ref_visit:
                    continue
                warp = entry.load()
                footprints[visit] = _union(footprints[visit], _footprint_box(warp))
                if ref_warp is None:
                    continue
                common = warp.bbox.intersection(ref_warp.bbox)
                if common.is_empty:
                    continue
                valid = _valid_pixels(warp, bg_config.badMaskPlanes)[common.slices(warp.bbox)]
                valid &= ref_valid[common.slices(ref_warp.bbox)]
                diff = ref_warp.image[common.slices(ref_warp.bbox)] - warp.image[common.slices(warp.bbox)]
                diff = np.where(valid, diff, np.float32(np.nan)).astype(np.float32)
                differences[visit].add_image(MaskedImage(diff, xy0=common.xy0), bbox=entry.region)

        # Fits.
        models: dict[int, TractBackground] = {ref_visit: TractBackground.zero(tract.bbox, config=bg_config)}
        self._record(ref_visit, models[ref_visit], footprints[ref_visit])
        unmatched = []
        for visit, diff in differences.items():
            n_bins = int(diff.good.sum())
            footprint = footprints[visit]
            if n_bins < config.minGoodBins or footprint is None:
                self.log.warning(
                    "visit %d overlaps reference visit %d in %d background bins (< minGoodBins=%d): not matched, "
                    "its warps are left out",
                    visit, ref_visit, n_bins, config.minGoodBins,
                )
                unmatched.append(visit)
                continue
            try:
                diff.fit(domain=footprint.intersection(tract.bbox))
            except NoUsableBinsError as err:
                self.log.warning("visit %d: difference background fit failed (%s); not matched", visit, err)
                unmatched.append(visit)
                continue
            models[visit] = diff
            self._record(visit, diff, footprint)

        # Matched warps.
        backgrounds, matched, out_visits, out_patches = [], [], [], []
        for entry in entries:
            model = models.get(entry.visit)
            if model is None:
                continue
            warp = entry.load()
            out = warp.copy()
            if entry.visit != ref_visit:
                offset = model.get_image(out.bbox)
                image = out.image
                finite = np.isfinite(image)
                image[finite] += offset[finite]
            out.photo_calib = PhotoCalib(1.0)
            backgrounds.append(model)
            matched.append(out)
            out_visits.append(entry.visit)
            out_patches.append(entry.patch)
        self.metadata["refVisitId"] = ref_visit
        self.metadata["visitCount"] = len(visits)
        self.metadata["matchedVisitCount"] = len(models)
        self.metadata["unmatchedVisitCount"] = len(unmatched)
        self.log.info(
            "matched %d of %d visits to reference visit %d (%d warps)",
            len(models), len(visits), ref_visit, len(matched),
        )
        return Struct(
            backgroundInfoList=backgrounds, matchedImageList=matched, visitIds=out_visits, patchIds=out_patches
        )

    def _record(self, visit: int, model: TractBackground, footprint: Box2I | None) -> None:
        """Write a visit's fit diagnostics to the metadata."""
        self.metadata[f"visit_{visit}_chi2"] = float(model.chi2)
        self.metadata[f"visit_{visit}_rms"] = float(model.rms)
        self.metadata[f"visit_{visit}_nGoodBins"] = int(model.used.sum())
        self.metadata[f"visit_{visit}_order"] = -1 if model.order is None else int(model.order)
        mean = model.get_mean(footprint) if footprint is not None and model.is_fitted else 0.0
        self.metadata[f"visit_{visit}_meanOffset"] = mean
        self.log.debug(
            "visit %d: difference background order %s, chi2 %.3g, rms %.3g nJy, %d bins, mean offset %.4g nJy",
            visit, model.order, model.chi2, model.rms, int(model.used.sum()), mean,
        )
