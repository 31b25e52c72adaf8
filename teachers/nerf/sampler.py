"""Where along a ray to evaluate the field: an occupancy grid over contracted space that
starts fully occupied and is carved empty along LiDAR rays (free space the laser crossed),
then candidate samples spaced linearly near the scene box and by disparity beyond it, of
which the first `max_samples` in occupied cells are kept.

Cells no LiDAR ray crossed stay occupied, so geometry the LiDAR never saw (tall facades
above the top beam, far buildings) still gets samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .contraction import SceneBox, contract


@dataclass(frozen=True)
class SamplerConfig:
    """Ray sampling."""

    grid_resolution: int = 128
    """Cells per axis of the occupancy grid over the contracted cube."""
    candidates: int = 128
    """Candidate positions per ray before occupancy culling."""
    max_samples: int = 24
    """Samples kept per ray: the first ones that fall in occupied cells."""
    near: float = 0.1
    """Nearest ray distance, metres."""
    far: float = 1000.0
    """Farthest ray distance, metres."""
    carve_margin: float = 0.5
    """Metres short of each LiDAR return where carving stops."""
    spacing: str = "contracted"
    """Candidate spacing: "contracted" (linear inside the scene box, by disparity beyond)
    or "log" (a constant ratio: fine near the camera, where depth errors are relative)."""


@dataclass
class RaySamples:
    t_start: torch.Tensor
    """(R, K) interval starts, metres along the unit ray."""
    t_end: torch.Tensor
    """(R, K) interval ends."""
    valid: torch.Tensor
    """(R, K) bool: a real sample (False: padding, density treated as 0)."""


def candidate_edges(config: SamplerConfig, box_radius: float) -> np.ndarray:
    """(C + 1,) interval edges from near to far: "log" spacing, or uniform in s(t) = t / b
    below b = box radius and 2 - b / t beyond (linear near, by disparity far)."""
    if config.spacing == "log":
        return np.geomspace(config.near, config.far, config.candidates + 1)
    if config.spacing != "contracted":
        raise ValueError(f"sampler spacing {config.spacing!r}: use 'contracted' or 'log'")

    def s(t):
        return np.where(t < box_radius, t / box_radius, 2.0 - box_radius / t)

    def s_inv(v):
        return np.where(v < 1.0, v * box_radius, box_radius / np.maximum(2.0 - v, 1e-9))

    return s_inv(np.linspace(s(config.near), s(config.far), config.candidates + 1))


class OccupancyGrid:
    """Binary occupancy over the contracted unit cube."""

    def __init__(self, config: SamplerConfig, box: SceneBox):
        self.config, self.box = config, box
        r = config.grid_resolution
        self.occupied = torch.ones((r, r, r), dtype=torch.bool)

    def cells(self, points: torch.Tensor) -> torch.Tensor:
        """Flat cell index (...,) of world points (..., 3)."""
        r = self.config.grid_resolution
        ijk = (contract(points, self.box) * r).long().clamp(0, r - 1)
        return (ijk[..., 0] * r + ijk[..., 1]) * r + ijk[..., 2]

    def carve(self, origins: np.ndarray, directions: np.ndarray, ranges: np.ndarray,
              step: float = 0.25, chunk: int = 4096) -> float:
        """Mark free the cells that LiDAR rays (K) cross before their return; returns the
        fraction of cells left occupied."""
        flat = self.occupied.view(-1)
        for start in range(0, len(ranges), chunk):
            o = torch.as_tensor(origins[start:start + chunk], dtype=torch.float32)
            d = torch.as_tensor(directions[start:start + chunk], dtype=torch.float32)
            reach = torch.as_tensor(ranges[start:start + chunk], dtype=torch.float32)
            reach = reach - self.config.carve_margin
            steps = torch.arange(0.0, float(reach.max()) if len(reach) else 0.0, step)
            if len(steps) == 0:
                continue
            points = o[:, None, :] + d[:, None, :] * steps[None, :, None]
            free = steps[None, :] < reach[:, None]
            flat[self.cells(points[free])] = False
        return float(self.occupied.float().mean())

    def carve_to_far(self, origins: np.ndarray, directions: np.ndarray, steps: int = 1024,
                     chunk: int = 1024) -> float:
        """Mark free the cells that rays (K) with nothing along them (confirmed sky) cross
        from `near` to `far`, visiting points evenly spaced in the sampler's s-space (so
        the far, contracted cells are visited too); returns the fraction left occupied."""
        flat = self.occupied.view(-1)
        edges = candidate_edges(SamplerConfig(**{**self.config.__dict__, "candidates": steps}),
                                self.box_radius)
        mids = torch.as_tensor((edges[:-1] + edges[1:]) / 2, dtype=torch.float32)
        for start in range(0, len(origins), chunk):
            o = torch.as_tensor(origins[start:start + chunk], dtype=torch.float32)
            d = torch.as_tensor(directions[start:start + chunk], dtype=torch.float32)
            flat[self.cells(o[:, None, :] + d[:, None, :] * mids[None, :, None])] = False
        return float(self.occupied.float().mean())

    @property
    def box_radius(self) -> float:
        """Half the diagonal of the scene box, metres: where candidate spacing switches from
        linear to disparity."""
        return float(np.linalg.norm(np.subtract(self.box.upper, self.box.lower)) / 2)

    def mark_occupied(self, points: np.ndarray) -> None:
        """Mark occupied the cells holding points (N, 3) world (e.g. every LiDAR return:
        what something occupied at some time must stay samplable)."""
        flat = self.occupied.view(-1)
        flat[self.cells(torch.as_tensor(points, dtype=torch.float32))] = True

    def sample(self, origins: torch.Tensor, directions: torch.Tensor) -> RaySamples:
        """The first `max_samples` candidate intervals per ray (R) in occupied cells."""
        edges = torch.as_tensor(candidate_edges(self.config, self.box_radius),
                                dtype=origins.dtype)
        mids = (edges[:-1] + edges[1:]) / 2
        points = origins[:, None, :] + directions[:, None, :] * mids[None, :, None]
        occupied = self.occupied.view(-1)[self.cells(points)]  # (R, C)
        # Occupied candidates first, in distance order; padding after them (its density is
        # taken as 0, so where it sits along the ray does not matter).
        rank = torch.where(occupied, 0, 1) * len(mids) + torch.arange(len(mids))
        order = torch.argsort(rank, dim=1)[:, : self.config.max_samples]
        return RaySamples(edges[order], edges[order + 1], torch.gather(occupied, 1, order))
