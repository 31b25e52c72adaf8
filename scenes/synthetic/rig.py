"""Sensor rigs of the synthetic ego car, in the ego frame (x forward, y left, z up).

`NUSCENES_RIG` mirrors nuScenes' car: six 1600x900 cameras and a 32-beam LIDAR_TOP whose
frame is turned -90 degrees about z (its x axis points to the car's right), with
positions, yaws and focal lengths close to the real calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import make_pose, yaw_pitch_roll_matrix
from .render import HDL32E, LidarSpec

# OpenCV camera axes expressed in a forward-looking body frame (x fwd, y left, z up).
_CV_IN_BODY = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class CameraSpec:
    name: str
    """Channel name, e.g. CAM_FRONT."""
    position: tuple[float, float, float]
    """Optical centre in the ego frame, metres."""
    yaw_deg: float
    """Viewing direction about ego z, degrees (0 = forward, 90 = left)."""
    pitch_deg: float
    """Downward tilt, degrees (positive looks down)."""
    focal_px: float
    """Focal length in pixels at the reference resolution."""
    reference_size: tuple[int, int] = (1600, 900)
    """(W, H) at which `focal_px` holds."""
    fire_offset_us: int = 0
    """Trigger delay after the LiDAR sweep time, microseconds."""

    def intrinsics(self, width: int, height: int) -> np.ndarray:
        """K (3, 3) at (width, height), pixel centres at integers (OpenCV)."""
        sx, sy = width / self.reference_size[0], height / self.reference_size[1]
        return np.array([[self.focal_px * sx, 0.0, (width - 1) / 2],
                         [0.0, self.focal_px * sy, (height - 1) / 2],
                         [0.0, 0.0, 1.0]])

    def cam_to_ego(self) -> np.ndarray:
        """(4, 4) OpenCV camera -> ego."""
        rot = yaw_pitch_roll_matrix(np.deg2rad(self.yaw_deg), np.deg2rad(self.pitch_deg))
        return make_pose(rot @ _CV_IN_BODY, np.asarray(self.position))


@dataclass(frozen=True)
class LidarMount:
    name: str
    position: tuple[float, float, float]
    yaw_deg: float
    spec: LidarSpec

    def sensor_to_ego(self) -> np.ndarray:
        return make_pose(yaw_pitch_roll_matrix(np.deg2rad(self.yaw_deg)),
                         np.asarray(self.position))


@dataclass(frozen=True)
class Rig:
    """A car's sensors: cameras in the dataset's canonical order and one or more LiDARs
    (all LiDARs fire at the sweep time; cameras at that time plus their trigger delay)."""

    cameras: tuple[CameraSpec, ...]
    lidars: tuple[LidarMount, ...]

    def camera(self, name: str) -> CameraSpec:
        return self._find(self.cameras, name)

    def lidar(self, name: str) -> LidarMount:
        return self._find(self.lidars, name)

    @staticmethod
    def _find(sensors, name):
        for sensor in sensors:
            if sensor.name == name:
                return sensor
        raise KeyError(f"no sensor {name!r} in the rig")


def _fire_offset(yaw_deg: float) -> int:
    # Cameras trigger as the LiDAR (20 Hz, 50 ms a turn) sweeps past their centre line;
    # the sweep time is stamped just before it passes the back camera.
    return int(round(((yaw_deg + 195.0) % 360.0) / 360.0 * 50_000))


NUSCENES_RIG = Rig(
    cameras=tuple(
        CameraSpec(name, pos, yaw, pitch, focal, fire_offset_us=_fire_offset(yaw))
        for name, pos, yaw, pitch, focal in (
            ("CAM_FRONT", (1.70, 0.02, 1.51), 0.0, 0.6, 1266.0),
            ("CAM_FRONT_RIGHT", (1.55, -0.49, 1.50), -55.0, 0.4, 1260.0),
            ("CAM_FRONT_LEFT", (1.52, 0.49, 1.51), 55.0, 0.5, 1272.0),
            ("CAM_BACK", (0.03, 0.01, 1.57), 180.0, 0.3, 809.0),
            ("CAM_BACK_LEFT", (1.04, 0.48, 1.56), 110.0, 0.7, 1256.0),
            ("CAM_BACK_RIGHT", (1.04, -0.48, 1.56), -110.0, 0.5, 1259.0),
        )
    ),
    lidars=(LidarMount("LIDAR_TOP", (0.94, 0.0, 1.84), -90.0, HDL32E),),
)
