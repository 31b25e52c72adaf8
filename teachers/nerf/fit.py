"""Fitting the static teacher to a scene: plain functions, no orchestration.

One step draws random camera rays (photometric loss, sky composited behind the field)
and random LiDAR rays (expected-depth loss, scaled by 1/80 m as EmerNeRF does), renders
them through the occupancy-culled samples and takes an Adam step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from distillprep.scenes.model import Scene

from .contraction import SceneBox
from .field import FieldConfig, StaticField
from .rays import CameraRays, LidarRays, camera_rays, check_scene_for_fit, lidar_rays
from .rendering import composite, expected_depth, render_weights
from .sampler import OccupancyGrid, SamplerConfig


@dataclass(frozen=True)
class FitConfig:
    """Optimisation of one scene's teacher."""

    model: FieldConfig = field(default_factory=FieldConfig)
    """The field's sizes."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Ray sampling."""
    steps: int = 2000
    """Optimisation steps."""
    camera_rays: int = 4096
    """Camera rays per step."""
    lidar_rays: int = 1024
    """LiDAR rays per step."""
    learning_rate: float = 1e-2
    """Adam learning rate (EmerNeRF: 0.01, eps 1e-15)."""
    depth_weight: float = 1.0
    """Weight of the LiDAR expected-depth loss (on depth / 80 m)."""
    pixel_stride: int = 1
    """Train on every n-th pixel in both axes (1: all)."""
    seed: int = 0
    """Seed of initialisation and ray sampling."""
    log_every: int = 50
    """Steps between history records (and callback calls)."""


@dataclass
class Teacher:
    """A fitted (or fitting) teacher and what it was fitted on."""

    field: StaticField
    grid: OccupancyGrid
    config: FitConfig
    history: list[dict] = field(default_factory=list)


def render_rays(teacher: Teacher, origins: torch.Tensor, directions: torch.Tensor,
                camera: torch.Tensor) -> dict[str, torch.Tensor]:
    """rgb (R, 3), opacity (R,) and expected ray distance (R,) of unit rays (R)."""
    samples = teacher.grid.sample(origins, directions)
    mids = (samples.t_start + samples.t_end) / 2
    points = origins[:, None, :] + directions[:, None, :] * mids[..., None]
    flat = samples.valid.reshape(-1)
    sigma = torch.zeros(flat.shape, dtype=origins.dtype)
    colors = torch.zeros(flat.shape + (3,), dtype=origins.dtype)
    if flat.any():
        s, feats = teacher.field.density(points.reshape(-1, 3)[flat])
        sigma = sigma.masked_scatter(flat, s)
        ray_dirs = directions[:, None, :].expand_as(points).reshape(-1, 3)[flat]
        ray_cams = camera[:, None].expand(samples.valid.shape).reshape(-1)[flat]
        colors[flat] = teacher.field.color(feats, ray_dirs, ray_cams)
    sigma = sigma.reshape(samples.valid.shape)
    weights = render_weights(sigma, samples.t_start, samples.t_end)
    sky = teacher.field.sky(directions, camera)
    return {
        "rgb": composite(weights, colors.reshape(*samples.valid.shape, 3), sky),
        "opacity": weights.sum(dim=-1),
        "distance": expected_depth(weights, samples.t_start, samples.t_end, normalize=True),
    }


def build_teacher(scene: Scene, config: FitConfig, lidar: LidarRays) -> Teacher:
    torch.manual_seed(config.seed)
    box = SceneBox.from_lidar(lidar.origins + lidar.directions * lidar.ranges[:, None])
    grid = OccupancyGrid(config.sampler, box)
    grid.carve(lidar.origins, lidar.directions, lidar.ranges)
    return Teacher(StaticField(config.model, box, len(scene.camera_names)), grid, config)


def fit(scene: Scene, frames: list[int], config: FitConfig,
        callback=None) -> tuple[Teacher, CameraRays]:
    """Fit a static teacher to `frames` of `scene`; returns it and its training rays.

    callback(step, record, teacher) is called every `log_every` steps with the losses;
    when it returns True the fit stops there.
    """
    check_scene_for_fit(scene)
    cams = camera_rays(scene, frames, stride=config.pixel_stride)
    lidar = lidar_rays(scene, frames)
    teacher = build_teacher(scene, config, lidar)
    optimizer = torch.optim.Adam(teacher.field.parameters(), lr=config.learning_rate,
                                 eps=1e-15)
    rng = np.random.default_rng(config.seed)
    t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in (
        ("cam_o", cams.origins), ("cam_d", cams.directions), ("rgb", cams.rgb),
        ("lid_o", lidar.origins), ("lid_d", lidar.directions), ("range", lidar.ranges))}
    cam_id = torch.as_tensor(cams.camera_index)
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        pick = torch.as_tensor(rng.integers(0, len(cam_id), config.camera_rays))
        out = render_rays(teacher, t["cam_o"][pick], t["cam_d"][pick], cam_id[pick])
        rgb_loss = ((out["rgb"] - t["rgb"][pick]) ** 2).mean()
        loss = rgb_loss
        depth_loss = torch.zeros(())
        if config.lidar_rays:
            pick = torch.as_tensor(rng.integers(0, len(t["range"]), config.lidar_rays))
            lid = render_rays(teacher, t["lid_o"][pick], t["lid_d"][pick],
                              torch.zeros(len(pick), dtype=torch.long))
            depth_loss = (((lid["distance"] - t["range"][pick]) / 80.0) ** 2).mean()
            loss = loss + config.depth_weight * depth_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % config.log_every == 0 or step == config.steps:
            record = {"step": step, "rgb_loss": rgb_loss.item(),
                      "psnr": -10 * np.log10(max(rgb_loss.item(), 1e-10)),
                      "depth_loss": depth_loss.item(),
                      "seconds": time.perf_counter() - start}
            teacher.history.append(record)
            if callback is not None and callback(step, record, teacher):
                break
    return teacher, cams


@torch.no_grad()
def render_image(teacher: Teacher, scene: Scene, frame: int, camera: str,
                 chunk: int = 8192) -> dict[str, np.ndarray]:
    """Render one camera image of the scene: rgb (H, W, 3) in [0, 1], depth (H, W) along
    the camera z axis, opacity (H, W)."""
    rays = camera_rays(scene, [frame], cameras=[camera], with_rgb=False)
    out = {"rgb": [], "distance": [], "opacity": []}
    o = torch.as_tensor(rays.origins, dtype=torch.float32)
    d = torch.as_tensor(rays.directions, dtype=torch.float32)
    cam = torch.as_tensor(rays.camera_index)
    for s in range(0, len(o), chunk):
        part = render_rays(teacher, o[s:s + chunk], d[s:s + chunk], cam[s:s + chunk])
        for key in out:
            out[key].append(part[key].numpy())
    sample = scene.frames[frame].cameras[camera]
    h, w = sample.height, sample.width
    distance = np.concatenate(out["distance"])
    return {"rgb": np.concatenate(out["rgb"]).reshape(h, w, 3),
            "depth": (distance / rays.range_per_depth).reshape(h, w),
            "opacity": np.concatenate(out["opacity"]).reshape(h, w)}
