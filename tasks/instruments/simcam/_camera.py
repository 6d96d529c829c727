"""SimCam's hardware: a 3x3 mosaic of 1024x1024-pixel CCDs, two amplifiers each, 0.2 arcsec pixels.

Layout of a raw (``RAW_BBOX``, 1088 x 1024 pixels)::

    x:   0 ........ 511 | 512 ....... 1023 | 1024 .. 1055 | 1056 .. 1087
         C00 data         C01 data           C00 overscan   C01 overscan

so the data sections already sit at their assembled (post-ISR) positions and one WCS describes both the raw
and the assembled image.  Detector ``id = 3 * row + column`` is called ``S{row}{column}``; row 0 is at the
bottom (-y) of the focal plane and column 0 on the left (-x); detectors are 10.24 mm squares separated by
0.5 mm gaps.  The focal-plane x axis points West and y North on the sky when the rotation angle is 0.

Per-amplifier gains (1.5-2.0 e-/ADU), read noises (4.5-5.5 e-) and bias levels (980-1020 ADU) and the bad
columns of each detector are fixed tables below: they describe the camera, not one simulation.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.wcs import WCS

from ...image import Amplifier, Box2I, Camera, Detector

__all__ = [
    "AMP_WIDTH",
    "DETECTOR_SIZE",
    "DefectKind",
    "N_DETECTORS",
    "OVERSCAN_WIDTH",
    "PIXEL_SCALE",
    "PIXEL_SIZE",
    "PLATE_SCALE",
    "RAW_BBOX",
    "SATURATION",
    "detector_defects",
    "detector_wcs",
    "make_simcam_camera",
]

DETECTOR_SIZE = 1024  # pixels per side of the assembled detector
AMP_WIDTH = 512  # data columns per amplifier
OVERSCAN_WIDTH = 32  # serial overscan columns per amplifier
N_DETECTORS = 9
PIXEL_SIZE = 0.010  # mm (10 micron pixels)
PLATE_SCALE = 20.0  # arcsec / mm
PIXEL_SCALE = PIXEL_SIZE * PLATE_SCALE  # 0.2 arcsec / pixel
GAP = 0.5  # mm between detectors
SATURATION = 60000.0  # ADU (raw value, bias included)
DETECTOR_BBOX = Box2I(0, 0, DETECTOR_SIZE, DETECTOR_SIZE)
RAW_BBOX = Box2I(0, 0, DETECTOR_SIZE + 2 * OVERSCAN_WIDTH, DETECTOR_SIZE)

DefectKind = str  # "hot" (a large constant ADU offset) or "dead" (5% sensitivity)

# Bad columns per detector: (x0, width, y0, height, kind) in assembled pixel coordinates.  Hot columns add
# HOT_COLUMN_ADU to the raw; dead columns record 5% of the charge.
HOT_COLUMN_ADU = 2500.0
DEAD_COLUMN_RESPONSE = 0.05
_DEFECTS: dict[int, tuple[tuple[int, int, int, int, DefectKind], ...]] = {
    0: ((131, 1, 0, 1024, "hot"), (700, 1, 0, 1024, "dead"), (901, 2, 300, 724, "hot")),
    1: ((88, 1, 0, 1024, "dead"), (455, 1, 0, 1024, "hot")),
    2: ((250, 1, 0, 1024, "hot"), (611, 1, 0, 1024, "hot"), (990, 1, 512, 512, "dead")),
    3: ((47, 1, 0, 1024, "hot"), (777, 2, 0, 1024, "dead")),
    4: ((305, 1, 0, 1024, "hot"), (640, 1, 0, 1024, "dead"), (820, 1, 0, 400, "hot")),
    5: ((199, 1, 0, 1024, "dead"), (533, 1, 0, 1024, "hot")),
    6: ((402, 1, 0, 1024, "hot"), (860, 1, 0, 1024, "dead")),
    7: ((120, 2, 0, 1024, "hot"), (588, 1, 0, 1024, "dead"), (940, 1, 100, 924, "hot")),
    8: ((366, 1, 0, 1024, "hot"), (721, 1, 0, 1024, "hot")),
}


def _amp_parameters(detector_id: int, amp_index: int) -> tuple[float, float, float]:
    """Fixed (gain [e-/ADU], read noise [e-], bias level [ADU]) of one amplifier."""
    gain = 1.5 + 0.05 * ((7 * detector_id + 3 * amp_index) % 11)
    read_noise = 4.5 + ((5 * detector_id + 2 * amp_index) % 7) / 6.0
    bias = 980.0 + 10.0 * ((3 * detector_id + 5 * amp_index) % 5)
    return round(gain, 3), round(read_noise, 3), bias


def _amplifiers(detector_id: int) -> tuple[Amplifier, ...]:
    amps = []
    for index in range(2):
        gain, read_noise, bias = _amp_parameters(detector_id, index)
        amps.append(
            Amplifier(
                name=f"C0{index}",
                bbox=Box2I(index * AMP_WIDTH, 0, AMP_WIDTH, DETECTOR_SIZE),
                overscan_bbox=Box2I(DETECTOR_SIZE + index * OVERSCAN_WIDTH, 0, OVERSCAN_WIDTH, DETECTOR_SIZE),
                gain=gain,
                read_noise=read_noise,
                saturation=SATURATION,
                bias_level=bias,
            )
        )
    return tuple(amps)


def make_simcam_camera() -> Camera:
    """Build SimCam's camera geometry: 9 detectors ``S00``..``S22`` with two amplifiers each."""
    pitch = DETECTOR_SIZE * PIXEL_SIZE + GAP
    detectors = []
    for row in range(3):
        for col in range(3):
            det_id = 3 * row + col
            detectors.append(
                Detector(
                    id=det_id,
                    name=f"S{row}{col}",
                    bbox=DETECTOR_BBOX,
                    focal_plane_center=((col - 1) * pitch, (row - 1) * pitch),
                    yaw=0.0,
                    pixel_size=PIXEL_SIZE,
                    purpose="SCIENCE",
                    amplifiers=_amplifiers(det_id),
                    raw_bbox=RAW_BBOX,
                )
            )
    return Camera("SimCam", detectors, plate_scale=PLATE_SCALE)


