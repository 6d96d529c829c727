"""Exposures: a masked image with everything needed to interpret it (WCS, PSF, calibration, metadata)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.io import fits

from ..errors import ImageError
from .camera import Detector
from .geom import Box2I
from .mask import Mask
from .masked_image import MaskedImage
from .photo_calib import PhotoCalib
from .visit_info import VisitInfo

if TYPE_CHECKING:
    from astropy.table import Table
    from astropy.wcs import WCS

    from .psf import Psf

__all__ = ["Exposure", "FilterLabel"]


@dataclass(frozen=True, slots=True)
class FilterLabel:
    """The filter of an exposure.

    Parameters
    ----------
    band : `str`, optional
        Abstract band (``"r"``), shared by instruments.
    physical_filter : `str`, optional
        Instrument-specific filter name (``"r-SDSS"``).
    """

    band: str | None = None
    physical_filter: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """JSON-safe representation."""
        return {"band": self.band, "physical_filter": self.physical_filter}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilterLabel:
        """Inverse of `to_dict`."""
        return cls(band=data.get("band"), physical_filter=data.get("physical_filter"))


class Exposure:
    """A masked image and its metadata.

    Parameters
    ----------
    masked_image : `MaskedImage`
        Pixels (shared, not copied).
    wcs : `astropy.wcs.WCS`, optional
        Celestial WCS of PARENT pixel coordinates, origin 0: ``wcs.pixel_to_world(x, y)`` with ``x, y``
        parent pixel indices (so a sub-exposure shares its parent's WCS unchanged).
    psf : `Psf`, optional
        Point-spread function model, in parent pixel coordinates.
    photo_calib : `PhotoCalib`, optional
        Photometric calibration (nJy per count).
    visit_info : `VisitInfo`, optional
        Observation metadata.
    detector : `Detector`, optional
        Camera geometry of the detector.
    filter : `FilterLabel`, optional
        Band and physical filter.
    metadata : `astropy.io.fits.Header`, optional
        Free-form header keywords; default empty.
    coadd_inputs : `astropy.table.Table`, optional
        For a coadd: one row per input visit (``AssembleCoaddTask`` writes ``visit``, ``weight``,
        ``psf_fwhm`` [arcsec], ``n_pixels``, ``n_clipped``); None for other exposures.  Persisted as the
        ``COADDINPUTS`` table of the FITS file (component ``coaddInputs``).
    """

    def __init__(
        self,
        masked_image: MaskedImage,
        *,
        wcs: WCS | None = None,
        psf: Psf | None = None,
        photo_calib: PhotoCalib | None = None,
        visit_info: VisitInfo | None = None,
        detector: Detector | None = None,
        filter: FilterLabel | None = None,  # noqa: A002 - LSST name
        metadata: fits.Header | None = None,
        coadd_inputs: Table | None = None,
    ) -> None:
        if not isinstance(masked_image, MaskedImage):
            raise ImageError(
                f"Exposure needs a MaskedImage, got {type(masked_image).__name__}; wrap arrays with "
                "MaskedImage(image, mask, variance, xy0=...)."
            )
        self.masked_image = masked_image
        self.wcs = wcs
        self.psf = psf
        self.photo_calib = photo_calib
        self.visit_info = visit_info
        self.detector = detector
        self.filter = filter
        self.metadata = fits.Header() if metadata is None else metadata
        self.coadd_inputs = coadd_inputs

    @classmethod
    def from_bbox(cls, bbox: Box2I, **kwargs: Any) -> Exposure:
        """An all-zero exposure covering ``bbox``; keyword arguments as for the constructor."""
        return cls(MaskedImage.from_bbox(bbox), **kwargs)

    @property
    def image(self) -> np.ndarray:
        """float32 pixel values, shape (ny, nx)."""
        return self.masked_image.image

    @property
    def mask(self) -> Mask:
        """The mask planes."""
        return self.masked_image.mask

    @property
    def variance(self) -> np.ndarray:
        """float32 per-pixel variance, shape (ny, nx)."""
        return self.masked_image.variance

    @property
    def bbox(self) -> Box2I:
        """Parent-coordinate pixel box."""
        return self.masked_image.bbox

    @property
    def xy0(self) -> tuple[int, int]:
        """Parent pixel coordinates (x0, y0) of ``image[0, 0]``."""
        return self.masked_image.xy0

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape (ny, nx)."""
        return self.masked_image.shape

    def _components(self) -> dict[str, Any]:
        return {
            "wcs": self.wcs,
            "psf": self.psf,
            "photo_calib": self.photo_calib,
            "visit_info": self.visit_info,
            "detector": self.detector,
            "filter": self.filter,
            "metadata": self.metadata,
            "coadd_inputs": self.coadd_inputs,
        }

    def __getitem__(self, box: Box2I) -> Exposure:
        """A sub-exposure over ``box`` (parent coordinates): a pixel view sharing every component."""
        return Exposure(self.masked_image[box], **self._components())

    def replace(self, masked_image: MaskedImage | None = None, **components: Any) -> Exposure:
        """A new exposure sharing this one's pixels and components (not copied) except those given.

        Parameters
        ----------
        masked_image : `MaskedImage`, optional
            New pixels (default: this exposure's, shared).
        **components
            Constructor keywords to replace: ``wcs``, ``psf``, ``photo_calib``, ``visit_info``, ``detector``,
            ``filter``, ``metadata``, ``coadd_inputs``.

        Raises
        ------
        TypeError
            For an unknown keyword.
        """
        unknown = set(components) - set(self._components())
        if unknown:
            raise TypeError(f"Exposure.replace got unknown component(s) {sorted(unknown)}.")
        return Exposure(self.masked_image if masked_image is None else masked_image,
                        **{**self._components(), **components})

    def copy(self) -> Exposure:
        """A deep copy (pixels, WCS, PSF, metadata and coadd inputs are copied)."""
        components = self._components()
        components["wcs"] = None if self.wcs is None else self.wcs.deepcopy()
        components["psf"] = copy.deepcopy(self.psf)
        components["metadata"] = self.metadata.copy()
        components["coadd_inputs"] = None if self.coadd_inputs is None else self.coadd_inputs.copy()
        return Exposure(self.masked_image.copy(), **components)

    def __repr__(self) -> str:
        parts = [f"bbox={self.bbox}"]
        if self.filter is not None:
            parts.append(f"filter={self.filter.band or self.filter.physical_filter}")
        if self.visit_info is not None and self.visit_info.id is not None:
            parts.append(f"visit={self.visit_info.id}")
        if self.detector is not None:
            parts.append(f"detector={self.detector.id}")
        return f"Exposure({', '.join(parts)})"
