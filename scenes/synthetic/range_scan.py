"""Range-image LiDARs (Waymo's): exact returns cast pixel by pixel through the very rays
Waymo's conventions give each range-image pixel (`scenes/waymo/range_image.py`), so that
a reader following those conventions recovers every point exactly.

A spinning laser (`spin_us` > 0, Waymo's TOP) fires its columns over one turn from the
frame time on: column c at t + (c + 0.5) / W * spin, in `chunks` groups that each fire
at their mid time from where the car is then; the pose range image records that pose
for each pixel. A laser with `spin_us` = 0 fires every column at the frame time (the
short-range lasers, for which Waymo gives no per-pixel pose).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..waymo.range_image import pixel_directions, row_inclinations
from .raycast import cast_rays
from .render import lidar_intensity
from .world import World


@dataclass(frozen=True)
class RangeImageSpec:
    """A laser that records a range image of beams (rows) x azimuths (columns)."""

    columns: int
    """Azimuth columns over 360 degrees."""
    inclination_range_deg: tuple[float, float]
    """Lowest and highest beam inclination, degrees."""
    elevations_deg: tuple[float, ...] = ()
    """Per-beam inclinations, ascending, degrees, written to the calibration; empty: `rows`
    uniform beams between the range's ends (Waymo's `compute_inclination`)."""
    rows: int = 0
    """Beams when `elevations_deg` is empty."""
    max_range: float = 75.0
    """Returns beyond this (metres) are dropped."""
    min_range: float = 1.0
    """Returns closer than this are dropped."""
    spin_us: int = 0
    """One turn, microseconds; 0: every column fires at the frame time."""
    chunks: int = 16
    """Column groups of a spinning laser, each fired from the car's pose at its time."""

    def inclinations(self) -> np.ndarray:
        """(H,) radians by row (row 0 highest)."""
        lo, hi = np.deg2rad(self.inclination_range_deg)
        listed = np.deg2rad(self.elevations_deg) if self.elevations_deg else None
        return row_inclinations(lo, hi, listed, len(self.elevations_deg) or self.rows)

    def with_beams(self, beams: int) -> RangeImageSpec:
        """Listed beams respaced to `beams` over the same range (uniform lasers unchanged)."""
        if not self.elevations_deg or len(self.elevations_deg) == beams:
            return self
        lo, hi = min(self.elevations_deg), max(self.elevations_deg)
        return replace(self, elevations_deg=tuple(float(v) for v in np.linspace(lo, hi, beams)))


@dataclass
class RangeScan:
    """A laser's exact first returns as a range image."""

    ranges: np.ndarray
    """(H, W) float32 metres along each pixel's ray; -1 where no return."""
    intensity: np.ndarray
    """(H, W) float32 in [0, 1]."""
    object_index: np.ndarray
    """(H, W) int32 world object hit; -1 for the ground or no return."""
    pixel_pose: np.ndarray | None
    """(H, W, 4, 4) vehicle -> world when each pixel fired (spinning lasers), else None."""


def cast_range_image(world: World, laser_to_ego: np.ndarray, spec: RangeImageSpec, t: float,
                     ego_at: Callable[[float], np.ndarray]) -> RangeScan:
    """The range image of a laser mounted at `laser_to_ego` (4, 4) fired from time t (s);
    `ego_at(t)` is the car's vehicle -> world pose (4, 4) at time t."""
    inclinations = spec.inclinations()
    rows, cols = len(inclinations), spec.columns
    local = pixel_directions(inclinations, cols, laser_to_ego)
    ranges = np.full((rows, cols), -1.0, np.float32)
    intensity = np.zeros((rows, cols), np.float32)
    objects = np.full((rows, cols), -1, np.int32)
    poses = np.zeros((rows, cols, 4, 4))
    chunks = spec.chunks if spec.spin_us else 1
    bounds = np.linspace(0, cols, chunks + 1).round().astype(int)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        when = t + (a + b) / (2 * cols) * spec.spin_us / 1e6
        ego = ego_at(when)
        sensor = ego @ laser_to_ego
        prims = world.primitives_at(when)
        origin = sensor[:3, 3]
        near = (np.linalg.norm(prims.center - origin, axis=1)
                < spec.max_range + prims.bounding_radius())
        dirs = local[:, a:b].reshape(-1, 3) @ sensor[:3, :3].T
        hits = cast_rays(prims.subset(near), origin, dirs)
        keep = np.isfinite(hits.t) & (hits.t <= spec.max_range) & (hits.t >= spec.min_range)
        shape = (rows, b - a)
        ranges[:, a:b] = np.where(keep, hits.t, -1.0).reshape(shape)
        intensity[:, a:b] = np.where(keep, lidar_intensity(world, hits, dirs) / 255.0,
                                     0.0).reshape(shape)
        objects[:, a:b] = np.where(keep, hits.obj, -1).reshape(shape)
        poses[:, a:b] = ego
    return RangeScan(ranges, intensity, objects, poses if spec.spin_us else None)
