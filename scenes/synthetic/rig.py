"""Sensor rigs of the synthetic ego car, in the ego frame (x forward, y left, z up).

`NUSCENES_RIG` mirrors nuScenes' car: six 1600x900 cameras and a 32-beam LIDAR_TOP whose
frame is turned -90 degrees about z (its x axis points to the car's right), with
positions, yaws and focal lengths close to the real calibration.

`WAYMO_RIG` mirrors Waymo's: five cameras (three 1920x1280 in front, two 1920x886 at the
sides), a 64-beam TOP laser spinning at 10 Hz with non-uniform beam inclinations, and a
short-range FRONT laser with uniform ones; cameras fire as the TOP sweeps past them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import make_pose, yaw_pitch_roll_matrix
from .range_scan import RangeImageSpec
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
    spec: LidarSpec | RangeImageSpec

    def sensor_to_ego(self) -> np.ndarray:
        return make_pose(yaw_pitch_roll_matrix(np.deg2rad(self.yaw_deg)),
                         np.asarray(self.position))


@dataclass(frozen=True)
class Rig:
    """A car's sensors: cameras in the dataset's canonical order and one or more LiDARs
    (all LiDARs fire at the sweep time; cameras at that time plus their trigger delay)."""

    cameras: tuple[CameraSpec, ...]
    lidars: tuple[LidarMount, ...]
    reference_size: tuple[int, int] = (1600, 900)
    """(W, H) that a dataset's `--width/--height` stand for (its largest camera's)."""
    keyframe_interval_us: int = 500_000
    """Time between keyframes (nuScenes 2 Hz; Waymo labels every 10 Hz frame)."""

    def camera(self, name: str) -> CameraSpec:
        return self._find(self.cameras, name)

    def camera_size(self, camera: CameraSpec, width: int, height: int) -> tuple[int, int]:
        """(W, H) of `camera` when the rig's reference size is rendered at width x height."""
        sx, sy = width / self.reference_size[0], height / self.reference_size[1]
        return (round(camera.reference_size[0] * sx), round(camera.reference_size[1] * sy))

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


def _waymo_fire_offset(yaw_deg: float) -> int:
    # the TOP laser's column c (vehicle azimuth (1 - (2c + 1) / W) pi) fires at
    # (c + 0.5) / W of its 100 ms turn: a camera triggers as it passes the camera's axis
    return int(round((1.0 - yaw_deg / 180.0) / 2.0 * 100_000))


def _waymo_top_inclinations(beams: int = 64) -> tuple[float, ...]:
    # denser towards the horizon, as the real TOP's: -17.6 .. +2.4 degrees
    x = np.linspace(0.0, 1.0, beams)
    return tuple(float(v) for v in 2.4 - 20.0 * x[::-1] ** 1.4)


WAYMO_RIG = Rig(
    cameras=tuple(
        CameraSpec(name, pos, yaw, 0.5, 2055.0, size, _waymo_fire_offset(yaw))
        for name, pos, yaw, size in (
            ("FRONT", (1.54, -0.02, 2.12), 0.0, (1920, 1280)),
            ("FRONT_LEFT", (1.50, 0.09, 2.12), 45.0, (1920, 1280)),
            ("FRONT_RIGHT", (1.49, -0.10, 2.12), -45.0, (1920, 1280)),
            ("SIDE_LEFT", (1.43, 0.12, 2.12), 90.0, (1920, 886)),
            ("SIDE_RIGHT", (1.42, -0.12, 2.12), -90.0, (1920, 886)),
        )
    ),
    lidars=(
        LidarMount("TOP", (1.43, 0.0, 2.18), 12.0, RangeImageSpec(
            columns=1000, inclination_range_deg=(-17.6, 2.4),
            elevations_deg=_waymo_top_inclinations(), max_range=75.0, min_range=1.0,
            spin_us=100_000)),
        LidarMount("FRONT", (4.07, 0.0, 0.69), 0.0, RangeImageSpec(
            columns=300, inclination_range_deg=(-90.0, 30.0), rows=40, max_range=20.0,
            min_range=0.3)),
    ),
    reference_size=(1920, 1280),
    keyframe_interval_us=100_000,
)
"""Waymo's car at 10 Hz. Real range images are 64 x 2650 (TOP) and 200 x 600 (short
range); these are 64 x 1000 and 40 x 300 to keep synthesis fast."""
