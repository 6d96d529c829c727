"""Exceptions of the science tasks and the image model.

Every error a user can act on derives from `TasksError`; the ``butler`` command line prints its message
without a traceback.
"""

from __future__ import annotations

from butler.errors import ButlerError, FormatterError
from graph.errors import AlgorithmError

__all__ = [
    "CameraError",
    "FitsFormatError",
    "FocalPlaneBackgroundError",
    "ImageError",
    "IngestError",
    "InstrumentError",
    "IsrError",
    "MaskPlaneError",
    "MatchBackgroundsError",
    "NoUsableBinsError",
    "PsfMatchingError",
    "SkyCorrectionError",
    "SkyMapError",
    "SpatialCellError",
    "TasksError",
    "TooManyCosmicRaysError",
    "WarpingError",
]


class TasksError(ButlerError):
    """Base of the errors raised by `tasks`."""


class ImageError(TasksError, ValueError):
    """An image, mask or variance array has the wrong shape, type or origin."""


class MaskPlaneError(ImageError, KeyError):
    """A mask plane name is unknown, or a mask has no free bit for a new plane."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InstrumentError(TasksError):
    """An instrument is unknown, or its definition does not match the repository."""


class IngestError(TasksError):
    """A raw file could not be read or translated to dimension records."""


class IsrError(TasksError):
    """Instrument signature removal cannot process a raw (missing calibration or auxiliary data)."""


class SkyMapError(TasksError):
    """A skymap configuration is invalid, or a sky position is outside every tract."""


class CameraError(TasksError, LookupError):
    """A detector or amplifier is not part of a camera, or a camera description is invalid."""

    def __str__(self) -> str:  # KeyError-style quoting would hide the message
        return str(self.args[0]) if self.args else ""


class NoUsableBinsError(ImageError):
    """Too few background bins have enough unmasked pixels to fit a background."""


class FitsFormatError(TasksError, FormatterError):
    """A FITS file cannot be read as the dataset it should hold: truncated, damaged, or another layout."""


class SpatialCellError(TasksError, ValueError):
    """A spatial-cell candidate lies outside its cell set, is unknown, or has an invalid stamp size."""


class TooManyCosmicRaysError(AlgorithmError):
    """More pixels look like cosmic rays than ``RepairTask``'s ``cosmicray.maxCrFraction`` allows.

    Usually the PSF is much too wide (stars look sharp) or the image is not what it seems (a flat, a dark,
    a badly subtracted background).  ``metadata`` holds ``nCrPixels``, ``maxCrPixels`` and ``nPixels``.
    """

    def __init__(self, n_cr_pixels: int, max_cr_pixels: int, n_pixels: int) -> None:
        self.n_cr_pixels = int(n_cr_pixels)
        self.max_cr_pixels = int(max_cr_pixels)
        self.n_pixels = int(n_pixels)
        super().__init__(
            f"too many cosmic-ray pixels: {self.n_cr_pixels} of {self.n_pixels} "
            f"({100.0 * self.n_cr_pixels / max(self.n_pixels, 1):.2f}%) exceed the limit of {self.max_cr_pixels} "
            "(repair.cosmicray.maxCrFraction). Check the PSF (a PSF much wider than the stars makes them look "
            "sharp) and the input image, or raise maxCrFraction."
        )

    @property
    def metadata(self) -> dict:
        return {"nCrPixels": self.n_cr_pixels, "maxCrPixels": self.max_cr_pixels, "nPixels": self.n_pixels}


class WarpingError(ImageError):
    """An exposure cannot be resampled: unknown kernel, missing or non-celestial WCS, invalid grid spacing."""


class MatchBackgroundsError(TasksError, ValueError):
    """Warps cannot be background-matched as asked: the reference visit is not among them, or a warp's visit,
    patch or tract cannot be determined."""


class PsfMatchingError(TasksError, RuntimeError):
    """A PSF-matching kernel cannot be computed: too few usable kernel candidates (stars), an unsupported
    convolution mode, or a spatial solution that is singular.  A `RuntimeError`, as the LSST contract states."""


class FocalPlaneBackgroundError(ImageError):
    """A focal-plane background cannot be built or evaluated: an exposure without a detector, superpixel grids
    that differ, or no superpixel with enough usable pixels."""


class SkyCorrectionError(TasksError, ValueError):
    """A visit cannot be sky-corrected as configured: a detector without its sky frame (doSky), a sky frame or
    background that does not match its calexp, or no calexp at all."""
