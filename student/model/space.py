"""The student's parameterized space: metres around the ego vehicle to a [-1, 1]^3 cube,
uniform inside an inner box, contracted outside (DistillNeRF, paper Eq. 3 and A.7), and
the coarse depth bins its depth estimator uses.

Per axis, with r the inner half-size of that axis and alpha the share of the cube it
takes: s = alpha x / r inside (|x| < r), s = (1 - r (1 - alpha) / |x|) sign(x) outside.
The map is continuous at |x| = r (s = alpha) and reaches 1 only at infinity. Unlike the
teacher's infinity-norm contraction (`teachers/volume/contraction.py`) every axis is
contracted on its own, so that a flat box (50 m across, 6.4 m high) keeps resolution
where driving scenes have content.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SpaceConfig:
    """The parameterized space and the coarse depth bins (official defaults)."""

    inner_xy: float = 50.0
    """Half-size of the inner box in x and y, metres."""
    inner_z: float = 6.4
    """Half-size of the inner box in z, metres."""
    alpha: float = 0.8
    """Share of the contracted cube the inner box takes (s = alpha at its faces)."""
    near: float = 0.1
    """Nearest depth of a bin edge, metres."""
    far: float = 120.0
    """Farthest depth rendered, metres."""
    inner_step: float = 0.2
    """Bin width inside the inner range, metres (the outer bins are as wide in s)."""

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 1 and self.inner_xy > 0 and self.inner_z > 0):
            raise ValueError(f"SpaceConfig: alpha in (0, 1) and positive inner sizes "
                             f"needed, got {self}")
        if not 0 < self.near < self.inner_xy < self.far:
            raise ValueError(f"SpaceConfig: need 0 < near < inner_xy < far, got {self}")

    def radii(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """(3,) inner half-sizes x, y, z."""
        return torch.tensor([self.inner_xy, self.inner_xy, self.inner_z], device=device,
                            dtype=dtype)


def contract(points: torch.Tensor, space: SpaceConfig) -> torch.Tensor:
    """Points (..., 3) metres, ego frame -> (..., 3) in (-1, 1)."""
    r = space.radii(points.device, points.dtype)
    a = points.abs()
    inside = a < r
    outer = (1.0 - r * (1.0 - space.alpha) / torch.where(inside, r, a)) * torch.sign(points)
    return torch.where(inside, space.alpha * points / r, outer)


def uncontract(coords: torch.Tensor, space: SpaceConfig) -> torch.Tensor:
    """The inverse of `contract`: (..., 3) in (-1, 1) -> metres."""
    r = space.radii(coords.device, coords.dtype)
    a = coords.abs()
    inside = a < space.alpha
    gap = (1.0 - torch.where(inside, torch.full_like(a, space.alpha), a)).clamp(min=1e-9)
    return torch.where(inside, coords * r / space.alpha,
                       r * (1.0 - space.alpha) / gap * torch.sign(coords))


def _contract_reference(x: float, r: float, alpha: float) -> float:
    """One coordinate, written out plainly (tests only)."""
    if abs(x) < r:
        return alpha * x / r
    return (1 - r * (1 - alpha) / abs(x)) * (1 if x > 0 else -1)


def coarse_bin_edges(space: SpaceConfig) -> np.ndarray:
    """(D + 1,) depth bin edges, metres: every `inner_step` from `near` inside the inner
    range, then equal steps in contracted depth (the inner step's own, s(inner_step))
    from the inner box's face up to `far`. Official defaults: D = 286 (250 edges to
    49.9 m, 37 from 50 m to 117.9 m)."""
    r, alpha = space.inner_xy, space.alpha
    inner = np.arange(space.near, r - 1e-9, space.inner_step)
    step = alpha * space.inner_step / r
    s_far = 1 - r * (1 - alpha) / space.far
    s = alpha + step * np.arange(int(np.floor((s_far - alpha) / step)) + 1)
    outer = r * (1 - alpha) / (1 - s)
    return np.concatenate([inner, outer])
