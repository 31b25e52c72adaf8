import numpy as np
import pytest
from pyquaternion import Quaternion

from distillprep.scenes.geometry import (
    invert_pose,
    is_rotation,
    make_pose,
    matrix_to_quaternion,
    quaternion_to_matrix,
    transform_points,
    yaw_pitch_roll_matrix,
)


def test_quaternion_matches_pyquaternion_and_round_trips():
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        r = quaternion_to_matrix(q)
        np.testing.assert_allclose(r, Quaternion(q).rotation_matrix, atol=1e-12)
        back = matrix_to_quaternion(r)
        assert np.allclose(back, q, atol=1e-10) or np.allclose(back, -q, atol=1e-10)
        assert back[0] >= 0


def test_yaw_rotates_x_towards_y():
    r = yaw_pitch_roll_matrix(np.pi / 2)
    np.testing.assert_allclose(r @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    # Positive pitch tilts the forward axis downwards (z decreases).
    assert (yaw_pitch_roll_matrix(0.0, 0.1) @ [1, 0, 0])[2] < 0


def test_pose_inverse_and_transform():
    pose = make_pose(yaw_pitch_roll_matrix(0.3, -0.2, 0.1), [5.0, -2.0, 1.0])
    np.testing.assert_allclose(invert_pose(pose) @ pose, np.eye(4), atol=1e-12)
    pts = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(transform_points(invert_pose(pose), transform_points(pose, pts)),
                               pts, atol=1e-12)


@pytest.mark.parametrize("matrix, ok", [
    (np.eye(3), True), (np.diag([1.0, 1.0, -1.0]), False), (np.eye(3) * 1.01, False),
    (np.full((3, 3), np.nan), False),
])
def test_is_rotation(matrix, ok):
    assert is_rotation(matrix) is ok
