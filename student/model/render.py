"""Volume rendering of the student's voxels along camera rays (DistillNeRF section 3.3).

Per ray: a first pass at the coarse depth bins' midpoints (jittered inside their bins
when training) finds the depth of the largest weight; 30 more samples every 0.1 m around
it (-1.5 .. +1.4 m) are merged with the first ones and sorted; the field is read at the
midpoints between consecutive samples (densities and features from `voxels.query`) and
composited with the teacher's volume-rendering functions. Depth is the expected
termination, clamped to [1e-5, far].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distillprep.teachers.volume.compositing import expected_depth, render_weights

from .depth import soft_clamp
from .space import SpaceConfig, contract
from .voxels import Level, composite_levels, locate

DENSITY_CLAMP = 10.0
"""Soft clamp of a voxel's density logit before sigma = exp(logit - 1)."""


@dataclass(frozen=True)
class RaySamplingConfig:
    """Where rays are sampled."""

    fine_samples: int = 30
    """Samples around the first pass's peak."""
    fine_spacing: float = 0.1
    """Metres between them."""
    jitter: bool = False
    """Move the first pass's samples uniformly inside their bins (training)."""


def density(logit: torch.Tensor) -> torch.Tensor:
    """sigma (1/m) of density logits."""
    return torch.exp(soft_clamp(logit, DENSITY_CLAMP) - 1.0)


def _march(levels, origins, directions, batch, t, space):
    """(weights, where the samples fell, midpoints) over the intervals between samples
    t (R, S) sorted."""
    mids = 0.5 * (t[:, 1:] + t[:, :-1])
    points = origins[:, None, :] + mids[..., None] * directions[:, None, :]
    samples = locate(levels, contract(points, space), batch[:, None].expand_as(mids))
    weights = render_weights(density(samples.logit), t[:, :-1], t[:, 1:])
    return weights, samples, mids


def render_rays(levels: tuple[Level, Level], origins: torch.Tensor,
                directions: torch.Tensor, batch: torch.Tensor, edges: torch.Tensor,
                space: SpaceConfig, sampling: RaySamplingConfig = RaySamplingConfig(),
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Render rays: origins (R, 3) and unit directions (R, 3) in the voxels' metric frame
    (ego / LiDAR), batch (R,) the batch item of each ray, edges (D + 1,) the coarse bins
    (m along the ray). Returns depth (R,), opacity (R,), features (R, C) and the samples'
    weights (R, S - 1) and distances (R, S - 1)."""
    rays = len(origins)
    start, end = edges[:-1].expand(rays, -1), edges[1:].expand(rays, -1)
    u = (torch.rand(start.shape, generator=generator, dtype=start.dtype).to(start.device)
         if sampling.jitter else torch.full_like(start, 0.5))
    coarse_t = start + u * (end - start)
    with torch.no_grad():  # the first pass only places the fine samples
        weights, _, mids = _march(levels, origins, directions, batch, coarse_t, space)
        peak = mids.gather(1, weights.argmax(dim=1, keepdim=True))
    offsets = (torch.arange(sampling.fine_samples, device=edges.device, dtype=edges.dtype)
               - sampling.fine_samples // 2) * sampling.fine_spacing
    fine_t = (peak + offsets).clamp(0.0, space.far)
    t, _ = torch.sort(torch.cat([coarse_t, fine_t], dim=1), dim=1)
    weights, samples, mids = _march(levels, origins, directions, batch, t, space)
    return {"depth": expected_depth(weights, mids).clamp(1e-5, space.far),
            "opacity": weights.sum(dim=1),
            "features": composite_levels(levels, samples, weights),
            "weights": weights, "t": mids}