def detector_defects(detector_id: int) -> list[tuple[Box2I, DefectKind]]:
    """The bad columns of a detector: (box in assembled pixel coordinates, ``"hot"`` or ``"dead"``)."""
    return [(Box2I(x0, y0, w, h), kind) for x0, w, y0, h, kind in _DEFECTS[int(detector_id)]]


def detector_wcs(detector: Detector, ra: float, dec: float, rotation: float = 0.0) -> WCS:
    """The TAN WCS of a detector for a boresight, from the camera geometry (no optical distortion).

    Parameters
    ----------
    detector : `Detector`
        Its focal-plane position and yaw place its pixels.
    ra, dec : `float`
        Boresight (focal-plane origin) [deg].
    rotation : `float`, optional
        Sky position angle of the focal-plane y axis, East of North [deg].

    Returns
    -------
    wcs : `astropy.wcs.WCS`
        Maps 0-based pixel coordinates of the detector (assembled frame; for SimCam also the raw frame
        of the data sections) to ICRS.
    """
    ox, oy = detector.focal_plane_to_pixels(0.0, 0.0)
    yaw = math.radians(detector.yaw)
    pix_to_fp = PIXEL_SIZE * np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    # focal plane (x West, y North) -> intermediate world coordinates (East, North) [deg]
    theta = math.radians(rotation)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    fp_to_iwc = rot @ np.diag([-1.0, 1.0]) * (PLATE_SCALE / 3600.0)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [float(ra), float(dec)]
    wcs.wcs.crpix = [float(ox) + 1.0, float(oy) + 1.0]
    wcs.wcs.cd = fp_to_iwc @ pix_to_fp
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.set()
    return wcs
