"""Fitting the teacher to a scene: plain functions, no orchestration.

One step draws random camera rays (photometric loss, sky composited behind the field, sky
opacity on LiDAR-confirmed sky rays) and random LiDAR rays (expected-depth loss, scaled by
1/80 m as EmerNeRF does), renders them through the occupancy-culled samples and takes an
Adam step. With a dynamic field, its density adds to the static one (EmerNeRF's blend) and
a sparsity loss keeps it at zero wherever the static field explains the scene.

Devices: a fit runs where its teacher and rays are (`start_fit(..., device=)`); the ray
draws come from a numpy generator on the CPU whatever the device, so a resumed fit draws
the rays it would have drawn, on any device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from distillprep.scenes.model import Scene
from distillprep.teachers.errors import TeacherDivergedError
from distillprep.teachers.volume.compositing import distortion_loss

from .checkpoint import damaged
from .config import FitConfig
from .dynamic import sparsity_loss
from .rays import CameraRays, LidarRays, camera_rays, check_scene_for_fit, lidar_rays
from .sampler import OccupancyGrid
from .teacher import Teacher, build_teacher, render_rays

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

@dataclass
class TrainingRays:
    """What a fit draws its rays from: the rays as numpy, and as tensors on the fit's
    device."""

    camera: CameraRays
    lidar: LidarRays
    tensors: dict[str, torch.Tensor]
    """cam_o, cam_d (M, 3), rgb (M, 3), cam_id (M,), cam_t (M,) s, sky (M,) bool, lid_o,
    lid_d (K, 3), range (K,), lid_t (K,) s."""

    @staticmethod
    def of(scene: Scene, frames: list[int], config: FitConfig,
           device: str | torch.device = "cpu") -> TrainingRays:
        """The training rays of `frames` of `scene`, their tensors on `device`."""
        masks = config.sky_weight > 0 or config.silent_carve_quantile > 0
        cams = camera_rays(scene, frames, stride=config.pixel_stride,
                           sky=config.sky if masks else None)
        lidar = lidar_rays(scene, frames)
        t = {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in (
            ("cam_o", cams.origins), ("cam_d", cams.directions), ("rgb", cams.rgb),
            ("lid_o", lidar.origins), ("lid_d", lidar.directions), ("range", lidar.ranges),
            ("cam_t", cams.time_s), ("lid_t", lidar.time_s))}
        t["cam_id"] = torch.as_tensor(cams.camera_index, device=device)
        t["sky"] = torch.as_tensor(cams.sky, device=device)
        return TrainingRays(cams, lidar, t)

    @property
    def lidar_returns(self) -> np.ndarray:
        """(K, 3) world points the LiDAR hit."""
        return self.lidar.origins + self.lidar.directions * self.lidar.ranges[:, None]


@dataclass
class FitState:
    """Everything a fit needs to go on from where it stopped (what a checkpoint holds)."""

    teacher: Teacher
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator
    """Ray sampling; its state is saved, so a resumed fit draws the rays it would have."""
    step: int = 0
    """Steps taken so far."""
    wall_time_s: float = 0.0
    """Seconds spent in steps so far (over all runs of a resumed fit)."""


def start_fit(scene: Scene, frames: list[int], config: FitConfig,
              device: str | torch.device = "cpu") -> tuple[FitState, TrainingRays]:
    """A fresh fit of `frames` of `scene` (checked first) on `device`, at step 0, and its
    rays."""
    check_scene_for_fit(scene)
    rays = TrainingRays.of(scene, frames, config, device)
    teacher = build_teacher(scene, config, rays.lidar, rays.camera, device)
    return new_state(teacher), rays


def new_state(teacher: Teacher) -> FitState:
    """Step 0 of a fit of `teacher` (on its device): a fresh optimiser and ray sampler."""
    # fused: one pass over each parameter per step (1.4x faster steps here than foreach)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=teacher.config.learning_rate,
                                 eps=1e-15, fused=True)
    return FitState(teacher, optimizer, np.random.default_rng(teacher.config.seed))


def resume_state(checkpoint: Checkpoint) -> FitState:
    """The fit a checkpoint stopped in, ready to go on where its teacher was loaded to
    (`load_checkpoint(..., device=)`): the optimiser with its saved state, the ray sampler
    where it stopped, the step count and time so far."""
    state = new_state(checkpoint.teacher)
    try:
        state.optimizer.load_state_dict(checkpoint.optimizer_state)
        state.rng.bit_generator.state = checkpoint.rng_state
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise damaged(checkpoint.path, exc) from None
    state.step, state.wall_time_s = checkpoint.step, checkpoint.wall_time_s
    return state


def train_step(state: FitState, rays: TrainingRays) -> dict[str, torch.Tensor]:
    """One optimisation step on the teacher's device (where `rays` must be); returns its
    losses (detached, on that device). Ray indices and jitter are drawn on the CPU."""
    teacher, config, t = state.teacher, state.teacher.config, rays.tensors
    device, jitter = teacher.device, config.sampler.jitter

    def draw(high: int, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`count` ray indices below `high` and their jitter offsets (or None)."""
        pick = torch.as_tensor(state.rng.integers(0, high, count), device=device)
        if not jitter:
            return pick, None
        return pick, torch.as_tensor(state.rng.random(count), dtype=torch.float32,
                                     device=device)

    zero = torch.zeros((), device=device)
    cam, offsets = draw(len(t["cam_id"]), config.camera_rays)
    out = render_rays(teacher, t["cam_o"][cam], t["cam_d"][cam], t["cam_id"][cam],
                      t["cam_t"][cam], offsets=offsets)
    rgb_loss = ((out["rgb"] - t["rgb"][cam]) ** 2).mean()
    loss = rgb_loss
    distortion = sky_loss = depth_loss = sight_loss = dynamic_loss = zero
    if config.distortion_weight > 0:
        distortion = distortion_loss(out["weights"], out["t_start"], out["t_end"],
                                     config.distortion_scale_m).mean()
        loss = loss + config.distortion_weight * distortion
    if config.sky_weight > 0:
        sky = t["sky"][cam]
        if sky.any():  # BCE against opacity 0: -log(1 - opacity)
            sky_loss = -torch.log1p(-out["opacity"][sky].clamp(max=1.0 - 1e-6)).mean()
            loss = loss + config.sky_weight * sky_loss
    if config.lidar_rays:
        pick, offsets = draw(len(t["range"]), config.lidar_rays)
        lid = render_rays(teacher, t["lid_o"][pick], t["lid_d"][pick],
                          torch.zeros(len(pick), dtype=torch.long, device=device),
                          t["lid_t"][pick], offsets=offsets)
        depth_loss = (((lid["distance"] - t["range"][pick]) / 80.0) ** 2).mean()
        loss = loss + config.depth_weight * depth_loss
        if config.line_of_sight_weight > 0:  # empty before the return, nothing behind it
            stray = (lid["t_sample"] - t["range"][pick, None]).abs() > config.line_of_sight_margin
            sight_loss = (lid["weights"] * stray).sum(dim=-1).mean()
            loss = loss + config.line_of_sight_weight * sight_loss
    if teacher.dynamic is not None:
        none = zero.new_zeros(0)
        dynamic_loss = sparsity_loss(torch.cat([out.get("dynamic_sigma", none),
                                                lid.get("dynamic_sigma", none)
                                                if config.lidar_rays else none]))
        loss = loss + config.dynamic.sparsity_weight * dynamic_loss
    if not torch.isfinite(loss):
        raise TeacherDivergedError(state.step + 1, loss.item())
    _note_used_cells(teacher.grid, out, t["cam_o"][cam], t["cam_d"][cam])
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for group in state.optimizer.param_groups:
        group["lr"] = learning_rate(config, state.step)
    state.optimizer.step()
    state.step += 1
    sampler = config.sampler
    if (sampler.prune_every and state.step >= sampler.prune_after
            and state.step % sampler.prune_every == 0):
        teacher.grid.prune(teacher.density_any_time, seed=state.step)
        teacher.grid.mark_occupied(rays.lidar_returns)
    return {"loss": loss.detach(), "rgb_loss": rgb_loss.detach(),
            "depth_loss": depth_loss.detach(), "sky_loss": sky_loss.detach(),
            "dynamic_loss": dynamic_loss.detach(), "sight_loss": sight_loss.detach(),
            "distortion_loss": distortion.detach()}


