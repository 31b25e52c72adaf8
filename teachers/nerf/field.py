"""The static neural field: hash-grid geometry, view-dependent colour with a per-camera
appearance embedding, and a sky head that sees only the view direction (EmerNeRF's
decomposition, static part; the time-conditioned dynamic field joins it later)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from distillprep.teachers.volume.contraction import SceneBox, contract

from .hash_grid import HashGrid, HashGridConfig

SKY_GRID = HashGridConfig(levels=8, features_per_level=2, log2_table_size=16,
                          base_resolution=16, max_resolution=512)
"""Sky directions: finest cell ~4 mrad, about a pixel of a 320-wide nuScenes camera."""


@dataclass(frozen=True)
class FieldConfig:
    """Sizes of the static field."""

    grid: HashGridConfig = field(default_factory=HashGridConfig)
    """The geometry hash grid."""
    hidden: int = 64
    """Width of every MLP."""
    geometry_features: int = 15
    """Features passed from the density MLP to the colour head."""
    direction_frequencies: int = 4
    """Sin/cos frequencies of the view-direction encoding."""
    appearance_dim: int = 8
    """Per-camera appearance embedding size (0: none)."""
    sky_grid: HashGridConfig | None = None
    """Hash grid over unit view directions feeding the sky head (e.g. `SKY_GRID`; None:
    the sin/cos direction encoding only, which cannot hold clouds). Off by default: it
    fits training skies better but did not raise held-out PSNR, and it can paint distant
    geometry onto the sky (worse depth in short fits)."""


def encode_direction(d: torch.Tensor, frequencies: int) -> torch.Tensor:
    """Unit directions (..., 3) -> (..., 3 + 6 * frequencies) with sin/cos features."""
    bands = 2.0 ** torch.arange(frequencies, device=d.device, dtype=d.dtype) * torch.pi
    scaled = d[..., None] * bands  # (..., 3, F)
    return torch.cat([d, torch.sin(scaled).flatten(-2), torch.cos(scaled).flatten(-2)], -1)


DENSITY_CLAMP = 15.0
"""Raw density outputs are clamped to this before the exponential (EmerNeRF's trunc_exp)."""


def density_activation(raw: torch.Tensor) -> torch.Tensor:
    """Density (1/m) from a raw MLP output: exp(min(raw, 15) - 1); density spans orders of
    magnitude, and the clamp keeps the exponential finite."""
    return torch.exp(raw.clamp(max=DENSITY_CLAMP) - 1.0)


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class StaticField(nn.Module):
    def __init__(self, config: FieldConfig, box: SceneBox, num_cameras: int):
        super().__init__()
        self.config, self.box = config, box
        self.num_cameras = num_cameras
        """Cameras of the scene (rows of the appearance embedding)."""
        self.grid = HashGrid(config.grid)
        self.density_mlp = _mlp(config.grid.output_dim, config.hidden,
                                1 + config.geometry_features)
        direction_dim = 3 + 6 * config.direction_frequencies
        self.appearance = nn.Embedding(max(1, num_cameras), max(1, config.appearance_dim))
        extra = config.appearance_dim
        self.color_mlp = nn.Sequential(
            nn.Linear(config.geometry_features + direction_dim + extra, config.hidden),
            nn.ReLU(), nn.Linear(config.hidden, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, 3))
        self.sky_grid = HashGrid(config.sky_grid, seed=2) if config.sky_grid is not None else None
        sky_grid_dim = config.sky_grid.output_dim if config.sky_grid is not None else 0
        self.sky_mlp = _mlp(direction_dim + extra + sky_grid_dim, config.hidden, 3)

    def density(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points (P, 3) world -> density (P,) 1/m and geometry features (P, G)."""
        raw = self.density_mlp(self.grid(contract(points, self.box)))
        return density_activation(raw[:, 0]), raw[:, 1:]

    def ray_features(self, directions: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """What the colour and sky heads see of a ray: encoded unit directions (R, 3) world
        and the appearance embedding of camera ids (R,); computed once per ray."""
        parts = [encode_direction(directions, self.config.direction_frequencies)]
        if self.config.appearance_dim:
            parts.append(self.appearance(camera))
        return torch.cat(parts, dim=-1)

    def color(self, features: torch.Tensor, ray_features: torch.Tensor) -> torch.Tensor:
        """Geometry features (P, G) and their rays' features (P, D) -> rgb (P, 3)."""
        return torch.sigmoid(self.color_mlp(torch.cat([features, ray_features], dim=-1)))

    def sky(self, directions: torch.Tensor, ray_features: torch.Tensor) -> torch.Tensor:
        """Sky colour (R, 3) of unit directions (R, 3) world with their ray features
        (R, D): view direction (and camera) only, no position."""
        if self.sky_grid is not None:  # the unit sphere inside the grid's [0, 1]^3
            ray_features = torch.cat([ray_features, self.sky_grid((directions + 1.0) / 2.0)],
                                     dim=-1)
        return torch.sigmoid(self.sky_mlp(ray_features))
