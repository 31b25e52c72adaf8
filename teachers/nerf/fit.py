"""Fitting the teacher to a scene: plain functions, no orchestration.

One step draws random camera rays (photometric loss, sky composited behind the field, sky
opacity on LiDAR-confirmed sky rays) and random LiDAR rays (expected-depth loss, scaled by
1/80 m as EmerNeRF does), renders them through the occupancy-culled samples and takes an
Adam step. With a dynamic field, its density adds to the static one (EmerNeRF's blend) and
a sparsity loss keeps it at zero wherever the static field explains the scene.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from distillprep.scenes.model import Scene

from .contraction import SceneBox
from .dynamic import DynamicField, DynamicFieldConfig, blend, check_compatible, sparsity_loss
from .field import FieldConfig, StaticField
from .rays import CameraRays, LidarRays, camera_rays, check_scene_for_fit, lidar_rays
from .rendering import composite, distortion_loss, expected_depth, median_depth, render_weights
from .sampler import OccupancyGrid, RaySampling, SamplerConfig, resample
from .sky import SkyMaskConfig


@dataclass(frozen=True)
class FitConfig:
    """Optimisation of one scene's teacher."""

    model: FieldConfig = field(default_factory=FieldConfig)
    """The static field's sizes."""
    dynamic: DynamicFieldConfig | None = field(default_factory=DynamicFieldConfig)
    """The time-conditioned dynamic field (None: a static scene, no dynamic field; steps
    are then about 1.3x faster)."""
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
    final_lr_ratio: float = 0.1
    """The learning rate decays exponentially from `learning_rate` to this fraction of it
    at `steps` (1: constant); resuming with more `--steps` continues on the new schedule."""
    depth_weight: float = 1.0
    """Weight of the LiDAR expected-depth loss (on depth / 80 m)."""
    sky_weight: float = 0.01
    """Weight of the sky-opacity loss (BCE of opacity against 0 on LiDAR-confirmed sky
    rays; 0: off)."""
    sky: SkyMaskConfig = field(default_factory=SkyMaskConfig)
    """Which camera rays count as sky, or as swept by the LiDAR without a return."""
    silent_carve_quantile: float = 0.99
    """Camera rays the LiDAR swept without a return (`CameraRays.silent`) are carved free
    up to this quantile of the scene's LiDAR ranges, a conservative stand-in for the
    sensor's range (0: not carved)."""
    line_of_sight_weight: float = 0.1
    """Weight of the LiDAR line-of-sight loss: rendering weight of a LiDAR ray farther
    than `line_of_sight_margin` from its return (EmerNeRF: 0.1; 0: off)."""
    line_of_sight_margin: float = 1.0
    """Metres around a LiDAR return where its ray's weight belongs."""
    distortion_weight: float = 0.0
    """Weight of mip-NeRF 360's distortion loss on camera rays (nerfacto: 0.002; 0: off)."""
    distortion_scale_m: float = 20.0
    """Metres at which the distortion loss's normalized distance t / (t + scale) is 1/2."""
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
    dynamic: DynamicField | None = None
    """The dynamic field, when the config asks for one."""
    duration_s: float = 1.0
    """Seconds from the scene's first to its last frame: time 0..duration maps to 0..1."""

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.field.parameters()) + (
            list(self.dynamic.parameters()) if self.dynamic is not None else [])

    @torch.no_grad()
    def density_any_time(self, points: torch.Tensor) -> torch.Tensor:
        """Density (P,) at world points (P, 3): static, plus the dynamic field's highest
        at five times across the scene (what the occupancy grid must keep)."""
        sigma = self.field.density(points)[0]
        if self.dynamic is not None:
            sigma = sigma + torch.stack([
                self.dynamic.density(points, torch.full((len(points),), t))[0]
                for t in (0.0, 0.25, 0.5, 0.75, 1.0)]).amax(dim=0)
        return sigma


WEIGHT_EPSILON = 1e-4
"""Samples whose rendering weight is below this skip the colour head: their colour cannot
show (nor can its gradient reach the density) in the ray's result."""


