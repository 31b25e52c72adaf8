"""The Waymo Open Dataset as typed records, independent of its container (v1 TFRecord of
`Frame` protos or v2 Parquet components): what `reader.py` turns into scenes.

Conventions are Waymo's own, converted only by the reader:
- `extrinsic` (4, 4) maps sensor -> vehicle; Waymo camera axes are x forward, y left,
  z up (`OPENCV_IN_WAYMO_CAMERA` turns them into OpenCV's).
- Vehicle poses (4, 4) map vehicle -> world; a camera image carries the vehicle pose at
  its own `pose_timestamp` (seconds).
- Camera intrinsics are Waymo's [f_u, f_v, c_u, c_v, k1, k2, p1, p2, k3] with pixel 0's
  left edge at u = 0 (its centre at 0.5), so OpenCV's cx is c_u - 0.5.
- Range images are (H, W, 4) float32: range (m, <= 0: no return), intensity, elongation,
  no-label-zone; row 0 is the highest beam; the TOP laser's pose range image (H, W, 6)
  holds each pixel's vehicle -> world pose as roll, pitch, yaw, x, y, z.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

CAMERA_NAMES = {1: "FRONT", 2: "FRONT_LEFT", 3: "FRONT_RIGHT", 4: "SIDE_LEFT", 5: "SIDE_RIGHT"}
"""Waymo CameraName enum -> name (0 is UNKNOWN)."""
LASER_NAMES = {1: "TOP", 2: "FRONT", 3: "SIDE_LEFT", 4: "SIDE_RIGHT", 5: "REAR"}
"""Waymo LaserName enum -> name (0 is UNKNOWN)."""
GLOBAL_SHUTTER = 5
"""CameraCalibration.RollingShutterReadOutDirection of a global shutter."""
OPENCV_IN_WAYMO_CAMERA = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
"""Columns: OpenCV's x (right), y (down), z (forward) in Waymo camera axes."""


@dataclass(frozen=True)
class CameraCalibration:
    """One camera's calibration (segment-wide)."""

    name: int
    """CameraName enum."""
    intrinsic: np.ndarray
    """(9,) f_u, f_v, c_u, c_v, k1, k2, p1, p2, k3."""
    extrinsic: np.ndarray
    """(4, 4) Waymo camera axes -> vehicle."""
    width: int
    """Image width, pixels."""
    height: int
    """Image height, pixels."""
    rolling_shutter_direction: int
    """RollingShutterReadOutDirection enum (5: global shutter)."""

    def opencv_intrinsics(self) -> np.ndarray:
        """K (3, 3) in OpenCV's pixel convention (pixel centres at integers)."""
        fu, fv, cu, cv = (float(v) for v in self.intrinsic[:4])
        return np.array([[fu, 0.0, cu - 0.5], [0.0, fv, cv - 0.5], [0.0, 0.0, 1.0]])

    def cam_to_vehicle(self) -> np.ndarray:
        """(4, 4) OpenCV camera axes -> vehicle."""
        out = np.array(self.extrinsic, dtype=np.float64)
        out[:3, :3] = out[:3, :3] @ OPENCV_IN_WAYMO_CAMERA
        return out


@dataclass(frozen=True)
class LaserCalibration:
    """One laser's calibration (segment-wide)."""

    name: int
    """LaserName enum."""
    extrinsic: np.ndarray
    """(4, 4) laser -> vehicle."""
    inclination_min: float
    """Lowest beam inclination, radians."""
    inclination_max: float
    """Highest beam inclination, radians."""
    inclinations: np.ndarray | None
    """(H,) per-beam inclinations, ascending, radians; None: uniform between min and max."""


@dataclass(frozen=True)
class CameraMeta:
    """What a frame says about one of its images, without the pixels."""

    name: int
    """CameraName enum."""
    pose: np.ndarray
    """(4, 4) vehicle -> world at `pose_timestamp`."""
    pose_timestamp: float
    """Seconds (Unix time) of the image's pose."""
    velocity: tuple[float, float, float, float, float, float] = (0.0,) * 6
    """Vehicle velocity at the image: linear v_x, v_y, v_z (m/s), angular w_x, w_y, w_z
    (rad/s), world frame."""
    shutter: float = 0.0
    """Rolling-shutter exposure time, seconds (0 for a global shutter)."""
    trigger_time: float = 0.0
    """Seconds (Unix time) the camera was triggered."""
    readout_done_time: float = 0.0
    """Seconds (Unix time) the readout finished."""


@dataclass(frozen=True)
class FrameMeta:
    """One frame's time, pose and sensors, without pixels or ranges."""

    timestamp_us: int
    """Frame time, microseconds."""
    pose: np.ndarray
    """(4, 4) vehicle -> world at the frame time."""
    cameras: tuple[CameraMeta, ...]
    """The frame's images, in the file's order."""
    lasers: tuple[int, ...]
    """LaserName enums of the frame's range images."""


@dataclass(frozen=True)
class RangeImages:
    """One laser's returns in one frame."""

    return1: np.ndarray
    """(H, W, 4) float32 first return."""
    return2: np.ndarray | None
    """(H, W, 4) float32 second return, if stored."""
    pose: np.ndarray | None
    """(H, W, 6) float32 per-pixel vehicle pose (TOP only)."""


class Segment(Protocol):
    """A segment opened from either container."""

    name: str
    """The segment's context name."""
    file: Path
    """The file errors name (v1: the TFRecord; v2: the dataroot)."""
    cameras: dict[int, CameraCalibration]
    lasers: dict[int, LaserCalibration]
    frames: list[FrameMeta]

    def jpeg(self, frame: int, camera: int) -> bytes:
        """The JPEG bytes of `camera`'s image in frame `frame` (index in `frames`)."""
        ...

    def range_images(self, frame: int, laser: int) -> RangeImages:
        """`laser`'s range images in frame `frame`."""
        ...

    def image_source(self, frame: int, camera: int) -> Path:
        """A path naming the image inside its container (provenance, ground truth)."""
        ...

    def laser_source(self, frame: int, laser: int) -> Path:
        """A path naming the range image inside its container."""
        ...


@dataclass(frozen=True)
class FrameData:
    """A whole frame, pixels and ranges included: what a writer puts in a container."""

    meta: FrameMeta
    """Time, pose and which sensors."""
    images: dict[int, bytes]
    """CameraName enum -> JPEG bytes (every camera of `meta.cameras`)."""
    ranges: dict[int, RangeImages]
    """LaserName enum -> range images (every laser of `meta.lasers`)."""


@dataclass(frozen=True)
class SegmentData:
    """A whole segment in memory (the synthetic writer's input to either container)."""

    name: str
    """Context name."""
    cameras: tuple[CameraCalibration, ...]
    """Calibrations in CameraName order."""
    lasers: tuple[LaserCalibration, ...]
    """Calibrations in LaserName order."""
    frames: tuple[FrameData, ...]
    """Frames in time order."""


def image_source(container: Path, camera: int, timestamp_us: int) -> Path:
    """The path naming one image inside the file that holds it (provenance and the
    synthetic ground truth's key): `<container>/<CAMERA>/<frame timestamp>.jpg`."""
    return Path(container) / CAMERA_NAMES[camera] / f"{timestamp_us}.jpg"


def laser_source(container: Path, laser: int, timestamp_us: int) -> Path:
    """The path naming one range image inside its file: `<container>/<LASER>/<timestamp>`."""
    return Path(container) / LASER_NAMES[laser] / str(timestamp_us)
