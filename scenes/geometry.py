"""Rigid-transform helpers shared by every reader and writer.

Conventions (the same throughout distillprep):
- A pose `a_to_b` is a (4, 4) float64 matrix mapping homogeneous points in frame a to
  frame b: `p_b = a_to_b @ p_a`.
- Quaternions are (w, x, y, z), Hamilton convention, as in nuScenes and pyquaternion.
- Camera frames are OpenCV: x right, y down, z forward.
"""

from __future__ import annotations

import numpy as np

UNIT_QUATERNION_TOLERANCE = 1e-4


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of a unit quaternion q (4,) given as (w, x, y, z)."""
    w, x, y, z = (float(v) for v in q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """Unit quaternion (4,) as (w, x, y, z) with w >= 0 of a rotation matrix (3, 3)."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def yaw_pitch_roll_matrix(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotation (3, 3) = Rz(yaw) @ Ry(pitch) @ Rx(roll), angles in radians."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    return rz @ ry @ rx


def make_pose(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Pose (4, 4) from a rotation (3, 3) and a translation (3,)."""
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = translation
    return pose


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """Inverse of a rigid pose (4, 4)."""
    rot = pose[:3, :3]
    return make_pose(rot.T, -rot.T @ pose[:3, 3])


def transform_points(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply pose (4, 4) to points (N, 3); returns (N, 3) in the pose's target frame."""
    return points @ pose[:3, :3].T + pose[:3, 3]


def is_rotation(rotation: np.ndarray, tol: float = 1e-6) -> bool:
    """True when a (3, 3) matrix is orthonormal with determinant +1 within tol."""
    r = np.asarray(rotation, dtype=np.float64)
    return bool(
        r.shape == (3, 3)
        and np.all(np.isfinite(r))
        and np.allclose(r @ r.T, np.eye(3), atol=tol)
        and abs(np.linalg.det(r) - 1.0) < tol
    )