def render_rays(teacher: Teacher, origins: torch.Tensor, directions: torch.Tensor,
                camera: torch.Tensor, times: torch.Tensor | None = None,
                sampling: RaySampling | None = None, offsets: torch.Tensor | None = None,
                ) -> dict[str, torch.Tensor]:
    """rgb (R, 3), opacity (R,), expected and median ray distance (R,) of unit rays (R) from
    camera ids (R,) at times (R,) seconds since the scene's first frame (needed with a
    dynamic field); with one, also `dynamic_sigma` (P,) of the samples taken.

    `sampling` says how many samples a ray gets (default: the training config's);
    `offsets` (R,) in [0, 1) jitter where in its interval each sample sits (training)."""
    sampling = sampling or teacher.config.sampler.rays
    samples = teacher.grid.sample(origins, directions, sampling, offsets)
    if sampling.fine_samples:
        samples = _fine_samples(teacher, samples, origins, directions, times, sampling)
    valid = samples.valid
    points_t = samples.t_point  # (R, S)
    ray_of, slot = valid.nonzero(as_tuple=True)  # the P valid samples
    points = origins[ray_of] + directions[ray_of] * points_t[ray_of, slot, None]
    field_, dynamic = teacher.field, teacher.dynamic
    sigma = torch.zeros(valid.shape, dtype=origins.dtype)
    colors = torch.zeros(valid.shape + (3,), dtype=origins.dtype)
    rays = field_.ray_features(directions, camera)
    out = {}
    if len(ray_of):
        s, feats = field_.density(points)
        if dynamic is not None:
            if times is None:
                raise ValueError("a teacher with a dynamic field renders rays at given times")
            s_d, feats_d = dynamic.density(points, times[ray_of] / teacher.duration_s)
            out["dynamic_sigma"] = s_d
            sigma = sigma.index_put((ray_of, slot), s + s_d)
        else:
            sigma = sigma.index_put((ray_of, slot), s)
    weights = render_weights(sigma, samples.t_start, samples.t_end)
    if len(ray_of):
        seen = weights.detach()[ray_of, slot] > WEIGHT_EPSILON
        seen_rays = rays[ray_of[seen]]
        rgb = field_.color(feats[seen], seen_rays)
        if dynamic is not None:
            _, rgb = blend(s[seen], rgb, s_d[seen], field_.color(feats_d[seen], seen_rays))
        colors = colors.index_put((ray_of[seen], slot[seen]), rgb)
    return {
        "rgb": composite(weights, colors, field_.sky(directions, rays)),
        "opacity": weights.sum(dim=-1),
        "distance": expected_depth(weights, points_t, normalize=True),
        "median_distance": median_depth(weights.detach(), points_t),
        "weights": weights,
        "t_sample": points_t,
        "t_start": samples.t_start,
        "t_end": samples.t_end,
        **out,
    }


@torch.no_grad()
def _fine_samples(teacher: Teacher, samples, origins, directions, times, sampling):
    """Hierarchical sampling: the field's own density on the occupied candidates, without
    gradients, decides where the samples that are rendered (and trained) go."""
    ray_of, slot = samples.valid.nonzero(as_tuple=True)
    points = origins[ray_of] + directions[ray_of] * samples.t_point[ray_of, slot, None]
    sigma = torch.zeros(samples.valid.shape, dtype=origins.dtype)
    if len(ray_of):
        s = teacher.field.density(points)[0]
        if teacher.dynamic is not None and times is not None:
            s = s + teacher.dynamic.density(points, times[ray_of] / teacher.duration_s)[0]
        sigma = sigma.index_put((ray_of, slot), s)
    weights = render_weights(sigma, samples.t_start, samples.t_end)
    return resample(samples, weights, sampling.fine_samples, sampling.uniform_mix)


def scene_duration(scene: Scene) -> float:
    """Seconds from the scene's first to its last frame (at least 1 ms)."""
    return max(1e-3, (scene.frames[-1].timestamp_us - scene.frames[0].timestamp_us) / 1e6)


def build_teacher(scene: Scene, config: FitConfig, lidar: LidarRays,
                  sky: CameraRays | None = None) -> Teacher:
    """A fresh teacher: scene box from the LiDAR returns, occupancy carved free along LiDAR
    rays, along the camera rays in `sky` marked as sky and, up to the LiDAR's range, along
    those marked silent (every 4th of each)."""
    torch.manual_seed(config.seed)
    returns = lidar.origins + lidar.directions * lidar.ranges[:, None]
    box = SceneBox.from_lidar(returns)
    grid = OccupancyGrid(config.sampler, box)
    grid.carve(lidar.origins, lidar.directions, lidar.ranges)
    if sky is not None and sky.sky.any():
        grid.carve_to_far(sky.origins[sky.sky][::4], sky.directions[sky.sky][::4])
    if sky is not None and sky.silent.any() and config.silent_carve_quantile > 0:
        reach = float(np.quantile(lidar.ranges, config.silent_carve_quantile))
        picked = np.flatnonzero(sky.silent)[::4]
        grid.carve(sky.origins[picked], sky.directions[picked], np.full(len(picked), reach),
                   step=0.5)
    # a moving object's cells were carved by rays of other times: keep every return's cell
    grid.mark_occupied(returns)
    dynamic = None
    if config.dynamic is not None:
        check_compatible(config.dynamic, config.model.geometry_features)
        dynamic = DynamicField(config.dynamic, box, scene_duration(scene), seed=config.seed + 1)
    return Teacher(StaticField(config.model, box, len(scene.camera_names)), grid, config,
                   dynamic=dynamic, duration_s=scene_duration(scene))


