"""Two-stage probabilistic depth along each pixel's ray (DistillNeRF section 3.1).

Coarse: a density per fixed depth bin (`space.coarse_bin_edges`, 286 bins to 120 m by
default) from soft-clamped logits, volume-rendered with the teacher's compositing
(`teachers.volume.compositing`) into weights and an expected depth. Fine: 15 candidates
around the coarse depth, spaced clamp(0.025 d, 0.05, 0.3) m, whose predicted
probabilities become densities of the 14 intervals between them, rendered the same way.
The lifted image features are spread along the ray with these weights.

Official details followed: logits soft-clamped as tanh(x / 30) * 30 and sigma =
exp(logit - 1) (coarse); candidates k = -8 .. 6 times the spacing (asymmetric, as
`arange(-15 // 2, 15 // 2)`), ReLU'd at 0; fine probability p -> logit (2p - 1) * 30.
How an interval's density comes from its two candidates is not spelled out there; here
it is the mean of their densities (the mid-point rule on the candidates; inferred).
"""

from __future__ import annotations

import torch

from distillprep.teachers.volume.compositing import expected_depth, render_weights

LOGIT_CLAMP = 30.0
"""Soft clamp of depth logits: tanh(x / c) * c."""


def soft_clamp(x: torch.Tensor, limit: float) -> torch.Tensor:
    """tanh(x / limit) * limit: x near 0 unchanged, |x| < limit always."""
    return torch.tanh(x / limit) * limit


def coarse_depth(logits: torch.Tensor, edges: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (R, D), expected depth (R,) m) from per-bin logits (R, D) and the bins'
    edges (D + 1,) m. The depth is that of the bins' midpoints under the weights."""
    sigma = torch.exp(soft_clamp(logits, LOGIT_CLAMP) - 1.0)
    start, end = edges[:-1].expand_as(logits), edges[1:].expand_as(logits)
    weights = render_weights(sigma, start, end)
    return weights, expected_depth(weights, 0.5 * (start + end))


def fine_candidates(depth: torch.Tensor, count: int = 15) -> torch.Tensor:
    """(R, count) candidate depths around depth (R,): d + k clamp(0.025 d, 0.05, 0.3) for
    k = -(count // 2) - (count % 2) .. count // 2 - 1 (-8 .. 6 for 15), never below 0."""
    k = torch.arange(-(count // 2) - (count % 2), count // 2, device=depth.device,
                     dtype=depth.dtype)
    spacing = (0.025 * depth).clamp(0.05, 0.3)
    return torch.relu(depth[:, None] + k[None, :] * spacing[:, None])


def fine_depth(probabilities: torch.Tensor, candidates: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (R, count - 1) of the intervals between candidates, expected depth (R,)
    m) from each candidate's probability (R, count) in [0, 1] of lying in matter."""
    sigma = torch.exp((2.0 * probabilities - 1.0) * LOGIT_CLAMP - 1.0)
    start, end = candidates[:, :-1], candidates[:, 1:]
    weights = render_weights(0.5 * (sigma[:, :-1] + sigma[:, 1:]), start, end)
    return weights, expected_depth(weights, 0.5 * (start + end))
