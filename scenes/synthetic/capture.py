"""When each sensor fires and where the ego is then: format-agnostic capture plans.

A scene is `frames` keyframes `Rig.keyframe_interval_us` apart (nuScenes' 0.5 s, Waymo's
0.1 s), each with one LiDAR sweep at the keyframe time and one image per camera at that
time plus the camera's trigger delay, so that cameras of one keyframe fire at slightly
different times while the ego moves. `sweeps` extra captures of every sensor sit evenly
between consecutive keyframes. Dataset writers turn these events into their own files and tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..geometry import make_pose, yaw_pitch_roll_matrix
from .rig import Rig
from .world import World

KEYFRAME_INTERVAL_US = 500_000


@dataclass(frozen=True)
class CaptureEvent:
    """One firing of one sensor."""

    sensor: str
    """Sensor channel, e.g. CAM_FRONT or LIDAR_TOP."""
    modality: str
    """`camera` or `lidar`."""
    keyframe: int
    """Index of the keyframe this capture belongs to or follows."""
    sweep: int
    """0 for the keyframe capture, 1..sweeps for the captures after it."""
    offset_us: int
    """Time since the scene start, microseconds."""

    @property
    def is_keyframe(self) -> bool:
        return self.sweep == 0

    @property
    def t(self) -> float:
        """Time since the scene start, seconds (the world's clock)."""
        return self.offset_us / 1e6


def capture_plan(rig: Rig, frames: int, sweeps: int) -> list[CaptureEvent]:
    """Every capture of a scene, in time order (ties: LiDAR first, then rig order)."""
    if frames < 1:
        raise ConfigError(f"a scene needs at least one frame, got {frames}")
    if not 0 <= sweeps <= 9:
        raise ConfigError(f"sweeps must be between 0 and 9, got {sweeps}")
    events = []
    interval = rig.keyframe_interval_us
    for k in range(frames):
        for j in range(sweeps + 1 if k < frames - 1 else 1):
            base = k * interval + j * interval // (sweeps + 1)
            for lidar in rig.lidars:
                events.append(CaptureEvent(lidar.name, "lidar", k, j, base))
            for cam in rig.cameras:
                events.append(CaptureEvent(cam.name, "camera", k, j, base + cam.fire_offset_us))
    names = [lidar.name for lidar in rig.lidars] + [c.name for c in rig.cameras]
    order = {name: i for i, name in enumerate(names)}
    return sorted(events, key=lambda e: (e.offset_us, order[e.sensor]))


def scene_duration_s(frames: int, rig: Rig) -> float:
    """Seconds from the first to the last capture of a scene."""
    last_offset = max([c.fire_offset_us for c in rig.cameras]
                      + [getattr(m.spec, "spin_us", 0) for m in rig.lidars])
    return ((frames - 1) * rig.keyframe_interval_us + last_offset) / 1e6


def ego_to_world(world: World, t: float) -> np.ndarray:
    """Ego pose (4, 4) at time t seconds: on the ground (z = 0), heading along its lane."""
    s = world.ego.s(np.array([t]))
    x, y, heading = world.road.pose(s, np.array([world.ego.d]))
    return make_pose(yaw_pitch_roll_matrix(float(heading[0])), [float(x[0]), float(y[0]), 0.0])
