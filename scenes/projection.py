"""Projecting LiDAR into camera images: the sparse depth maps every later stage uses."""

from __future__ import annotations

import numpy as np

from .model import CameraSample

MIN_DEPTH = 0.5


def pixel_rays(intrinsics: np.ndarray, cam_to_world: np.ndarray, pixels: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Rays through pixel positions (M, 2) (column, row; OpenCV: integers are pixel
    centres) of a camera with K (3, 3) and cam_to_world (4, 4).

    Returns the origin (3,) world and directions (M, 3) world scaled so that their
    camera-frame z is 1: the ray parameter at a point is its depth along the camera axis.
    """
    pix = np.column_stack([np.asarray(pixels, dtype=np.float64), np.ones(len(pixels))])
    cam = pix @ np.linalg.inv(intrinsics).T
    cam /= cam[:, 2:3]
    return cam_to_world[:3, 3].copy(), cam @ cam_to_world[:3, :3].T


def image_pixels(width: int, height: int) -> np.ndarray:
    """(H * W, 2) float64 (column, row) of every pixel centre, row-major."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    return np.column_stack([u.ravel(), v.ravel()])


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
