"""Waymo range images <-> points, with the conventions of Waymo's own utilities
(`range_image_utils`, `frame_utils`), in numpy: what their TensorFlow code computes.

- Rows: row 0 is the highest beam; a calibration's inclinations are ascending, so row r
  has inclination `inclinations[H - 1 - r]`; with none listed, H uniform inclinations
  at (r + 0.5) / H between min and max (`compute_inclination`).
- Columns: column c looks along vehicle azimuth (1 - (2c + 1) / W) pi (behind the car at
  c = 0, forward at the middle, turning clockwise seen from above), i.e. sensor azimuth
  that minus the laser's yaw in the vehicle frame.
- A pixel's point is range * (cos az cos inc, sin az cos inc, sin inc) in the laser frame,
  then laser -> vehicle by the extrinsic; with a pose range image (TOP), vehicle -> world
  by the pixel's own pose, then world -> vehicle by the frame's pose.
"""

from __future__ import annotations

import numpy as np


def row_inclinations(inclination_min: float, inclination_max: float,
                     inclinations: np.ndarray | None, height: int) -> np.ndarray:
    """(H,) inclination of each row, radians, row 0 highest."""
    if inclinations is None or len(inclinations) == 0:
        ascending = (0.5 + np.arange(height)) / height * (
            inclination_max - inclination_min) + inclination_min
    else:
        ascending = np.asarray(inclinations, dtype=np.float64)
    return ascending[::-1].copy()


def column_azimuths(width: int, extrinsic: np.ndarray) -> np.ndarray:
    """(W,) azimuth of each column in the laser frame, radians."""
    yaw = np.arctan2(extrinsic[1, 0], extrinsic[0, 0])
    ratios = (np.arange(width, 0, -1) - 0.5) / width
    return (ratios * 2.0 - 1.0) * np.pi - yaw


def pixel_directions(inclinations: np.ndarray, width: int, extrinsic: np.ndarray,
                     ) -> np.ndarray:
    """(H, W, 3) unit ray of every pixel in the laser frame; `inclinations` (H,) by row."""
    az = column_azimuths(width, extrinsic)[None, :]
    inc = np.asarray(inclinations, dtype=np.float64)[:, None]
    return np.stack(np.broadcast_arrays(np.cos(az) * np.cos(inc), np.sin(az) * np.cos(inc),
                                        np.sin(inc)), axis=-1)


def pose_matrices(pose: np.ndarray) -> np.ndarray:
    """(..., 4, 4) transforms of (..., 6) roll, pitch, yaw, x, y, z (R = Rz Ry Rx)."""
    pose = np.asarray(pose, dtype=np.float64)
    roll, pitch, yaw = pose[..., 0], pose[..., 1], pose[..., 2]
    cr, sr, cp, sp, cy, sy = (np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch),
                              np.cos(yaw), np.sin(yaw))
    out = np.zeros(pose.shape[:-1] + (4, 4))
    out[..., 0, 0], out[..., 0, 1], out[..., 0, 2] = cy * cp, cy * sp * sr - sy * cr, \
        cy * sp * cr + sy * sr
    out[..., 1, 0], out[..., 1, 1], out[..., 1, 2] = sy * cp, sy * sp * sr + cy * cr, \
        sy * sp * cr - cy * sr
    out[..., 2, 0], out[..., 2, 1], out[..., 2, 2] = -sp, cp * sr, cp * cr
    out[..., :3, 3] = pose[..., 3:]
    out[..., 3, 3] = 1.0
    return out


def pose_vectors(matrices: np.ndarray) -> np.ndarray:
    """(..., 6) roll, pitch, yaw, x, y, z of (..., 4, 4) rigid transforms."""
    m = np.asarray(matrices, dtype=np.float64)
    roll = np.arctan2(m[..., 2, 1], m[..., 2, 2])
    pitch = -np.arcsin(np.clip(m[..., 2, 0], -1.0, 1.0))
    yaw = np.arctan2(m[..., 1, 0], m[..., 0, 0])
    return np.concatenate([np.stack([roll, pitch, yaw], axis=-1), m[..., :3, 3]], axis=-1)


def range_image_points(ranges: np.ndarray, inclinations: np.ndarray, extrinsic: np.ndarray,
                       pixel_pose: np.ndarray | None = None,
                       frame_pose: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) vehicle-frame point of every pixel of `ranges` (H, W) (meaningless where
    range <= 0); with `pixel_pose` (H, W, 6) and `frame_pose` (4, 4), each pixel is moved
    from the vehicle at its own time into the vehicle at the frame's."""
    local = pixel_directions(inclinations, ranges.shape[1], extrinsic) * ranges[..., None]
    vehicle = local @ extrinsic[:3, :3].T + extrinsic[:3, 3]
    if pixel_pose is None:
        return vehicle
    if frame_pose is None:
        raise ValueError("a pixel pose needs the frame pose")
    poses = pose_matrices(pixel_pose)
    world = np.einsum("hwij,hwj->hwi", poses[..., :3, :3], vehicle) + poses[..., :3, 3]
    inverse = np.linalg.inv(frame_pose)
    return world @ inverse[:3, :3].T + inverse[:3, 3]
