"""The teacher model and how it renders rays: the static field (plus the time-conditioned
dynamic one), the occupancy grid that says where along a ray the field is evaluated, and
`render_rays`. No losses, no optimiser (those are `fit.py`'s): rendering a fitted teacher
imports only this.

Devices: a teacher lives on one device (`Teacher.to`, `Teacher.device`); `render_rays`
works on whatever device its rays are on, which must be the teacher's. A fresh teacher is
built on the CPU (same initial weights and occupancy on every device) and then moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from distillprep.scenes.model import Scene
from distillprep.teachers.errors import TeacherDataError
from distillprep.teachers.volume.compositing import (
    composite,
    expected_depth,
    median_depth,
    render_weights,
)
from distillprep.teachers.volume.contraction import SceneBox

from .config import FitConfig
from .dynamic import DynamicField, blend, check_compatible
from .field import StaticField
from .rays import CameraRays, LidarRays
from .sampler import OccupancyGrid, RaySampling, resample


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

    @property
    def device(self) -> torch.device:
        """Where the teacher's fields and occupancy grid live."""
        return self.grid.occupied.device

    def to(self, device: str | torch.device) -> Teacher:
        """Move the fields and the occupancy grid to `device`, in place (as `Module.to`:
        the parameters stay the same objects, so build an optimiser after moving);
        returns the teacher."""
        self.field.to(device)
        if self.dynamic is not None:
            self.dynamic.to(device)
        self.grid.to(device)
        return self

    @torch.no_grad()
    def density_any_time(self, points: torch.Tensor) -> torch.Tensor:
        """Density (P,) at world points (P, 3): static, plus the dynamic field's highest
        at five times across the scene (what the occupancy grid must keep)."""
        sigma = self.field.density(points)[0]
        if self.dynamic is not None:
            times = torch.ones(len(points), device=points.device)
            sigma = sigma + torch.stack([self.dynamic.density(points, times * t)[0]
                                         for t in (0.0, 0.25, 0.5, 0.75, 1.0)]).amax(dim=0)
        return sigma


WEIGHT_EPSILON = 1e-4
"""Samples whose rendering weight is below this skip the colour head: their colour cannot
show (nor can its gradient reach the density) in the ray's result."""


def render_rays(teacher: Teacher, origins: torch.Tensor, directions: torch.Tensor,
                camera: torch.Tensor, times: torch.Tensor | None = None,
                sampling: RaySampling | None = None, offsets: torch.Tensor | None = None,
                ) -> dict[str, torch.Tensor]:
    """rgb (R, 3), opacity (R,), expected and median ray distance (R,) of unit rays (R)
    (origins, directions (R, 3) world) from camera ids (R,) at times (R,) seconds since the
    scene's first frame (needed with a dynamic field); with one, also `dynamic_sigma` (P,)
    of the samples taken. Every tensor on the teacher's device; results there too.

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
    sigma = torch.zeros(valid.shape, dtype=origins.dtype, device=origins.device)
    colors = torch.zeros(valid.shape + (3,), dtype=origins.dtype, device=origins.device)
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
    sigma = torch.zeros(samples.valid.shape, dtype=origins.dtype, device=origins.device)
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
                  sky: CameraRays | None = None, device: str | torch.device = "cpu",
                  ) -> Teacher:
    """A fresh teacher on `device`: scene box from the LiDAR returns, occupancy carved free
    along LiDAR rays, along the camera rays in `sky` marked as sky and, up to the LiDAR's
    range, along those marked silent (every 4th of each). Built on the CPU and then moved,
    so that its initial weights and occupancy are the same on every device."""
    torch.manual_seed(config.seed)
    returns = lidar.origins + lidar.directions * lidar.ranges[:, None]
    try:
        box = SceneBox.from_lidar(returns)
    except ValueError as exc:  # no returns, or all of them in one plane
        raise TeacherDataError(scene.scene_id, None, f"its LiDAR returns give no scene box "
                               f"to fit a teacher in: {exc}") from None
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
    teacher = Teacher(StaticField(config.model, box, len(scene.camera_names)), grid, config,
                      dynamic=dynamic, duration_s=scene_duration(scene))
    return teacher.to(device)
