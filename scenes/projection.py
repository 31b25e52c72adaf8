"""Projecting LiDAR into camera images: the sparse depth maps every later stage uses."""

from __future__ import annotations

import numpy as np

from .model import CameraSample

MIN_DEPTH = 0.5


def project_points(sample: CameraSample, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices of points (N, 3) world that land inside the image, nearest pixel centre.

    Returns `pixels` (M, 2) int (column, row) and `depth` (M,) float64 camera z, for the M
    points in front of the camera (z > MIN_DEPTH) whose pixel lies in the image.
    """
    uv, z = sample.world_to_pixels(points)
    col, row = np.round(uv[:, 0]), np.round(uv[:, 1])
    keep = (z > MIN_DEPTH) & (col >= 0) & (col < sample.width) & (row >= 0) & (
        row < sample.height)
    return np.stack([col[keep], row[keep]], axis=1).astype(np.int64), z[keep]


def sparse_depth_map(sample: CameraSample, points: np.ndarray) -> np.ndarray:
    """(H, W) float32 depth from LiDAR points (N, 3) world: the nearest return per pixel,
    0 where no return lands."""
    pixels, depth = project_points(sample, points)
    flat = np.full(sample.height * sample.width, np.inf)
    np.minimum.at(flat, pixels[:, 1] * sample.width + pixels[:, 0], depth)
    flat[~np.isfinite(flat)] = 0.0
    return flat.reshape(sample.height, sample.width).astype(np.float32)
