"""Camera geometry: amplifiers, detectors and their positions on the focal plane.

Focal-plane coordinates are in mm; a detector's pixel axes are rotated by its ``yaw`` (counter-clockwise,
degrees) with respect to the focal-plane axes, and its bbox centre sits at ``focal_plane_center``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CameraError
from .geom import Box2I

__all__ = ["Amplifier", "Camera", "Detector"]


def _box_or_none(data: Any) -> Box2I | None:
    return None if data is None else Box2I.from_dict(data)


@dataclass(frozen=True, slots=True)
class Amplifier:
    """One amplifier (readout channel) of a detector.

    Parameters
    ----------
    name : `str`
        Amplifier name, unique within its detector (e.g. ``"C00"``).
    bbox : `Box2I`
        Data section in raw pixel coordinates.
    overscan_bbox : `Box2I` or None
        Serial overscan section in raw pixel coordinates.
    gain : `float`
        Gain [e- / ADU].
    read_noise : `float`
        Read noise [e-].
    saturation : `float`
        Saturation level [ADU].
    bias_level : `float`, optional
        Nominal bias level [ADU], when known.
    """

    name: str
    bbox: Box2I
    overscan_bbox: Box2I | None
    gain: float
    read_noise: float
    saturation: float
    bias_level: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe representation."""
        return {
            "name": self.name,
            "bbox": self.bbox.to_dict(),
            "overscan_bbox": None if self.overscan_bbox is None else self.overscan_bbox.to_dict(),
            "gain": float(self.gain),
            "read_noise": float(self.read_noise),
            "saturation": float(self.saturation),
            "bias_level": None if self.bias_level is None else float(self.bias_level),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Amplifier:
        """Inverse of `to_dict`."""
        return cls(
            name=str(data["name"]),
            bbox=Box2I.from_dict(data["bbox"]),
            overscan_bbox=_box_or_none(data.get("overscan_bbox")),
            gain=float(data["gain"]),
            read_noise=float(data["read_noise"]),
            saturation=float(data["saturation"]),
            bias_level=None if data.get("bias_level") is None else float(data["bias_level"]),
        )


@dataclass(frozen=True, slots=True)
class Detector:
    """One detector (CCD) of a camera and its place on the focal plane.

    Parameters
    ----------
    id : `int`
        Detector identifier (the registry's ``detector`` dimension value).
    name : `str`
        Detector name.
    bbox : `Box2I`
        Assembled (post-ISR) pixel box, normally with xy0 = (0, 0).
    focal_plane_center : `tuple` [`float`, `float`]
        Focal-plane position (x, y) [mm] of the centre of ``bbox``.
    yaw : `float`
        Rotation of the pixel axes with respect to the focal-plane axes [deg, counter-clockwise].
    pixel_size : `float`
        Pixel pitch [mm].
    purpose : `str`, optional
        ``"SCIENCE"``, ``"GUIDER"``, ``"WAVEFRONT"``...
    amplifiers : `tuple` [`Amplifier`, ...], optional
        The detector's amplifiers.
    raw_bbox : `Box2I`, optional
        Pixel box of the raw (unassembled, with overscans) image.
    """

    id: int
    name: str
    bbox: Box2I
    focal_plane_center: tuple[float, float]
    yaw: float
    pixel_size: float
    purpose: str = "SCIENCE"
    amplifiers: tuple[Amplifier, ...] = ()
    raw_bbox: Box2I | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", int(self.id))
        object.__setattr__(self, "focal_plane_center", tuple(float(v) for v in self.focal_plane_center))
        object.__setattr__(self, "yaw", float(self.yaw))
        object.__setattr__(self, "pixel_size", float(self.pixel_size))
        object.__setattr__(self, "amplifiers", tuple(self.amplifiers))
        if len(self.focal_plane_center) != 2:
            raise CameraError(f"detector {self.name!r}: focal_plane_center must be (x_mm, y_mm).")
        if not self.pixel_size > 0:
            raise CameraError(f"detector {self.name!r}: pixel_size must be > 0 mm, got {self.pixel_size}.")
        names = [amp.name for amp in self.amplifiers]
        if len(set(names)) != len(names):
            raise CameraError(f"detector {self.name!r} has duplicate amplifier names: {names}.")

    def get_amplifier(self, name: str) -> Amplifier:
        """The amplifier called ``name``.

        Raises
        ------
        CameraError
            If there is no such amplifier (the message lists the known ones).
        """
        for amp in self.amplifiers:
            if amp.name == name:
                return amp
        raise CameraError(
            f"detector {self.name!r} has no amplifier {name!r}; amplifiers: {[a.name for a in self.amplifiers]}."
        )

    def pixels_to_focal_plane(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Map pixel positions to focal-plane positions.

        Parameters
        ----------
        x, y : `float` or `numpy.ndarray`
            Pixel coordinates in this detector's (assembled) ``bbox`` frame [pixels].

        Returns
        -------
        fx, fy : `float` or `numpy.ndarray`
            Focal-plane coordinates [mm].
        """
        cx, cy = self.bbox.center
        dx = (np.asarray(x, dtype=float) - cx) * self.pixel_size
        dy = (np.asarray(y, dtype=float) - cy) * self.pixel_size
        c, s = math.cos(math.radians(self.yaw)), math.sin(math.radians(self.yaw))
        fx = self.focal_plane_center[0] + c * dx - s * dy
        fy = self.focal_plane_center[1] + s * dx + c * dy
        return _scalar(fx), _scalar(fy)

    def focal_plane_to_pixels(self, fx: Any, fy: Any) -> tuple[Any, Any]:
        """Inverse of `pixels_to_focal_plane`: focal-plane [mm] to pixel coordinates [pixels]."""
        dx = np.asarray(fx, dtype=float) - self.focal_plane_center[0]
        dy = np.asarray(fy, dtype=float) - self.focal_plane_center[1]
        c, s = math.cos(math.radians(self.yaw)), math.sin(math.radians(self.yaw))
        cx, cy = self.bbox.center
        x = cx + (c * dx + s * dy) / self.pixel_size
        y = cy + (-s * dx + c * dy) / self.pixel_size
        return _scalar(x), _scalar(y)

    def focal_plane_corners(self) -> np.ndarray:
        """Focal-plane positions [mm] of the bbox's pixel-edge corners, shape (4, 2), order of `Box2I.corners`."""
        corners = self.bbox.corners()
        fx, fy = self.pixels_to_focal_plane(corners[:, 0], corners[:, 1])
        return np.column_stack([fx, fy])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe representation."""
        return {
            "id": self.id,
            "name": self.name,
            "bbox": self.bbox.to_dict(),
            "focal_plane_center": list(self.focal_plane_center),
            "yaw": self.yaw,
            "pixel_size": self.pixel_size,
            "purpose": self.purpose,
            "amplifiers": [amp.to_dict() for amp in self.amplifiers],
            "raw_bbox": None if self.raw_bbox is None else self.raw_bbox.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Detector:
        """Inverse of `to_dict`."""
        return cls(
            id=int(data["id"]),
            name=str(data["name"]),
            bbox=Box2I.from_dict(data["bbox"]),
            focal_plane_center=tuple(data["focal_plane_center"]),  # type: ignore[arg-type]
            yaw=float(data.get("yaw", 0.0)),
            pixel_size=float(data["pixel_size"]),
            purpose=str(data.get("purpose", "SCIENCE")),
            amplifiers=tuple(Amplifier.from_dict(a) for a in data.get("amplifiers", ())),
            raw_bbox=_box_or_none(data.get("raw_bbox")),
        )


def _scalar(value: np.ndarray) -> Any:
    return float(value) if np.ndim(value) == 0 else value


class Camera:
    """A camera: named detectors on one focal plane.

    Parameters
    ----------
    name : `str`
        Camera name.
    detectors : iterable of `Detector`
        The detectors; ids and names must be unique.
    plate_scale : `float`
        Plate scale [arcsec / mm].

    Raises
    ------
    CameraError
        If two detectors share an id or a name.
    """

    def __init__(self, name: str, detectors: Iterable[Detector], plate_scale: float) -> None:
        self.name = str(name)
        self.plate_scale = float(plate_scale)
        self._by_id: dict[int, Detector] = {}
        self._by_name: dict[str, Detector] = {}
        for detector in detectors:
            if detector.id in self._by_id:
                raise CameraError(f"camera {self.name!r}: detector id {detector.id} is used twice.")
            if detector.name in self._by_name:
                raise CameraError(f"camera {self.name!r}: detector name {detector.name!r} is used twice.")
            self._by_id[detector.id] = detector
            self._by_name[detector.name] = detector

    def __getitem__(self, key: int | str) -> Detector:
        """The detector with id ``key`` (int) or name ``key`` (str).

        Raises
        ------
        CameraError
            If there is no such detector (the message lists the ids).
        """
        detector = self._by_name.get(key) if isinstance(key, str) else self._by_id.get(int(key))
        if detector is None:
            raise CameraError(
                f"camera {self.name!r} has no detector {key!r}; detector ids: {self.ids}, "
                f"names: {sorted(self._by_name)[:10]}{'...' if len(self._by_name) > 10 else ''}."
            )
        return detector

    def __contains__(self, key: object) -> bool:
        return key in self._by_name if isinstance(key, str) else key in self._by_id

    def __iter__(self) -> Iterator[Detector]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def ids(self) -> list[int]:
        """Detector ids in ascending order."""
        return sorted(self._by_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe representation."""
        return {
            "name": self.name,
            "plate_scale": self.plate_scale,
            "detectors": [d.to_dict() for d in self._by_id.values()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Camera:
        """Inverse of `to_dict`."""
        return cls(data["name"], (Detector.from_dict(d) for d in data["detectors"]), float(data["plate_scale"]))

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Camera):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Camera({self.name!r}, {len(self)} detectors, plate_scale={self.plate_scale} arcsec/mm)"
