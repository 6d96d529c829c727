"""Build the template of a detector from coadds: `GetTemplateTask`.

For one ``(visit, detector)`` the task reads the detector's pixel box and WCS (components of its
``calexp``, not the pixels) and, following ``lsst.ip.diffim.getTemplate.GetTemplateTask``:

1. finds, for every tract with coadd patches in the quantum, the tract-pixel box covered by the detector
   (its outline mapped through the two WCSs, grown by ``templateBorderSize`` pixels for the warping kernel);
2. mosaics the patches of the tract over that box: each patch's ``outer_bbox`` pixels first, then its
   ``inner_bbox`` on top, so every pixel comes from the patch that owns it and the patch borders only fill
   gaps (a missing neighbour);  the mosaic's PSF is realised on a ``psfGridSpacing`` grid from the PSF of the
   patch owning each grid point (`tasks.coadd.coadd_psf`);
3. warps the mosaic onto the detector's box and WCS (`tasks.image.warp_exposure`, flux conserving, PSF
   transformed);
4. merges the tracts: each detector pixel takes the first tract (lowest id) with data there; the PSF is that
   of the tract covering most pixels.

Pixels no coadd covers are ``NO_DATA`` (image and variance NaN).  The template is in the coadds' units (nJy)
with ``PhotoCalib(1.0)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

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

from .coadd import _remap_mask, coadd_psf
from .errors import TasksError
from .image import (
    Box2I,
    Exposure,
    FilterLabel,
    Mask,
    MaskedImage,
    PhotoCalib,
    warp_exposure,
)
from .image.skymap import SkyMap

__all__ = [
    "GetTemplateConfig",
    "GetTemplateConnections",
    "GetTemplateError",
    "GetTemplateTask",
]

_DIMENSIONS = ("instrument", "visit", "detector")


class GetTemplateError(TasksError, ValueError):
    """The coadds given to `GetTemplateTask` cannot be placed (no tract and patch, no WCS)."""


class GetTemplateConnections(
    PipelineTaskConnections,
    dimensions=_DIMENSIONS,
    defaultTemplates={"coaddName": "template"},
):
    calexp = Input(
        name="calexp",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        deferLoad=True,
        doc="The science exposure; only its bbox and wcs components are read.",
    )
    skyMap = Input(  # noqa: N815 - the LSST stack's name
        name="skyMap",
        storageClass="SkyMap",
        dimensions=("skymap",),
        doc="The skymap of the coadds.",
    )
    coaddExposures = Input(  # noqa: N815
        name="{coaddName}Coadd",
        storageClass="ExposureF",
        dimensions=("skymap", "tract", "patch", "band"),
        multiple=True,
        deferLoad=True,
        doc="Coadd patches overlapping the detector (only the overlapping pixels are read).",
    )
    template = Output(
        name="template",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="The coadds warped onto the detector's pixel grid (nJy).",
    )


class GetTemplateConfig(PipelineTaskConfig, pipelineConnections=GetTemplateConnections):
    """Configuration of `GetTemplateTask`."""

    templateBorderSize: int = Field(  # noqa: N815 - the LSST stack's name
        20,
        ge=0,
        description="Pixels added around the detector's outline in the tract frame before warping.",
    )
    warpingKernelName: str = Field(  # noqa: N815
        "lanczos3", description="Warping kernel: 'lanczos3' or 'bilinear'."
    )
    interpLength: int = Field(  # noqa: N815
        32,
        ge=1,
        description="Spacing [pixels] of the exactly computed pixel mapping of the warp.",
    )
    psfGridSpacing: int = Field(  # noqa: N815
        256,
        ge=16,
        description="Spacing [pixels] of the grids where the mosaic's and the template's PSFs are realised.",
    )
    outlinePoints: int = Field(  # noqa: N815
        8,
        ge=2,
        description="Points per detector edge mapped to the tract frame to find the box to read.",
    )


def _outline(bbox: Box2I, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points (x, y) along the edges of a box (pixel edges, parent coordinates), ``n`` per edge."""
    x0, x1 = bbox.x0 - 0.5, bbox.x1 - 0.5
    y0, y1 = bbox.y0 - 0.5, bbox.y1 - 0.5
    t = np.linspace(0.0, 1.0, n)
    xs = np.concatenate([x0 + t * (x1 - x0), np.full(n, x1), x1 - t * (x1 - x0), np.full(n, x0)])
    ys = np.concatenate([np.full(n, y0), y0 + t * (y1 - y0), np.full(n, y1), y1 - t * (y1 - y0)])
    return xs, ys