@dataclass
class TrainingRays:
    """What a fit draws its rays from, as float32 tensors."""

    camera: CameraRays
    lidar: LidarRays
    tensors: dict[str, torch.Tensor]
    """cam_o, cam_d (M, 3), rgb (M, 3), cam_id (M,), cam_t (M,) s, sky (M,) bool, lid_o,
    lid_d (K, 3), range (K,), lid_t (K,) s."""

    @staticmethod
    def of(scene: Scene, frames: list[int], config: FitConfig) -> TrainingRays:
        masks = config.sky_weight > 0 or config.silent_carve_quantile > 0
        cams = camera_rays(scene, frames, stride=config.pixel_stride,
                           sky=config.sky if masks else None)
        lidar = lidar_rays(scene, frames)
        t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in (
            ("cam_o", cams.origins), ("cam_d", cams.directions), ("rgb", cams.rgb),
            ("lid_o", lidar.origins), ("lid_d", lidar.directions), ("range", lidar.ranges),
            ("cam_t", cams.time_s), ("lid_t", lidar.time_s))}
        t["cam_id"] = torch.as_tensor(cams.camera_index)
        t["sky"] = torch.as_tensor(cams.sky)
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


class TeacherDivergedError(FloatingPointError):
    """The loss became NaN or infinite: the fit stops instead of writing garbage."""

    def __init__(self, step: int, value: float):
        super().__init__(f"loss became {value} at step {step}")
        self.step = step


def start_fit(scene: Scene, frames: list[int], config: FitConfig,
              ) -> tuple[FitState, TrainingRays]:
    """A fresh fit of `frames` of `scene` (checked first), at step 0, and its rays."""
    check_scene_for_fit(scene)
    rays = TrainingRays.of(scene, frames, config)
    teacher = build_teacher(scene, config, rays.lidar, rays.camera)
    return new_state(teacher), rays


def new_state(teacher: Teacher) -> FitState:
    # fused: one pass over each parameter per step (1.4x faster steps here than foreach)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=teacher.config.learning_rate,
                                 eps=1e-15, fused=True)
    return FitState(teacher, optimizer, np.random.default_rng(teacher.config.seed))


def train_step(state: FitState, rays: TrainingRays) -> dict[str, torch.Tensor]:
    """One optimisation step; returns its losses (detached)."""
    teacher, config, t = state.teacher, state.teacher.config, rays.tensors
    jitter = config.sampler.jitter
    pick = pick_cam = torch.as_tensor(
        state.rng.integers(0, len(t["cam_id"]), config.camera_rays))
    offsets = torch.as_tensor(state.rng.random(len(pick)), dtype=torch.float32) if jitter else None
    out = render_rays(teacher, t["cam_o"][pick], t["cam_d"][pick], t["cam_id"][pick],
                      t["cam_t"][pick], offsets=offsets)
    rgb_loss = ((out["rgb"] - t["rgb"][pick]) ** 2).mean()
    loss = rgb_loss
    distortion = torch.zeros(())
    if config.distortion_weight > 0:
        distortion = distortion_loss(out["weights"], out["t_start"], out["t_end"],
                                     config.distortion_scale_m).mean()
        loss = loss + config.distortion_weight * distortion
    sky_loss = torch.zeros(())
    if config.sky_weight > 0:
        sky = t["sky"][pick]
        if sky.any():  # BCE against opacity 0: -log(1 - opacity)
            sky_loss = -torch.log1p(-out["opacity"][sky].clamp(max=1.0 - 1e-6)).mean()
            loss = loss + config.sky_weight * sky_loss
    depth_loss = sight_loss = torch.zeros(())
    if config.lidar_rays:
        pick = torch.as_tensor(state.rng.integers(0, len(t["range"]), config.lidar_rays))
        offsets = (torch.as_tensor(state.rng.random(len(pick)), dtype=torch.float32)
                   if jitter else None)
        lid = render_rays(teacher, t["lid_o"][pick], t["lid_d"][pick],
                          torch.zeros(len(pick), dtype=torch.long), t["lid_t"][pick],
                          offsets=offsets)
        depth_loss = (((lid["distance"] - t["range"][pick]) / 80.0) ** 2).mean()
        loss = loss + config.depth_weight * depth_loss
        if config.line_of_sight_weight > 0:  # empty before the return, nothing behind it
            stray = (lid["t_sample"] - t["range"][pick, None]).abs() > config.line_of_sight_margin
            sight_loss = (lid["weights"] * stray).sum(dim=-1).mean()
            loss = loss + config.line_of_sight_weight * sight_loss
    dynamic_loss = torch.zeros(())
    if teacher.dynamic is not None:
        dynamic_loss = sparsity_loss(torch.cat([out.get("dynamic_sigma", torch.zeros(0)),
                                                lid.get("dynamic_sigma", torch.zeros(0))
                                                if config.lidar_rays else torch.zeros(0)]))
        loss = loss + config.dynamic.sparsity_weight * dynamic_loss
    if not torch.isfinite(loss):
        raise TeacherDivergedError(state.step + 1, loss.item())
    _note_used_cells(teacher.grid, out, t["cam_o"][pick_cam], t["cam_d"][pick_cam])
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


def fit(scene: Scene, frames: list[int], config: FitConfig,
        callback=None) -> tuple[Teacher, CameraRays]:
    """Fit a static teacher to `frames` of `scene` for `config.steps`; returns it and its
    training camera rays. callback as in `train`."""
    state, rays = start_fit(scene, frames, config)
    train(state, rays, config.steps, callback)
    return state.teacher, rays.camera
