"""Positional-pattern denoising of ViT feature maps (optional).

EmerNeRF observed that ViT features carry a pattern fixed to the image position, the same
in every image whatever it shows, and decomposed it out with a learned 2D map. Without a
3D field to separate it from content, the run estimates it as the mean feature at each grid
position over a sample of images, less the mean over all positions:

    pattern[:, i, j] = mean_images f[:, i, j] - mean_images,positions f

and subtracts it (resampled bilinearly to other grids) from every image's features before
the PCA. On driving data the mean at a position also holds layout (sky on top, road at the
bottom), which this removes too: it is an option, off by default, and `position_share`
measures how much of the feature variance position alone explains, before and after.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def position_pattern(features: np.ndarray) -> np.ndarray:
    """features (B, D, h, w) of B images on one grid -> pattern (D, h, w) float32."""
    per_position = features.astype(np.float64).mean(axis=0)
    return (per_position - per_position.mean(axis=(1, 2), keepdims=True)).astype(np.float32)


def resample_pattern(pattern: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """pattern (D, h, w) -> (D, *grid), bilinear (corners aligned with the image's)."""
    if pattern.shape[1:] == tuple(grid):
        return pattern
    resized = F.interpolate(torch.as_tensor(pattern)[None], size=tuple(grid), mode="bilinear",
                            align_corners=False)
    return resized[0].numpy()


def denoise(features: np.ndarray, pattern: np.ndarray | None) -> np.ndarray:
    """features (B, D, h, w) less the pattern resampled to their grid (None: unchanged)."""
    if pattern is None:
        return features
    return features - resample_pattern(pattern, features.shape[-2:])[None]


def position_share(features: np.ndarray) -> float:
    """Share of the variance of features (B, D, h, w) that the grid position alone explains:
    the variance of the per-position means over the total variance (0: none). The
    per-position means of B images also vary by content / B, which is taken off (so the
    share of pure noise is about 0, not 1 / B)."""
    f = features.astype(np.float64)
    images = len(f)
    total = ((f - f.mean(axis=(0, 2, 3), keepdims=True)) ** 2).sum(axis=1).mean()
    per_position = f.mean(axis=0)
    between = ((per_position - per_position.mean(axis=(1, 2), keepdims=True)) ** 2
               ).sum(axis=0).mean()
    within = ((f - per_position) ** 2).sum(axis=1).mean() / max(images - 1, 1)
    return float(max(between - within, 0.0) / max(total, 1e-30))
