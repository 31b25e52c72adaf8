"""The student's losses (DistillNeRF section 3.4; official definitions and weights in
`../shared/facts/distillnerf-student.md` section 2), each switchable by its weight in
`LossConfig` so that the paper's ablations run from config alone.

Depth losses compare depths normalised to [0, 1]: LiDAR depth by the LiDAR range
(80 m), teacher depth by 50 m where the teacher's depth is under 50 m and by 120 m beyond
(the inner box and the far plane), each as MSE + 0.1 L1 over the pixels that have a
target. LPIPS is not here: its VGG weights cannot be downloaded on these machines (the
RGB term is L1 alone; say so where results are reported).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossConfig:
    """Weight of each loss term (0 switches a term off)."""

    rgb_l1: float = 1.0
    """L1 of the decoded RGB against the camera images in [0, 1]."""
    lidar_depth: float = 10.0
    """LiDAR depth (MSE + 0.1 L1, normalised by `lidar_range`)."""
    teacher_depth: float = 10.0
    """Teacher depth (MSE + 0.1 L1, normalised by 50 m inside, 120 m outside)."""
    entropy: float = 0.01
    """-sum w log w of the rays' weights (sharp surfaces)."""
    opacity: float = 0.1
    """BCE of each ray's opacity against 1 (no sky is left unexplained)."""
    features: float = 1.0
    """L1 of rendered foundation features against the PCA-reduced targets."""
    virtual: float = 1.0
    """Share of the virtual-camera targets (same losses; 0: no virtual distillation)."""
    lidar_range: float = 80.0
    """Metres LiDAR depth is clamped to and normalised by."""
    teacher_inner: float = 50.0
    """Teacher depths under this (m) are normalised by it, the others by teacher_far."""
    teacher_far: float = 120.0
    """Far plane (m): teacher depths are clamped to it."""
    sky_opacity: float = 0.5
    """Teacher pixels under this opacity are sky (what its sky head paints, no surface)."""
    sky_depth: float = 115.0
    """Depth target (m) of sky pixels (official: the far plane less 5 m, from sky masks)."""
    lidar_sky: bool = True
    """Pixels without a LiDAR return that the teacher sees as sky take sky_depth in the
    LiDAR target too (official: sky masks fill the LiDAR target in every variant, with or
    without depth distillation); needs the teacher's opacity."""


def _mse_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    if not bool(valid.any()):
        return pred.sum() * 0.0  # no target: zero, still part of the graph
    p, t = pred[valid], target[valid]
    return F.mse_loss(p, t) + 0.1 * F.l1_loss(p, t)


def lidar_depth_loss(pred: torch.Tensor, lidar: torch.Tensor,
                     config: LossConfig) -> torch.Tensor:
    """pred, lidar (...) m; lidar 0 (or NaN) where there is no return."""
    valid = torch.nan_to_num(lidar) > 0
    r = config.lidar_range
    return _mse_l1(pred.clamp(1e-5, r) / r, torch.nan_to_num(lidar).clamp(1e-5, r) / r, valid)


def teacher_depth_loss(pred: torch.Tensor, teacher: torch.Tensor,
                       config: LossConfig) -> torch.Tensor:
    """pred, teacher (...) m; teacher 0 where it has no depth (not rendered)."""
    far, inner = config.teacher_far, config.teacher_inner
    p, t = pred.clamp(1e-5, far), teacher.clamp(1e-5, far)
    valid = teacher > 0
    near = t < inner
    return (_mse_l1(p / inner, t / inner, valid & near)
            + _mse_l1(p / far, t / far, valid & ~near))


def teacher_target(depth: torch.Tensor, opacity: torch.Tensor | None,
                   config: LossConfig) -> torch.Tensor:
    """The teacher's depth (...) m as a target: `sky_depth` where its opacity (...) says
    sky. DistillNeRF takes sky from segmentation masks (PointRend and EmerNeRF's); the
    stores hold none, and the teacher's own opacity is what its sky head left unexplained."""
    if opacity is None:
        return depth
    return torch.where(opacity < config.sky_opacity,
                       torch.full_like(depth, config.sky_depth), depth)


def lidar_target(lidar: torch.Tensor, sky: torch.Tensor | None,
                 config: LossConfig) -> torch.Tensor:
    """LiDAR depth (...) m (0: no return) with `sky_depth` on the pixels without a return
    where `sky` (...) bool says sky (None: none known)."""
    if sky is None:
        return lidar
    empty = torch.nan_to_num(lidar) <= 0
    return torch.where(empty & sky, torch.full_like(lidar, config.sky_depth), lidar)


def entropy_loss(weights: torch.Tensor) -> torch.Tensor:
    """Mean over rays of -sum_i w_i log w_i; weights (R, S)."""
    w = weights.clamp(min=1e-10)
    return -(weights * torch.log(w)).sum(dim=-1).mean()


def opacity_loss(weights: torch.Tensor) -> torch.Tensor:
    """BCE of each ray's opacity sum_i w_i, clamped to [0, 1], against 1."""
    opacity = weights.sum(dim=-1).clamp(1e-6, 1.0)
    return F.binary_cross_entropy(opacity, torch.ones_like(opacity))


def feature_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 of rendered features against the PCA-reduced targets, same shapes."""
    return F.l1_loss(pred, target)
