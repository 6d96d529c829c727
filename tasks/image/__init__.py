"""The image model: pixel boxes, masks, masked images, exposures and their components.

Images are numpy arrays indexed ``[y, x]`` with float32 pixels; pixel centres sit at integer parent
coordinates and every object carries the parent coordinates ``xy0`` of its first pixel.  Skymaps
(tracts and patches with their WCS) live here too.
"""

from __future__ import annotations

from .background import Background, BackgroundList
from .camera import Amplifier, Camera, Detector
from .ccddata import from_ccddata, to_ccddata
from .exposure import Exposure, FilterLabel
from .focal_plane_background import FocalPlaneBackground, FocalPlaneBackgroundConfig
from .geom import Box2I
from .kernel import FixedKernel, Kernel, LinearCombinationKernel
from .mask import Mask
from .masked_image import MaskedImage
from .photo_calib import PhotoCalib
from .psf import GaussianPsf, PcaPsf, Psf
from .spatial_cells import CandidateStatus, PsfCandidate, SpatialCell, SpatialCellCandidate, SpatialCellSet
from .skymap import DiscreteSkyMap, PatchInfo, RingsSkyMap, SkyMap, TractInfo
from .tract_background import TractBackground, TractBackgroundConfig
from .visit_info import VisitInfo
from .warping import warp_exposure

__all__ = [
    "Amplifier",
    "Background",
    "BackgroundList",
    "Box2I",
    "Camera",
    "CandidateStatus",
    "Detector",
    "DiscreteSkyMap",
    "Exposure",
    "FilterLabel",
    "FixedKernel",
    "FocalPlaneBackground",
    "FocalPlaneBackgroundConfig",
    "GaussianPsf",
    "Kernel",
    "LinearCombinationKernel",
    "Mask",
    "MaskedImage",
    "PatchInfo",
    "PcaPsf",
    "PhotoCalib",
    "Psf",
    "PsfCandidate",
    "RingsSkyMap",
    "SkyMap",
    "SpatialCell",
    "SpatialCellCandidate",
    "SpatialCellSet",
    "TractBackground",
    "TractBackgroundConfig",
    "TractInfo",
    "VisitInfo",
    "from_ccddata",
    "to_ccddata",
    "warp_exposure",
]
