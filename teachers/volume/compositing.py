"""Volume rendering along rays: weights, opacity, expected depth and composited values.

Each ray r has S samples with intervals [t_start, t_end) (metres along the ray, unit
direction) and densities sigma (1/m). With delta = t_end - t_start, alpha_i = 1 -
exp(-sigma_i delta_i), transmittance T_i = prod_{j<i} (1 - alpha_j) and weight w_i =
T_i alpha_i: opacity = sum_i w_i, expected depth = sum_i w_i t_i (t_i: where in its
interval the sample was taken), colour = sum_i w_i c_i + (1 - opacity) * sky.
"""

from __future__ import annotations

import numpy as np
import torch


def render_weights(sigma: torch.Tensor, t_start: torch.Tensor, t_end: torch.Tensor,
                   ) -> torch.Tensor:
    """Weights (R, S) from densities (R, S) >= 0 and intervals (R, S)."""
    tau = sigma * (t_end - t_start)
    # Transmittance before each sample: exp of the exclusive cumulative sum (stable).
    before = torch.cumsum(tau, dim=-1) - tau
    return torch.exp(-before) * (1.0 - torch.exp(-tau))


def composite(weights: torch.Tensor, values: torch.Tensor,
              background: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i w_i v_i (+ (1 - opacity) * background): weights (R, S), values (R, S, C),
    background (R, C) or None; returns (R, C)."""
    out = (weights[..., None] * values).sum(dim=-2)
    if background is not None:
        out = out + (1.0 - weights.sum(dim=-1, keepdim=True)) * background
    return out


def expected_depth(weights: torch.Tensor, t: torch.Tensor, normalize: bool = False,
                   ) -> torch.Tensor:
    """Expected ray distance (R,) of the rendered surface from weights (R, S) and the
    samples' distances t (R, S) (their intervals' midpoints, or wherever in them the field
    was evaluated); with `normalize`, divided by the opacity (the depth of what is there,
    whatever its opacity)."""
    depth = (weights * t).sum(dim=-1)
    if normalize:
        depth = depth / weights.sum(dim=-1).clamp_min(1e-10)
    return depth


def median_depth(weights: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Median ray distance (R,): the distance t (R, S) of the first sample at which the
    accumulated weight (R, S) reaches half the ray's opacity (0 for a ray without any).
    Unlike the expected depth it never lies between two surfaces a ray sees in part (a
    thin pole before a wall, a car's fading ghost): it is always on one of them. Samples
    must be sorted along each ray (zero-weight slots may be anywhere)."""
    accumulated = torch.cumsum(weights, dim=-1)
    half = accumulated[:, -1:] / 2
    first = torch.searchsorted(accumulated.contiguous(), half.contiguous())
    depth = torch.gather(t, 1, first.clamp(max=t.shape[1] - 1))[:, 0]
    return torch.where(half[:, 0] > 0, depth, torch.zeros_like(depth))


def _median_depth_reference(weights: np.ndarray, t: np.ndarray) -> np.ndarray:
    """One ray at a time (tests only)."""
    out = np.zeros(len(weights))
    for r in range(len(weights)):
        total, acc = weights[r].sum(), 0.0
        for i in range(weights.shape[1]):
            acc += weights[r, i]
            if total > 0 and acc >= total / 2:
                out[r] = t[r, i]
                break
    return out


def normalized_distance(t: torch.Tensor, scale: float) -> torch.Tensor:
    """Ray distance t (metres) -> s = t / (t + scale) in [0, 1): linear near the camera,
    compressed far away (where the contraction makes the field coarse too)."""
    return t / (t + scale)


def distortion_loss(weights: torch.Tensor, t_start: torch.Tensor, t_end: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """mip-NeRF 360's distortion loss per ray (R,), on normalized distance s (see
    `normalized_distance`): sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (s1_i - s0_i),
    small when a ray's weight sits in one short interval (no floaters, no fog).
    Samples must be sorted along each ray (zero-weight slots may be anywhere)."""
    s0, s1 = normalized_distance(t_start, scale), normalized_distance(t_end, scale)
    mid = (s0 + s1) / 2
    w_before = torch.cumsum(weights, dim=-1) - weights
    wm_before = torch.cumsum(weights * mid, dim=-1) - weights * mid
    pairs = 2.0 * (weights * (mid * w_before - wm_before)).sum(dim=-1)
    return pairs + (weights**2 * (s1 - s0)).sum(dim=-1) / 3.0


def _distortion_loss_reference(weights: np.ndarray, t_start: np.ndarray, t_end: np.ndarray,
                               scale: float) -> np.ndarray:
    """The double sum over sample pairs, one ray at a time (tests only)."""
    s0, s1 = t_start / (t_start + scale), t_end / (t_end + scale)
    mid = (s0 + s1) / 2
    out = np.zeros(weights.shape[0])
    for r in range(weights.shape[0]):
        for i in range(weights.shape[1]):
            for j in range(weights.shape[1]):
                out[r] += weights[r, i] * weights[r, j] * abs(mid[r, i] - mid[r, j])
            out[r] += weights[r, i] ** 2 * (s1[r, i] - s0[r, i]) / 3.0
    return out


def _render_weights_reference(sigma: np.ndarray, t_start: np.ndarray, t_end: np.ndarray,
                              ) -> np.ndarray:
    """One ray and one sample at a time (tests only)."""
    weights = np.zeros_like(sigma)
    for r in range(sigma.shape[0]):
        transmittance = 1.0
        for i in range(sigma.shape[1]):
            alpha = 1.0 - np.exp(-sigma[r, i] * (t_end[r, i] - t_start[r, i]))
            weights[r, i] = transmittance * alpha
            transmittance *= 1.0 - alpha
    return weights
