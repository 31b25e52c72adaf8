"""The dynamic field: EmerNeRF's time-conditioned density beside the static one.

A 4D hash grid on (contracted position, normalised time) feeds a small density MLP that
returns a density and geometry features, exactly like `StaticField.density` but with time
as a fourth coordinate. The features go through the static field's colour head (one head
serves both, so the feature counts must match), and `blend` composes the two fields the
way EmerNeRF does: densities add, colour is the density-weighted mix. A sparsity
regulariser (`sparsity_loss`, weight `DynamicFieldConfig.sparsity_weight`) keeps the
dynamic density at zero wherever the static field can explain the scene, which is what
makes the decomposition emerge without labels.

No scene-flow head: in EmerNeRF the flow field mostly serves to aggregate features of
neighbouring times (sharper dynamic objects and temporally consistent foundation
features); here the compute budget goes to the static + dynamic decomposition itself, which
is what removes moving-object ghosts from the teacher's depth and virtual views.

Times: the field sees t in [0, 1], the scene's duration mapped onto the unit interval by
`normalise_times` (rays carry `time_s`, seconds since the scene's first frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from distillprep.teachers.errors import TeacherConfigError
from distillprep.teachers.volume.contraction import SceneBox, contract

from .field import density_activation
from .hash_grid import HashGrid, HashGridConfig


def _default_grid() -> HashGridConfig:
    return HashGridConfig(input_dim=4, levels=10, features_per_level=2, log2_table_size=17,
                          base_resolution=16, max_resolution=1024)


@dataclass(frozen=True)
class DynamicFieldConfig:
    """Sizes of the dynamic field (EmerNeRF's dynamic grid: 10 x 4, 32 -> 8192, 2^18; these
    defaults are sized for CPU cost)."""

    grid: HashGridConfig = field(default_factory=_default_grid)
    """The space-time hash grid; input_dim must be 4 (contracted xyz, then time in [0, 1])."""
    hidden: int = 64
    """Width of the density MLP."""
    geometry_features: int = 15
    """Features passed to the colour head; must equal the static field's."""
    sparsity_weight: float = 0.01
    """Weight of the dynamic density sparsity loss (EmerNeRF: 0.01)."""
    time_cell_s: float = 0.1
    """Seconds spanned by one cell of the grid's finest level along time (about the
    interval between camera captures: nuScenes' 12 Hz): a time between two captures then
    interpolates between cells both neighbours trained, instead of landing on cells no
    capture ever touched (0: time spans the finest level's full resolution)."""


class DynamicField(nn.Module):
    """Time-dependent density and geometry features; colour comes from the static head."""

    def __init__(self, config: DynamicFieldConfig, box: SceneBox, duration_s: float = 1.0,
                 seed: int = 1):
        super().__init__()
        if config.grid.input_dim != 4:
            raise TeacherConfigError(f"the dynamic field's grid needs input_dim 4 (xyz + t), "
                                     f"got "
                             f"{config.grid.input_dim}")
        self.config, self.box = config, box
        self.time_scale = time_scale(config, duration_s)
        """Normalised time is multiplied by this before the grid (see `time_scale`)."""
        self.grid = HashGrid(config.grid, seed=seed)
        self.density_mlp = nn.Sequential(
            nn.Linear(config.grid.output_dim, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, 1 + config.geometry_features))

    def density(self, points: torch.Tensor, times: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """points (P, 3) world and times (P,) normalised to [0, 1] -> density (P,) 1/m and
        geometry features (P, G)."""
        if times.shape != points.shape[:1]:
            raise ValueError(f"times {tuple(times.shape)} must be (P,) for points "
                             f"{tuple(points.shape)}")
        t = times.to(points.dtype)[:, None] * self.time_scale
        x = torch.cat([contract(points, self.box), t], dim=-1)
        raw = self.density_mlp(self.grid(x))
        return density_activation(raw[:, 0]), raw[:, 1:]


def time_scale(config: DynamicFieldConfig, duration_s: float) -> float:
    """Factor on normalised time (0..1 over `duration_s` seconds) so that a cell of the
    grid's finest level spans `config.time_cell_s` seconds; at most 1 (a short scene keeps
    the grid's own resolution)."""
    if config.time_cell_s <= 0:
        return 1.0
    return min(1.0, duration_s / (config.time_cell_s * config.grid.max_resolution))


def check_compatible(dynamic: DynamicFieldConfig, geometry_features: int) -> None:
    """Raise TeacherConfigError unless the dynamic field's features fit a colour head
    built for `geometry_features` (the static field's `FieldConfig.geometry_features`)."""
    if dynamic.geometry_features != geometry_features:
        raise TeacherConfigError(f"dynamic field has {dynamic.geometry_features} geometry "
                                 f"features, the static colour head takes {geometry_features}")


def blend(sigma_s: torch.Tensor, rgb_s: torch.Tensor, sigma_d: torch.Tensor,
          rgb_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """EmerNeRF's composition of static and dynamic samples: densities (...) add, colours
    (..., 3) mix weighted by density. Where both densities are 0 the colour is the plain
    average (it cannot show: such a sample has no rendering weight) and no gradient reaches
    the densities; elsewhere values and gradients are exact."""
    total = sigma_s + sigma_d
    positive = total > 0
    safe = torch.where(positive, total, torch.ones_like(total))
    share_d = torch.where(positive, sigma_d / safe, torch.full_like(total, 0.5))
    rgb = rgb_s + share_d[..., None] * (rgb_d - rgb_s)
    return total, rgb


def _blend_reference(sigma_s: np.ndarray, rgb_s: np.ndarray, sigma_d: np.ndarray,
                     rgb_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One sample at a time, written out plainly (tests only); inputs (N,), (N, 3)."""
    sigma = np.zeros(len(sigma_s))
    rgb = np.zeros((len(sigma_s), 3))
    for i in range(len(sigma_s)):
        sigma[i] = sigma_s[i] + sigma_d[i]
        if sigma[i] > 0:
            rgb[i] = (sigma_s[i] * rgb_s[i] + sigma_d[i] * rgb_d[i]) / sigma[i]
        else:
            rgb[i] = (rgb_s[i] + rgb_d[i]) / 2
    return sigma, rgb


def sparsity_loss(sigma_d: torch.Tensor) -> torch.Tensor:
    """EmerNeRF's dynamic density regulariser: the mean dynamic density (1/m) over the
    rendered samples (P,); weight it by `DynamicFieldConfig.sparsity_weight`."""
    return sigma_d.mean() if sigma_d.numel() else sigma_d.new_zeros(())


def normalise_times(time_s, duration_s: float):
    """Seconds since the scene's first frame (numpy array or tensor) -> [0, 1] (same type):
    t / duration, clamped (a time outside the scene takes its nearest end). A scene of
    duration 0 (one instant) maps to 0."""
    if duration_s < 0 or not np.isfinite(duration_s):
        raise ValueError(f"scene duration must be finite and >= 0, got {duration_s}")
    if isinstance(time_s, torch.Tensor):
        if duration_s == 0:
            return torch.zeros_like(time_s)
        return (time_s / duration_s).clamp(0.0, 1.0)
    time_s = np.asarray(time_s, dtype=np.float64)
    if duration_s == 0:
        return np.zeros_like(time_s)
    return np.clip(time_s / duration_s, 0.0, 1.0)
