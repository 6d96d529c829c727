"""`SimCamRawFormatter`: reads a SimCam raw FITS file as a `tasks.image.Exposure`.

The exposure keeps the raw layout (``bbox`` = the raw bbox with both amplifiers' overscans, pixel values
in ADU as float32) and carries the `Detector` (with amplifiers), a WCS computed from the camera geometry
and the boresight, the `VisitInfo`, the `FilterLabel` and the header as metadata.  The detector's known
bad columns are set in the ``BAD`` mask plane; the variance plane is zero (ISR sets it).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from astropy.io import fits
from astropy.time import Time, TimeDelta

from butler.errors import FormatterError
from butler.formatters import Formatter

from ...errors import IngestError
from ...image import Box2I, Exposure, FilterLabel, Mask, MaskedImage, VisitInfo
from ._camera import detector_defects, detector_wcs
from ._instrument import OBSERVATORY, SimCam

__all__ = ["SimCamRawFormatter", "exposure_from_raw_header"]

# Keywords describing the file's structure or its WCS: not copied to the exposure's metadata.
_STRUCTURAL = frozenset(
    {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO", "BSCALE", "PCOUNT", "GCOUNT"}
)


@functools.lru_cache(maxsize=1)
def _instrument() -> SimCam:
    return SimCam()


def _strip(header: fits.Header) -> fits.Header:
    from astropy.wcs import WCS

    wcs_keys = set(WCS(naxis=2).to_header()) | {"CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2",
                                                "CD1_1", "CD1_2", "CD2_1", "CD2_2", "CUNIT1", "CUNIT2",
                                                "RADESYS", "LONPOLE", "LATPOLE", "WCSAXES", "MJDREF"}
    out = fits.Header()
    for card in header.cards:
        key = card.keyword
        if key in _STRUCTURAL or key in wcs_keys or key.startswith(("PC1_", "PC2_", "CDELT")):
            continue
        out.append(card, end=True)
    return out


def exposure_from_raw_header(header: fits.Header, path: Path | str = "<header>") -> dict[str, Any]:
    """Build the non-pixel components of a SimCam raw from its header.

    Returns
    -------
    components : `dict`
        ``detector``, ``wcs``, ``visitInfo``, ``filter``, ``metadata`` and ``bbox`` (the raw bbox).

    Raises
    ------
    IngestError
        If a needed keyword is missing or invalid.
    """
    instrument = _instrument()
    info = instrument.translate_header(header, Path(path))
    detector = instrument.camera[info.detector]
    record = info.exposure
    rotation = float(header.get("ROTPA", 0.0))
    ra, dec = record["tracking_ra"], record["tracking_dec"]
    begin: Time = record["datetime_begin"]
    mid = begin + TimeDelta(record["exposure_time"] / 2.0, format="sec")
    airmass = header.get("AIRMASS")
    physical_filter = record["physical_filter"]
    visit_info = VisitInfo(
        date=mid,
        exposure_time=record["exposure_time"],
        airmass=None if airmass is None else float(airmass),
        boresight_ra_dec=(ra, dec),
        boresight_rot_angle=rotation,
        id=info.exposure_id,
        instrument=instrument.name,
        observatory=OBSERVATORY,
    )
    nx, ny = header.get("NAXIS1"), header.get("NAXIS2")
    bbox = detector.raw_bbox if nx is None or ny is None else Box2I(0, 0, int(nx), int(ny))
    return {
        "detector": detector,
        "wcs": detector_wcs(detector, ra, dec, rotation),
        "visitInfo": visit_info,
        "filter": FilterLabel(band=instrument.filters[physical_filter], physical_filter=physical_filter),
        "metadata": _strip(header),
        "bbox": bbox,
    }


class SimCamRawFormatter(Formatter):
    """Reads (and writes) SimCam raw FITS files as `Exposure` objects in the raw layout.

    Components ``wcs``, ``visitInfo``, ``detector``, ``filter``, ``metadata`` and ``bbox`` are read from
    the header alone; ``psf`` and ``photoCalib`` are always None for a raw.  Parameter ``bbox``
    (`Box2I`, raw pixel coordinates) reads a sub-image.
    """

    extension: ClassVar[str] = ".fits"
    supported_components: ClassVar[frozenset[str]] = frozenset(
        {"image", "mask", "variance", "wcs", "psf", "photoCalib", "visitInfo", "bbox", "detector", "filter", "metadata"}
    )
    supported_parameters: ClassVar[frozenset[str]] = frozenset({"bbox"})

    def read(self, path: Path, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        """Read the raw, or one component of it (see the class docstring).

        Raises
        ------
        FormatterError
            If the component or a parameter is unsupported, or the file is not a SimCam raw.
        """
        self.check_read_arguments(component, parameters)
        path = Path(path)
        try:
            with fits.open(path, memmap=False) as hdul:
                header = hdul[0].header.copy()
                parts = exposure_from_raw_header(header, path)
                if component in ("wcs", "visitInfo", "detector", "filter", "metadata", "bbox"):
                    return parts[component]
                if component in ("psf", "photoCalib"):
                    return None
                data = np.asarray(hdul[0].data, dtype=np.float32)
        except IngestError as err:
            raise FormatterError(f"cannot read {path} as a SimCam raw: {err}") from None
        raw_bbox = Box2I.from_shape(data.shape)
        mask = Mask(data.shape)
        for box, _kind in detector_defects(parts["detector"].id):
            mask.set_plane("BAD", box)  # SimCam data sections sit at their assembled positions
        exposure = Exposure(
            MaskedImage(data, mask),
            wcs=parts["wcs"],
            visit_info=parts["visitInfo"],
            detector=parts["detector"],
            filter=parts["filter"],
            metadata=parts["metadata"],
        )
        box = (parameters or {}).get("bbox")
        if box is not None:
            if not isinstance(box, Box2I) or not raw_bbox.contains(box):
                raise FormatterError(f"read parameter bbox={box!r} must be a Box2I inside the raw bbox {raw_bbox}.")
            exposure = exposure[box]
        if component == "image":
            return exposure.image
        if component == "mask":
            return exposure.mask
        if component == "variance":
            return exposure.variance
        return exposure

    def write(self, obj: Any, path: Path) -> None:
        """Write an exposure in the raw layout: its image (as float32) and metadata in one primary HDU.

        Raises
        ------
        FormatterError
            If ``obj`` is not an `Exposure` with SimCam raw metadata.
        """
        if not isinstance(obj, Exposure):
            raise FormatterError(f"SimCamRawFormatter writes Exposure objects, not {type(obj).__name__}.")
        header = obj.metadata.copy()
        if "INSTRUME" not in header:
            raise FormatterError(
                "the exposure's metadata has no SimCam raw keywords (INSTRUME, DETID...); cannot write it as a raw."
            )
        fits.PrimaryHDU(np.asarray(obj.image, dtype=np.float32), header=header).writeto(path, overwrite=True)