def learning_rate(config: FitConfig, step: int) -> float:
    """The learning rate of step `step` (0-based) of a fit of `config.steps`."""
    progress = min(1.0, step / max(1, config.steps))
    return config.learning_rate * config.final_lr_ratio ** progress


USED_WEIGHT = 0.05
"""A sample with at least this rendering weight keeps its occupancy cell from pruning."""


@torch.no_grad()
def _note_used_cells(grid: OccupancyGrid, out: dict[str, torch.Tensor], origins: torch.Tensor,
                     directions: torch.Tensor) -> None:
    """Tell the grid where the camera rays (R) rendered in `out` put their weight."""
    ray_of, slot = (out["weights"] >= USED_WEIGHT).nonzero(as_tuple=True)
    grid.use(origins[ray_of] + directions[ray_of] * out["t_sample"][ray_of, slot, None])


def train(state: FitState, rays: TrainingRays, until_step: int, callback=None) -> FitState:
    """Step `state` until `until_step`; callback(step, record, teacher) every `log_every`
    steps and at the last one, with the losses; when it returns True the fit stops."""
    config = state.teacher.config
    while state.step < until_step:
        start = time.perf_counter()
        losses = train_step(state, rays)
        state.wall_time_s += time.perf_counter() - start
        if state.step % config.log_every == 0 or state.step == until_step:
            rgb = losses["rgb_loss"].item()
            record = {"step": state.step, "rgb_loss": rgb,
                      "psnr": -10 * np.log10(max(rgb, 1e-10)),
                      "depth_loss": losses["depth_loss"].item(),
                      "sky_loss": losses["sky_loss"].item(),
                      "dynamic_loss": losses["dynamic_loss"].item(),
                      "sight_loss": losses["sight_loss"].item(),
                      "distortion_loss": losses["distortion_loss"].item(),
                      "seconds": state.wall_time_s}
            state.teacher.history.append(record)
            if callback is not None and callback(state.step, record, state.teacher):
                break
    return state


def fit(scene: Scene, frames: list[int], config: FitConfig, callback=None,
        device: str | torch.device = "cpu") -> tuple[Teacher, CameraRays]:
    """Fit a teacher to `frames` of `scene` for `config.steps` on `device`; returns it
    and its training camera rays. callback as in `train`."""
    state, rays = start_fit(scene, frames, config, device)
    train(state, rays, config.steps, callback)
    return state.teacher, rays.camera
