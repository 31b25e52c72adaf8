"""Public renderers of the synthetic world: camera views and LiDAR sweeps, exact.

`render_view` renders any pinhole camera (K, `cam_to_world` in OpenCV axes, a time) to
RGB, depth along the camera z axis and a sky mask, so later stages can score real and
virtual views against exact ground truth. `cast_lidar` returns exact LiDAR returns.
Time `t` is in seconds from the scene start (moving cars are where they are at t).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..projection import image_pixels, pixel_rays
from .raycast import Hits, cast_rays
from .shading import albedo, shade
from .world import World


@dataclass
class RenderedView:
    """What a camera sees, exactly."""

    rgb: np.ndarray
    """(H, W, 3) uint8."""
    depth: np.ndarray
    """(H, W) float32 metres along the camera z axis; 0 where the ray meets the sky."""
    sky: np.ndarray
    """(H, W) bool, True where the pixel sees the sky."""
    object_index: np.ndarray
    """(H, W) int32 world object index; -1 for ground and sky."""
    visible_pixels: np.ndarray | None = None
    """(objects,) pixels where each object is the first surface (on request)."""
    unoccluded_pixels: np.ndarray | None = None
    """(objects,) pixels each object would cover with nothing in front (on request)."""


@dataclass(frozen=True)
class LidarSpec:
    """A spinning multi-beam LiDAR."""

    elevations_deg: tuple[float, ...]
    """Beam elevations, degrees, ring order (ring 0 first)."""
    azimuth_step_deg: float = 0.3333
    """Horizontal resolution, degrees."""
    max_range: float = 70.0
    """Returns beyond this range (metres) are dropped."""
    min_range: float = 1.0
    """Returns closer than this are dropped."""

    def with_beams(self, beams: int) -> LidarSpec:
        """The spec with its beams respaced to `beams` over the same elevations."""
        if len(self.elevations_deg) == beams:
            return self
        lo, hi = min(self.elevations_deg), max(self.elevations_deg)
        return replace(self, elevations_deg=tuple(float(v) for v in np.linspace(lo, hi, beams)))


HDL32E = LidarSpec(tuple(float(v) for v in np.linspace(-30.67, 10.67, 32)))
"""Velodyne HDL-32E, nuScenes' LIDAR_TOP: 32 beams from -30.67 to +10.67 degrees."""


@dataclass
class LidarScan:
    """Exact returns of one sweep, in the sensor frame."""

    points: np.ndarray
    """(M, 3) float64 sensor frame."""
    intensity: np.ndarray
    """(M,) float32 in [0, 255]."""
    ring: np.ndarray
    """(M,) int beam index."""
    object_index: np.ndarray
    """(M,) int world object hit; -1 for the ground."""


def camera_rays(intrinsics: np.ndarray, cam_to_world: np.ndarray, width: int, height: int,
                offset: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Ray origin (1, 3) world and directions (H*W, 3) world with camera-frame z = 1, for
    every pixel centre (OpenCV convention) shifted by `offset` pixels (du, dv)."""
    origin, dirs = pixel_rays(intrinsics, cam_to_world,
                              image_pixels(width, height) + np.asarray(offset))
    return origin[None], dirs


def render_view(world: World, intrinsics: np.ndarray, cam_to_world: np.ndarray, t: float,
                width: int, height: int, supersample: int = 1,
                count_visibility: bool = False) -> RenderedView:
    """Render the world at time t (s) through a pinhole camera.

    intrinsics (3, 3) K; cam_to_world (4, 4) OpenCV axes (x right, y down, z forward).
    Depth and sky come from the ray through each pixel centre; with `supersample` = S > 1
    the colour averages S x S rays spread over the pixel (anti-aliasing).
    """
    prims = world.primitives_at(t)
    num_objects = len(world.objects) if count_visibility else None
    origin, dirs = camera_rays(intrinsics, cam_to_world, width, height)
    hits = cast_rays(prims, origin[0], dirs, num_objects=num_objects)
    if supersample > 1:
        color = np.zeros((width * height, 3))
        steps = (np.arange(supersample) + 0.5) / supersample - 0.5
        for dv in steps:
            for du in steps:
                o, d = camera_rays(intrinsics, cam_to_world, width, height, (du, dv))
                color += shade(world, cast_rays(prims, o[0], d), d)
        color /= supersample**2
    else:
        color = shade(world, hits, dirs)
    sky = hits.sky
    rgb = np.round(color * 255.0).astype(np.uint8).reshape(height, width, 3)
    depth = np.where(sky, 0.0, hits.t).astype(np.float32).reshape(height, width)
    view = RenderedView(rgb, depth, sky.reshape(height, width),
                        hits.obj.astype(np.int32).reshape(height, width))
    if count_visibility:
        view.visible_pixels = np.bincount(hits.obj[hits.obj >= 0], minlength=len(world.objects))
        view.unoccluded_pixels = hits.any_hit_counts
    return view


def lidar_directions(spec: LidarSpec) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions (M, 3) in the sensor frame and ring index (M,) of every beam firing;
    azimuth 0 along sensor +x, counter-clockwise about +z."""
    azimuth = np.deg2rad(np.arange(0.0, 360.0, spec.azimuth_step_deg))
    elevation = np.deg2rad(np.asarray(spec.elevations_deg))
    az, el = np.meshgrid(azimuth, elevation)
    dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1)
    ring = np.broadcast_to(np.arange(len(elevation))[:, None], az.shape)
    return dirs.reshape(-1, 3), ring.reshape(-1)


def cast_lidar(world: World, sensor_to_world: np.ndarray, t: float,
               spec: LidarSpec = HDL32E) -> LidarScan:
    """Exact returns of one sweep fired at time t from `sensor_to_world` (4, 4).

    All beams fire at the same instant (no rolling-shutter motion within a sweep), so
    every return is exact for that instant.
    """
    prims = world.primitives_at(t)
    origin = sensor_to_world[:3, 3]
    near = np.linalg.norm(prims.center - origin, axis=1) < spec.max_range + prims.bounding_radius()
    local_dirs, ring = lidar_directions(spec)
    dirs = local_dirs @ sensor_to_world[:3, :3].T
    hits: Hits = cast_rays(prims.subset(near), origin, dirs)
    keep = np.isfinite(hits.t) & (hits.t <= spec.max_range) & (hits.t >= spec.min_range)
    intensity = lidar_intensity(world, hits, dirs)
    return LidarScan(local_dirs[keep] * hits.t[keep, None], intensity[keep].astype(np.float32),
                     ring[keep], hits.obj[keep])


def lidar_intensity(world: World, hits: Hits, dirs: np.ndarray) -> np.ndarray:
    """(M,) return strength in [0, 255] of rays dirs (M, 3) unit world: the surface's
    albedo, dimmed at grazing incidence."""
    cos_incidence = np.abs((hits.normal * dirs).sum(axis=1))
    reflect = albedo(world, hits).mean(axis=1)
    return np.clip(255.0 * reflect * (0.3 + 0.7 * cos_incidence), 0.0, 255.0)
