"""Where along a ray to evaluate the field: an occupancy grid over contracted space that
starts fully occupied and is carved empty along LiDAR rays (free space the laser crossed),
then candidate samples spaced linearly near the scene box and by disparity beyond it, of
which the first `max_samples` in occupied cells are kept; optionally (`fine_samples`) a
gradient-free pass of the field over those decides where the samples that are rendered go
(`resample`).

Cells no LiDAR ray crossed stay occupied, so geometry the LiDAR never saw (tall facades
above the top beam, far buildings) still gets samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from distillprep.teachers.errors import TeacherConfigError
from distillprep.teachers.volume.contraction import SceneBox, contract, uncontract


@dataclass(frozen=True)
class RaySampling:
    """How many samples each ray gets: training takes these from `SamplerConfig`,
    rendering from `RenderConfig.sampling` (rendering can afford more)."""

    candidates: int = 128
    """Candidate positions per ray before occupancy culling."""
    max_samples: int = 24
    """Occupied candidates kept per ray (the first ones along it)."""
    fine_samples: int = 0
    """Samples per ray re-drawn where a gradient-free pass of the field over the kept
    candidates puts the weight (`resample`; 0: render the candidates directly)."""
    uniform_mix: float = 0.05
    """Share of the fine samples spread over the occupied length regardless of weight."""


@dataclass(frozen=True)
class SamplerConfig:
    """Ray sampling."""

    grid_resolution: int = 128
    """Cells per axis of the occupancy grid over the contracted cube."""
    rays: RaySampling = field(default_factory=RaySampling)
    """Samples per training ray."""
    jitter: bool = True
    """Training takes each sample's field value at a random point of its interval (one
    offset per ray; stratified sampling), so that the field learns density between the
    fixed candidate positions; rendering uses the midpoints."""
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
    t_point: torch.Tensor | None = None
    """(R, K) where in its interval each sample's field value is taken (None: the
    midpoint); training jitters it (stratified sampling)."""

    def __post_init__(self) -> None:
        if self.t_point is None:
            self.t_point = (self.t_start + self.t_end) / 2


def resample(samples: RaySamples, weights: torch.Tensor, count: int, uniform_mix: float,
             ) -> RaySamples:
    """`count` intervals per ray (R) drawn where `weights` (R, K) of `samples` lie, tiling
    the rays' occupied length (the valid intervals laid end to end, gaps between them
    left out: the occupancy grid says they are empty).

    Interval k gets probability p_k = (1 - m) w'_k / sum w' + m len_k / sum len (m =
    uniform_mix, w'_k = max(w_k, w_k+1) over the slots); the fine edges sit at the
    quantiles j / count, j = 0..count, of that piecewise-uniform distribution, so where
    the weight is the fine intervals are short (depth resolution below the candidates'
    spacing) and together they cover every occupied metre (density anywhere along the ray
    still gets a gradient). A fine interval is returned with its occupied length, centred
    where the middle of that length lies.
    Rays without valid samples get none.
    """
    valid = samples.valid
    length = (samples.t_end - samples.t_start) * valid
    w = weights.detach().clamp_min(0.0) * valid
    # A surface shows in the first interval whose sample point lies behind it, yet it may
    # start anywhere after the previous sample point: each interval also takes the weight
    # of the one after it (mip-NeRF 360 widens its proposals likewise).
    w = torch.maximum(w, torch.nn.functional.pad(w[:, 1:], (0, 1))) * valid
    w_sum = w.sum(dim=-1, keepdim=True)
    len_sum = length.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    p = torch.where(w_sum > 1e-8, (1.0 - uniform_mix) * w / w_sum.clamp_min(1e-12)
                    + uniform_mix * length / len_sum, length / len_sum)
    cdf = torch.cumsum(p, dim=-1)
    cdf = cdf / cdf[:, -1:].clamp_min(1e-12)
    covered = torch.cumsum(length, dim=-1)  # occupied metres up to each interval's end
    last = p.shape[1] - 1

    def before(cumulative, k):
        return torch.where(k > 0, torch.gather(cumulative, 1, (k - 1).clamp_min(0)), 0.0)

    u = torch.linspace(0.0, 1.0, count + 1, dtype=p.dtype, device=p.device)
    u = u.expand(len(p), -1).contiguous()
    # an edge at quantile u sits past every interval of zero probability before it (the
    # last edge, u = 1, at the end of the last interval of non-zero probability)
    k = torch.searchsorted(cdf, u, right=True)
    k[:, -1] = torch.searchsorted(cdf, u[:, -1:].contiguous())[:, 0]
    k = k.clamp(max=last)
    share = ((u - before(cdf, k)) / torch.gather(p, 1, k).clamp_min(1e-12)).clamp(0.0, 1.0)
    at = before(covered, k) + share * torch.gather(length, 1, k)  # (R, count + 1) metres
    delta = at[:, 1:] - at[:, :-1]
    middle = ((at[:, 1:] + at[:, :-1]) / 2).contiguous()
    k = torch.searchsorted(covered, middle).clamp(max=last)
    centre = torch.gather(samples.t_start, 1, k) + middle - before(covered, k)
    has = valid.any(dim=-1, keepdim=True).expand(-1, count)
    return RaySamples(centre - delta / 2, centre + delta / 2, has.clone())


def _resample_reference(t_start: np.ndarray, t_end: np.ndarray, weights: np.ndarray,
                        count: int, uniform_mix: float) -> tuple[np.ndarray, np.ndarray]:
    """One ray's valid intervals (K,), sorted along it, written out plainly (tests only):
    (fine interval starts, ends) as `resample` returns them."""
    length = t_end - t_start
    weights = np.array([max(weights[k:k + 2]) for k in range(len(weights))])
    p = (1 - uniform_mix) * weights / weights.sum() + uniform_mix * length / length.sum()
    edges = []  # occupied metres (intervals laid end to end) at each quantile j / count
    for j in range(count + 1):
        u, acc, metres = j / count, 0.0, 0.0
        for k in range(len(p)):
            inside = acc + p[k] > u if j < count else acc + p[k] >= u - 1e-12 and p[k] > 0
            if inside:
                metres += (u - acc) / p[k] * length[k]
                break
            acc += p[k]
            metres += length[k]
        edges.append(metres)
    starts, ends = [], []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        middle, acc = (a + b) / 2, 0.0
        for k in range(len(length)):
            if middle <= acc + length[k]:
                break
            acc += length[k]
        centre = t_start[k] + middle - acc
        starts.append(centre - (b - a) / 2)
        ends.append(centre + (b - a) / 2)
    return np.array(starts), np.array(ends)


def candidate_edges(config: SamplerConfig, box_radius: float, candidates: int) -> np.ndarray:
    """(C + 1,) edges of C candidate intervals from near to far: "log" spacing, or uniform
    in s(t) = t / b below b = box radius and 2 - b / t beyond (linear near, by disparity
    far)."""
    if config.spacing == "log":
        return np.geomspace(config.near, config.far, candidates + 1)
    if config.spacing != "contracted":
        raise TeacherConfigError(f"sampler spacing {config.spacing!r}: use 'contracted' or "
                                 "'log'")

    def s(t):
        return np.where(t < box_radius, t / box_radius, 2.0 - box_radius / t)

    def s_inv(v):
        return np.where(v < 1.0, v * box_radius, box_radius / np.maximum(2.0 - v, 1e-9))

    return s_inv(np.linspace(s(config.near), s(config.far), candidates + 1))


class OccupancyGrid:
    """Binary occupancy over the contracted unit cube, on one device (`to`): points and
    rays given as tensors must be on it; numpy inputs are moved there."""

    def __init__(self, config: SamplerConfig, box: SceneBox):
        self.config, self.box = config, box
        r = config.grid_resolution
        self.occupied = torch.ones((r, r, r), dtype=torch.bool)
        self.in_use = torch.zeros((r, r, r), dtype=torch.bool)
        """Cells where training rays put rendering weight since the last pruning (`use`):
        pruning keeps them whatever the density at its one random point says."""

    @property
    def device(self) -> torch.device:
        return self.occupied.device

    def to(self, device: str | torch.device) -> OccupancyGrid:
        """Move the grid's cells to `device`; returns the grid."""
        self.occupied, self.in_use = self.occupied.to(device), self.in_use.to(device)
        return self

    def cells(self, points: torch.Tensor) -> torch.Tensor:
        """Flat cell index (...,) of world points (..., 3)."""
        r = self.config.grid_resolution
        ijk = (contract(points, self.box) * r).long().clamp(0, r - 1)
        return (ijk[..., 0] * r + ijk[..., 1]) * r + ijk[..., 2]

    def carve(self, origins: np.ndarray, directions: np.ndarray, ranges: np.ndarray,
              step: float = 0.25, chunk: int = 4096) -> float:
        """Mark free the cells that LiDAR rays (K) cross before their return; returns the
        fraction of cells left occupied."""
        flat, device = self.occupied.view(-1), self.device
        for start in range(0, len(ranges), chunk):
            o = torch.as_tensor(origins[start:start + chunk], dtype=torch.float32, device=device)
            d = torch.as_tensor(directions[start:start + chunk], dtype=torch.float32,
                                device=device)
            reach = torch.as_tensor(ranges[start:start + chunk], dtype=torch.float32,
                                    device=device)
            reach = reach - self.config.carve_margin
            steps = torch.arange(0.0, float(reach.max()) if len(reach) else 0.0, step,
                                 device=device)
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
        flat, device = self.occupied.view(-1), self.device
        edges = candidate_edges(self.config, self.box_radius, steps)
        mids = torch.as_tensor((edges[:-1] + edges[1:]) / 2, dtype=torch.float32, device=device)
        for start in range(0, len(origins), chunk):
            o = torch.as_tensor(origins[start:start + chunk], dtype=torch.float32, device=device)
            d = torch.as_tensor(directions[start:start + chunk], dtype=torch.float32,
                                device=device)
            flat[self.cells(o[:, None, :] + d[:, None, :] * mids[None, :, None])] = False
        return float(self.occupied.float().mean())

    @property
    def box_radius(self) -> float:
        """Half the diagonal of the scene box, metres: where candidate spacing switches from
        linear to disparity."""
        return float(np.linalg.norm(np.subtract(self.box.upper, self.box.lower)) / 2)

    def use(self, points: torch.Tensor) -> None:
        """Note the cells of points (P, 3) world where rays put rendering weight: the next
        pruning keeps them. (A random point of a cell misses a 20 cm pole in it most of
        the time; the rays that see the pole do not.)"""
        self.in_use.view(-1)[self.cells(points)] = True

    @torch.no_grad()
    def prune(self, density_fn, chunk: int = 1 << 18, seed: int = 0) -> float:
        """Mark free the occupied cells where density_fn(points (P, 3) world) -> (P,) is
        below `prune_density` at a random point of the cell, unless rays used them since
        the last pruning (`use`); returns the fraction left occupied. (Cells are never
        re-occupied: callers re-mark what must stay, such as LiDAR returns.) The random
        points are drawn on the CPU, so every device probes the same ones."""
        flat = self.occupied.view(-1)
        cells = (flat & ~self.in_use.view(-1)).nonzero().squeeze(1)
        self.in_use.zero_()
        r = self.config.grid_resolution
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, len(cells), chunk):
            c = cells[start:start + chunk]
            ijk = torch.stack([c // (r * r), (c // r) % r, c % r], dim=-1).float()
            jitter = torch.rand(ijk.shape, generator=generator, device="cpu").to(ijk.device)
            coords = (ijk + jitter) / r
            sigma = density_fn(uncontract(coords.clamp(max=1.0 - 1e-6), self.box))
            flat[c[sigma < self.config.prune_density]] = False
        return float(self.occupied.float().mean())

    def mark_occupied(self, points: np.ndarray) -> None:
        """Mark occupied the cells holding points (N, 3) world (e.g. every LiDAR return:
        what something occupied at some time must stay samplable)."""
        flat = self.occupied.view(-1)
        flat[self.cells(torch.as_tensor(points, dtype=torch.float32, device=self.device))] = True

    def sample(self, origins: torch.Tensor, directions: torch.Tensor, sampling: RaySampling,
               offsets: torch.Tensor | None = None) -> RaySamples:
        """The first `sampling.max_samples` of `sampling.candidates` intervals along rays
        (R) whose sample point lies in an occupied cell. The sample point is the interval's
        midpoint, or `offsets` (R,) in [0, 1) of the way along it (jitter)."""
        edges = torch.as_tensor(candidate_edges(self.config, self.box_radius,
                                                sampling.candidates), dtype=origins.dtype,
                                device=origins.device)
        start, end = edges[:-1], edges[1:]
        if offsets is None:
            point = ((start + end) / 2).expand(len(origins), -1)
        else:
            point = start + offsets[:, None] * (end - start)  # (R, C)
        points = origins[:, None, :] + directions[:, None, :] * point[..., None]
        occupied = self.occupied.view(-1)[self.cells(points)]  # (R, C)
        # Occupied candidates first, in distance order; padding after them (its density is
        # taken as 0, so where it sits along the ray does not matter).
        rank = (torch.where(occupied, 0, 1) * len(start)
                + torch.arange(len(start), device=origins.device))
        order = torch.argsort(rank, dim=1)[:, : sampling.max_samples]
        return RaySamples(start[order], end[order], torch.gather(occupied, 1, order),
                          torch.gather(point, 1, order))
