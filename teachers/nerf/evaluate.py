"""Scoring a teacher against exact ground truth, beside a LiDAR-only baseline.

Depth metrics follow the depth-estimation convention on valid pixels: AbsRel =
mean(|pred - gt| / gt) and delta < 1.25 = share of pixels with max(pred/gt, gt/pred) <
1.25. The LiDAR-only baseline projects the frame's LiDAR into the image and fills every
pixel with its nearest return (in the image plane), which is what densifying LiDAR alone
gives.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt

from distillprep.scenes.model import CameraSample
from distillprep.scenes.projection import sparse_depth_map


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of images in [0, 1]."""
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))
    return float("inf") if mse == 0 else -10.0 * np.log10(mse)


def depth_metrics(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The depth-estimation metrics of pred against gt (both (H, W) metres) on mask
    (H, W): AbsRel, SqRel, RMSE, RMSE log and the shares of pixels with max(pred/gt,
    gt/pred) below 1.25, 1.25^2 and 1.25^3 (`delta_1_25`, `_2`, `_3`)."""
    p = np.maximum(pred[mask].astype(np.float64), 1e-6)
    g = gt[mask].astype(np.float64)
    if len(g) == 0:
        nan = float("nan")
        return {"abs_rel": nan, "sq_rel": nan, "rmse": nan, "rmse_log": nan,
                "delta_1_25": nan, "delta_1_25_2": nan, "delta_1_25_3": nan, "pixels": 0}
    ratio = np.maximum(p / g, g / p)
    return {"abs_rel": float(np.mean(np.abs(p - g) / g)),
            "sq_rel": float(np.mean((p - g) ** 2 / g)),
            "rmse": float(np.sqrt(np.mean((p - g) ** 2))),
            "rmse_log": float(np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2))),
            "delta_1_25": float(np.mean(ratio < 1.25)),
            "delta_1_25_2": float(np.mean(ratio < 1.25 ** 2)),
            "delta_1_25_3": float(np.mean(ratio < 1.25 ** 3)), "pixels": int(len(g))}


def lidar_nearest_fill(sample: CameraSample, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dense depth (H, W), has_return (H, W)): LiDAR points (N, 3) world projected into
    the image and every pixel filled with its nearest projected return."""
    sparse = sparse_depth_map(sample, points)
    has_return = sparse > 0
    if not has_return.any():
        return np.zeros_like(sparse), has_return
    _, (rows, cols) = distance_transform_edt(~has_return, return_indices=True)
    return sparse[rows, cols], has_return
