"""Unbounded space to the unit cube: EmerNeRF's infinity-norm scene contraction.

The scene box is fitted to the LiDAR points (2 % / 98 % percentiles per axis, as
EmerNeRF does). Inside the box, world points map affinely to [0.25, 0.75]^3; outside,
with y the point in box units (the box is [-1, 1]^3) and m = ||y||_inf > 1, the point maps
to y / m * (2 - 1 / m), which squeezes everything out to infinity into [-2, 2]^3, i.e.
[0, 1]^3 after the final (. + 2) / 4. The map is continuous and monotone along rays from
the box centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SceneBox:
    """Axis-aligned box, world metres."""

    lower: tuple[float, float, float]
    """(3,) minimum corner."""
    upper: tuple[float, float, float]
    """(3,) maximum corner."""

    @staticmethod
    def from_lidar(points: np.ndarray, percentile: float = 2.0, margin: float = 0.0,
                   min_height_ratio: float = 0.25) -> SceneBox:
        """The box spanning the [percentile, 100 - percentile] range of LiDAR points
        (N, 3) world (z up) on every axis, grown by `margin` metres, and its top raised
        so that its height is at least `min_height_ratio` x its longest horizontal side.

        Why the raise: a spinning LiDAR sees little above a few metres (HDL-32E's top beam
        is at +10.7 deg), so the percentile box is flat and facades and tree tops above it
        would fall into the coarse contracted shell."""
        if len(points) == 0:
            raise ValueError("cannot fit a scene box without LiDAR points")
        lo = np.percentile(points, percentile, axis=0) - margin
        hi = np.percentile(points, 100.0 - percentile, axis=0) + margin
        if np.any(hi - lo <= 0):
            raise ValueError(f"degenerate scene box {lo.tolist()} .. {hi.tolist()}")
        hi[2] = max(hi[2], lo[2] + min_height_ratio * float(np.max(hi[:2] - lo[:2])))
        return SceneBox(tuple(float(v) for v in lo), tuple(float(v) for v in hi))

    def tensors(self, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(self.lower, device=device, dtype=dtype),
                torch.tensor(self.upper, device=device, dtype=dtype))


def contract(points: torch.Tensor, box: SceneBox) -> torch.Tensor:
    """World points (..., 3) -> contracted coordinates (..., 3) in [0, 1]."""
    lower, upper = box.tensors(points.device, points.dtype)
    y = (points - lower) / (upper - lower) * 2.0 - 1.0
    m = y.abs().amax(dim=-1, keepdim=True)
    outside = m > 1.0
    safe = torch.where(outside, m, torch.ones_like(m))
    squeezed = y / safe * (2.0 - 1.0 / safe)
    return (torch.where(outside, squeezed, y) + 2.0) / 4.0


def uncontract(coords: torch.Tensor, box: SceneBox) -> torch.Tensor:
    """The inverse of `contract`: contracted coordinates (..., 3) in [0, 1) -> world
    points (..., 3) (the outer face, 1, is infinitely far and maps to a large finite
    point)."""
    lower, upper = box.tensors(coords.device, coords.dtype)
    y = coords * 4.0 - 2.0
    n = y.abs().amax(dim=-1, keepdim=True)
    outside = n > 1.0
    m = 1.0 / (2.0 - n.clamp(max=2.0 - 1e-6))  # n = 2 - 1 / m
    safe = torch.where(outside, n, torch.ones_like(n))
    unsqueezed = torch.where(outside, y / safe * m, y)
    return (unsqueezed + 1.0) / 2.0 * (upper - lower) + lower


def _contract_reference(point: np.ndarray, box: SceneBox) -> np.ndarray:
    """One point (3,), written out plainly (tests only)."""
    lower, upper = np.asarray(box.lower), np.asarray(box.upper)
    y = (point - lower) / (upper - lower) * 2 - 1
    m = np.max(np.abs(y))
    if m > 1:
        y = y / m * (2 - 1 / m)
    return (y + 2) / 4
