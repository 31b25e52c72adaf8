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

from .contraction import SceneBox, contract, uncontract


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
    prune_every: int = 100
    """Steps between prunings of the grid by the field's own density (0: never)."""
    prune_after: int = 200
    """First step that prunes (before it the field is still mostly noise)."""
    prune_density: float = 0.01
    """Cells whose density (1/m) at a random point stays below this are marked free."""
    fine_samples: int = 0
    """Samples per ray re-drawn where a first, gradient-free pass through the occupied
    candidates put the weight (hierarchical sampling with the field as its own proposal;
    0: render the occupied candidates directly)."""
    uniform_mix: float = 0.05
    """Share of the fine samples spread over the occupied candidates regardless of weight."""
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


def resample(samples: RaySamples, weights: torch.Tensor, count: int, uniform_mix: float,
             jitter: torch.Generator | None = None) -> RaySamples:
    """`count` intervals per ray (R) drawn where `weights` (R, K) of `samples` lie.

    Each valid interval k gets probability p_k = (1 - m) w_k / sum w + m len_k / sum len
    (m = uniform_mix); the fine samples sit at the quantiles (j + 1/2) / count of that
    piecewise-uniform distribution (shifted by one random offset per ray with `jitter`),
    each with the width its interval's share implies, len_k / (count p_k), so that the
    fine intervals tile each coarse interval they fall in and never bridge a gap between
    two of them (clipped to the coarse interval). Rays without valid samples get none.
    """
    valid = samples.valid
    length = (samples.t_end - samples.t_start) * valid
    w = weights.detach().clamp_min(0.0) * valid
    w_sum = w.sum(dim=-1, keepdim=True)
    len_sum = length.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    p = torch.where(w_sum > 1e-8, (1.0 - uniform_mix) * w / w_sum.clamp_min(1e-12)
                    + uniform_mix * length / len_sum, length / len_sum)
    cdf = torch.cumsum(p, dim=-1)
    cdf = cdf / cdf[:, -1:].clamp_min(1e-12)
    offset = (torch.rand(len(p), 1, generator=jitter) if jitter is not None
              else torch.full((len(p), 1), 0.5))
    u = ((torch.arange(count, dtype=p.dtype) + offset) / count).clamp(1e-6, 1.0 - 1e-6)
    k = torch.searchsorted(cdf, u).clamp(max=p.shape[1] - 1)
    before = torch.where(k > 0, torch.gather(cdf, 1, (k - 1).clamp_min(0)), 0.0)
    pk = torch.gather(p, 1, k).clamp_min(1e-12)
    start, end = torch.gather(samples.t_start, 1, k), torch.gather(samples.t_end, 1, k)
    t = start + (u - before) / pk * (end - start)
    half = ((end - start) / (count * pk)).clamp(max=end - start) / 2
    fine_start = torch.maximum(t - half, start)
    fine_end = torch.minimum(t + half, end)
    has = valid.any(dim=-1, keepdim=True).expand(-1, count)
    return RaySamples(fine_start, fine_end, has.clone())


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

    @torch.no_grad()
    def prune(self, density_fn, chunk: int = 1 << 18, seed: int = 0) -> float:
        """Mark free the occupied cells where density_fn(points (P, 3) world) -> (P,) is
        below `prune_density` at a random point of the cell; returns the fraction left
        occupied. (Cells are never re-occupied: callers re-mark what must stay, such as
        LiDAR returns.)"""
        flat = self.occupied.view(-1)
        cells = flat.nonzero().squeeze(1)
        r = self.config.grid_resolution
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, len(cells), chunk):
            c = cells[start:start + chunk]
            ijk = torch.stack([c // (r * r), (c // r) % r, c % r], dim=-1).float()
            coords = (ijk + torch.rand(ijk.shape, generator=generator)) / r
            sigma = density_fn(uncontract(coords.clamp(max=1.0 - 1e-6), self.box))
            flat[c[sigma < self.config.prune_density]] = False
        return float(self.occupied.float().mean())

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
