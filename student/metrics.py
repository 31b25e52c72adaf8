"""The paper's evaluation metrics (DistillNeRF section 4; `../shared/facts/
distillnerf-student.md` section 3): PSNR and SSIM of images in [0, 1], and the depth
metrics up to 80 m.

SSIM is scikit-image's `structural_similarity(data_range=1.0)` as the official code calls
it (scikit-image is not a dependency here): a 7 x 7 uniform window, sample covariances,
K1 = 0.01, K2 = 0.03, the mean over the pixels whose window lies inside the image,
channels averaged. `_ssim_reference` computes it window by window.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

from distillprep.teachers.nerf.evaluate import depth_metrics, psnr

WINDOW = 7
K1, K2 = 0.01, 0.03
DEPTH_MIN, DEPTH_MAX = 1e-3, 80.0
"""Depth range evaluated, metres (the official `compute_depth_errors`)."""

__all__ = ["psnr", "ssim", "eval_depth"]


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """SSIM of two images (H, W) or (H, W, C) in [0, 1]."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.ndim == 3:
        return float(np.mean([ssim(pred[..., c], target[..., c])
                              for c in range(pred.shape[-1])]))
    n = WINDOW ** 2
    cov = n / (n - 1)  # sample covariance, as scikit-image's default

    def mean(a):
        return uniform_filter(a, size=WINDOW)

    ux, uy = mean(pred), mean(target)
    vx = cov * (mean(pred * pred) - ux * ux)
    vy = cov * (mean(target * target) - uy * uy)
    vxy = cov * (mean(pred * target) - ux * uy)
    c1, c2 = K1 ** 2, K2 ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = (WINDOW - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def _ssim_reference(pred: np.ndarray, target: np.ndarray) -> float:
    """The same, one window at a time (tests only; one channel)."""
    c1, c2 = K1 ** 2, K2 ** 2
    values = []
    h, w = pred.shape
    for i in range(h - WINDOW + 1):
        for j in range(w - WINDOW + 1):
            x = pred[i:i + WINDOW, j:j + WINDOW].ravel()
            y = target[i:i + WINDOW, j:j + WINDOW].ravel()
            vxy = np.cov(x, y)  # sample (co)variances
            values.append(((2 * x.mean() * y.mean() + c1) * (2 * vxy[0, 1] + c2))
                          / ((x.mean() ** 2 + y.mean() ** 2 + c1)
                             * (vxy[0, 0] + vxy[1, 1] + c2)))
    return float(np.mean(values))


def eval_depth(pred: np.ndarray, gt: np.ndarray, max_depth: float = DEPTH_MAX,
               ) -> dict[str, float]:
    """Depth metrics of pred (H, W) m against gt (H, W) m where gt lies in
    (1e-3, max_depth), pred clipped to that range (0 or NaN in gt: no ground truth)."""
    gt = np.nan_to_num(np.asarray(gt, np.float64), nan=0.0)
    mask = (gt > DEPTH_MIN) & (gt < max_depth)
    return depth_metrics(np.clip(pred, DEPTH_MIN, max_depth), gt, mask)