class _Coadd:
    """One coadd patch: an `Exposure` or a deferred handle, with its tract and patch."""

    def __init__(self, source: Any, tract: int, patch: int):
        self.source = source
        self.tract = tract
        self.patch = patch

    def bbox(self) -> Box2I:
        if isinstance(self.source, Exposure):
            return self.source.bbox
        return self.source.get(component="bbox")

    def read(self, box: Box2I) -> Exposure:
        if isinstance(self.source, Exposure):
            return self.source[box]
        return self.source.get(parameters={"bbox": box})


class GetTemplateTask(PipelineTask):
    """Warp the coadd patches overlapping a detector onto its pixel grid (see the module docstring).

    Metadata: ``numTracts`` and ``numPatches`` (used), ``coverageFraction`` (fraction of the detector's pixels
    with template data), ``tract_<id>.coverageFraction``.
    """

    ConfigClass = GetTemplateConfig
    _DefaultName = "getTemplate"

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:  # noqa: N802,N803
        inputs = butlerQC.get(inputRefs)
        handle = inputs["calexp"]
        bbox = handle.get(component="bbox")
        wcs = handle.get(component="wcs")
        coadds = inputs["coaddExposures"]
        data_ids = [h.data_id for h in coadds]
        physical = butlerQC.quantum.data_id.get("physical_filter") if hasattr(butlerQC.quantum.data_id, "get") else None
        result = self.run(
            coadds,
            bbox,
            wcs,
            inputs["skyMap"],
            dataIds=data_ids,
            physicalFilter=physical,
        )
        butlerQC.put(result, outputRefs)

    @timeMethod
    def run(
        self,
        coaddExposures: Sequence[Any],  # noqa: N803 - the LSST stack's names
        bbox: Box2I,
        wcs: WCS,
        skyMap: SkyMap,  # noqa: N803
        *,
        dataIds: Sequence[Any] | None = None,  # noqa: N803
        physicalFilter: str | None = None,  # noqa: N803
    ) -> Struct:
        """Build the template of a detector.

        Parameters
        ----------
        coaddExposures : sequence of `Exposure` or deferred handles
            Coadd patches (nJy, tract pixel grid).  Handles are read only over the detector's footprint
            (``get(parameters={"bbox": box})``; ``get(component="bbox")`` first).
        bbox : `Box2I`
            The detector's pixel box (parent coordinates).
        wcs : `astropy.wcs.WCS`
            The detector's WCS (parent pixel coordinates, origin 0).
        skyMap : `SkyMap`
            The skymap of the coadds.
        dataIds : sequence of mappings, optional
            ``tract`` and ``patch`` of each coadd; default the handles' ``data_id``.
        physicalFilter : `str`, optional
            Physical filter written in the template's `FilterLabel` (the band comes from the coadds).

        Returns
        -------
        result : `Struct`
            ``template`` (`Exposure` on ``bbox`` with ``wcs``, nJy, PSF, ``NO_DATA`` where no coadd covers).

        Raises
        ------
        NoWorkFound
            If no coadd overlaps the detector.
        GetTemplateError
            If a coadd's tract and patch are unknown.
        """
        config = self.config
        coadds = self._coadds(coaddExposures, dataIds)
        by_tract: dict[int, list[_Coadd]] = {}
        for coadd in coadds:
            by_tract.setdefault(coadd.tract, []).append(coadd)

        template: Exposure | None = None
        coverage: dict[int, int] = {}
        psf_of: dict[int, Any] = {}
        band = None
        n_patches = 0
        for tract_id in sorted(by_tract):
            mosaic, used = self._mosaic(skyMap[tract_id], by_tract[tract_id], bbox, wcs)
            if mosaic is None:
                continue
            n_patches += used
            band = band or (mosaic.filter.band if mosaic.filter is not None else None)
            warped = warp_exposure(
                mosaic,
                wcs,
                bbox,
                kernel=config.warpingKernelName,
                interp_length=config.interpLength,
                psf_grid_spacing=config.psfGridSpacing,
            )
            has_data = ~warped.mask.get_plane("NO_DATA") & np.isfinite(warped.image)
            coverage[tract_id] = int(has_data.sum())
            psf_of[tract_id] = warped.psf
            self.metadata[f"tract_{tract_id}.coverageFraction"] = float(has_data.mean())
            if template is None:
                template = warped
            else:
                self._merge(template, warped)
        if template is None or not any(coverage.values()):
            raise NoWorkFound(
                f"none of the {len(coadds)} coadd patches ({', '.join(sorted({f'tract {c.tract}' for c in coadds}))}) "
                f"covers the detector box {bbox}."
            )
        best = max(coverage, key=lambda t: (coverage[t], -t))
        nodata = template.mask.get_plane("NO_DATA") | ~np.isfinite(template.image)
        template.image[nodata] = np.nan
        template.variance[nodata] = np.nan
        template.mask.set_plane("NO_DATA", nodata)
        template.psf = psf_of[best]
        template.photo_calib = PhotoCalib(1.0)
        template.visit_info = None
        template.filter = FilterLabel(band=band, physical_filter=physicalFilter) if band or physicalFilter else None
        template.metadata = fits.Header()
        template.metadata["NTRACTS"] = (len(coverage), "tracts used for the template")
        template.metadata["NPATCHES"] = (
            n_patches,
            "coadd patches used for the template",
        )
        fraction = float((~nodata).mean())
        self.metadata["numTracts"] = len(coverage)
        self.metadata["numPatches"] = n_patches
        self.metadata["coverageFraction"] = fraction
        self.log.info(
            "template of %s from %d patches of %d tracts covers %.1f%%",
            bbox,
            n_patches,
            len(coverage),
            100 * fraction,
        )
        return Struct(template=template)

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _coadds(coadd_exposures: Sequence[Any], data_ids: Sequence[Any] | None) -> list[_Coadd]:
        if data_ids is not None and len(data_ids) != len(coadd_exposures):
            raise GetTemplateError(f"dataIds has {len(data_ids)} entries for {len(coadd_exposures)} coadds.")
        out = []
        for i, source in enumerate(coadd_exposures):
            data_id = data_ids[i] if data_ids is not None else getattr(source, "data_id", None)
            if data_id is None or "tract" not in data_id or "patch" not in data_id:
                raise GetTemplateError(
                    f"coadd {i} ({source!r}) has no tract and patch: pass dataIds=[{{'tract': ..., 'patch': ...}}, ...] "
                    "with in-memory exposures."
                )
            out.append(_Coadd(source, int(data_id["tract"]), int(data_id["patch"])))
        return sorted(out, key=lambda c: (c.tract, c.patch))

    def _mosaic(self, tract: Any, coadds: list[_Coadd], bbox: Box2I, wcs: WCS) -> tuple[Exposure | None, int]:
        """The tract-frame mosaic of ``coadds`` over the detector's footprint (None when they miss it)."""
        config = self.config
        xs, ys = _outline(bbox, config.outlinePoints)
        ra, dec = wcs.wcs_pix2world(xs, ys, 0)
        tx, ty = tract.sky_to_pixel(ra, dec)
        if not (np.isfinite(tx).all() and np.isfinite(ty).all()):
            return None, 0
        border = config.templateBorderSize
        region = Box2I.from_corners(
            int(math.floor(tx.min())) - border,
            int(math.floor(ty.min())) - border,
            int(math.ceil(tx.max())) + border,
            int(math.ceil(ty.max())) + border,
        )
        parts: list[tuple[_Coadd, Box2I, Box2I]] = []
        for coadd in coadds:
            patch = tract.patch_info(coadd.patch)
            stored = coadd.bbox()
            outer = stored.intersection(region)
            if outer.is_empty:
                continue
            inner = patch.inner_bbox.intersection(outer)
            parts.append((coadd, outer, inner))
        if not parts:
            return None, 0
        box = parts[0][1]
        for _, outer, _ in parts[1:]:
            box = box.union(outer)
        reads = [(coadd, coadd.read(outer), inner) for coadd, outer, inner in parts]
        planes = dict(reads[0][1].mask.planes)
        mask = Mask(box.shape, planes, xy0=box.xy0)
        for _, exposure, _ in reads:
            for name in exposure.mask.planes:
                mask.add_plane(name)
        no_data = np.int32(1 << mask.add_plane("NO_DATA"))
        image = np.full(box.shape, np.nan, dtype=np.float32)
        variance = np.full(box.shape, np.nan, dtype=np.float32)
        mask.array[...] = no_data
        all_bits = (1 << 31) - 1
        # Outer boxes first (fill gaps), then inner boxes: each pixel from the patch that owns it.
        for use_inner in (False, True):
            for _, exposure, inner in reads:
                target = inner if use_inner else exposure.bbox
                if target.is_empty:
                    continue
                src = exposure[target]
                dst = target.slices(box)
                have = np.isfinite(src.image)
                if not use_inner:
                    # A border pixel never replaces data already there.
                    have &= np.isnan(image[dst])
                image[dst] = np.where(have, src.image, image[dst])
                variance[dst] = np.where(have, src.variance, variance[dst])
                bits = _remap_mask(src.mask.array, src.mask.planes, mask.planes, all_bits)
                mask.array[dst] = np.where(have, bits, mask.array[dst])
        # PSF of the mosaic: at each grid point, the PSF of the patch whose inner box holds it.
        gx, gy = _psf_grid(box, config.psfGridSpacing)
        # Points in no inner box (border-only coverage) average the PSFs of the outer boxes holding them.
        owners = np.array([inner.contains_point(gx, gy) for _, _, inner in reads])
        outers = np.array([exposure.bbox.contains_point(gx, gy) for _, exposure, _ in reads])
        owners = np.where(owners.any(axis=0), owners, outers)
        psfs = [exposure.psf for _, exposure, _ in reads]
        psf = coadd_psf(psfs, [1.0] * len(reads), owners, gx, gy, box)
        first = reads[0][1]
        mosaic = Exposure(
            MaskedImage(image, mask, variance, xy0=box.xy0),
            wcs=tract.wcs,
            psf=psf,
            photo_calib=first.photo_calib,
            filter=first.filter,
        )
        return mosaic, len(reads)

    @staticmethod
    def _merge(template: Exposure, other: Exposure) -> None:
        """Fill the pixels of ``template`` without data from ``other`` (same box)."""
        missing = template.mask.get_plane("NO_DATA") | ~np.isfinite(template.image)
        fill = missing & ~other.mask.get_plane("NO_DATA") & np.isfinite(other.image)
        if not fill.any():
            return
        for name in other.mask.planes:
            template.mask.add_plane(name)
        template.image[fill] = other.image[fill]
        template.variance[fill] = other.variance[fill]
        bits = _remap_mask(other.mask.array, other.mask.planes, template.mask.planes, (1 << 31) - 1)
        template.mask.array[fill] = bits[fill]


def _psf_grid(bbox: Box2I, spacing: int) -> tuple[np.ndarray, np.ndarray]:
    nx = max(1, math.ceil(bbox.width / spacing))
    ny = max(1, math.ceil(bbox.height / spacing))
    gx = np.floor(bbox.x0 + (np.arange(nx) + 0.5) * bbox.width / nx)
    gy = np.floor(bbox.y0 + (np.arange(ny) + 0.5) * bbox.height / ny)
    xx, yy = np.meshgrid(gx, gy)
    return xx.ravel(), yy.ravel()
