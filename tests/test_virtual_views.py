"""Virtual-camera policy: exact poses, intrinsics at another resolution, placement out of
solid geometry against analytic density fields, determinism of the jitter."""

import numpy as np
import pytest

from distillprep.scenes.model import CameraSample
from distillprep.scenes.projection import pixel_rays
from distillprep.teachers.nerf.virtual import (
    DISTILLNERF_OFFSETS,
    VirtualViewConfig,
    place_virtual_camera,
    plan_arrays,
    plan_virtual_views,
    scaled_intrinsics,
    virtual_pose,
)

K = np.array([[800.0, 0.0, 640.5], [0.0, 780.0, 355.25], [0.0, 0.0, 1.0]])
SOLID = 1e6


def _pose(seed: int = 3) -> np.ndarray:
    """A camera with a generic rotation and position."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    pose = np.eye(4)
    pose[:3, :3] = q * np.sign(np.linalg.det(q))
    pose[:3, 3] = rng.normal(size=3) * 20
    return pose


def _camera(c2w, k, width, height) -> CameraSample:
    return CameraSample(scene_id="s", camera="CAM_FRONT", timestamp_us=0, intrinsics=k,
                        cam_to_world=c2w, width=width, height=height, source_file="x.jpg",
                        is_keyframe=True, token="t", loader=lambda: None)


def _local(c2w, points):
    """points (P, 3) world -> the camera c2w's OpenCV frame."""
    return (points - c2w[:3, 3]) @ c2w[:3, :3]


def empty(points):
    return np.zeros(len(points))


# -- poses ------------------------------------------------------------------------------
def test_default_policy_is_distillnerf_right_left_up():
    assert VirtualViewConfig().offsets == DISTILLNERF_OFFSETS == (
        (1, 0, 0, 0, 0, 0), (-1, 0, 0, 0, 0, 0), (0, -1, 0, 0, 0, 0))


def test_translations_move_the_centre_along_the_camera_axes_and_keep_orientation():
    c2w = _pose()
    right, left, up = (virtual_pose(c2w, o) for o in DISTILLNERF_OFFSETS)
    np.testing.assert_allclose(right[:3, 3], c2w[:3, 3] + c2w[:3, 0], atol=1e-12)
    np.testing.assert_allclose(left[:3, 3], c2w[:3, 3] - c2w[:3, 0], atol=1e-12)
    np.testing.assert_allclose(up[:3, 3], c2w[:3, 3] - c2w[:3, 1], atol=1e-12)
    for pose in (right, left, up):
        np.testing.assert_allclose(pose[:3, :3], c2w[:3, :3], atol=1e-12)
        np.testing.assert_array_equal(pose[3], [0, 0, 0, 1])
    np.testing.assert_allclose(np.linalg.norm(right[:3, 3] - c2w[:3, 3]), 1.0, atol=1e-12)
    general = virtual_pose(c2w, (0.3, -0.2, 1.5, 0, 0, 0))
    np.testing.assert_allclose(general[:3, 3], c2w[:3, 3] + c2w[:3, :3] @ [0.3, -0.2, 1.5],
                               atol=1e-12)


def test_rotations_turn_the_camera_about_its_own_axes():
    c2w = _pose()
    x, y, z = c2w[:3, 0], c2w[:3, 1], c2w[:3, 2]
    yaw = virtual_pose(c2w, (0, 0, 0, 0, 90, 0))  # turn right: forward -> old right
    np.testing.assert_allclose(yaw[:3, 2], x, atol=1e-12)
    np.testing.assert_allclose(yaw[:3, 0], -z, atol=1e-12)
    np.testing.assert_allclose(yaw[:3, 1], y, atol=1e-12)
    pitch = virtual_pose(c2w, (0, 0, 0, 90, 0, 0))  # look up: forward -> old up (-y)
    np.testing.assert_allclose(pitch[:3, 2], -y, atol=1e-12)
    np.testing.assert_allclose(pitch[:3, 0], x, atol=1e-12)
    roll = virtual_pose(c2w, (0, 0, 0, 0, 0, 90))  # about forward: right -> old down
    np.testing.assert_allclose(roll[:3, 0], y, atol=1e-12)
    np.testing.assert_allclose(roll[:3, 2], z, atol=1e-12)
    for pose in (yaw, pitch, roll):
        np.testing.assert_allclose(pose[:3, 3], c2w[:3, 3], atol=1e-12)
    # Jitter is added to the offset's own angles; translation stays in the source frame.
    jittered = virtual_pose(c2w, (1, 0, 0, 0, 60, 0), pitch_jitter_deg=0, yaw_jitter_deg=30)
    np.testing.assert_allclose(jittered[:3, 2], x, atol=1e-12)
    np.testing.assert_allclose(jittered[:3, 3], c2w[:3, 3] + x, atol=1e-12)


def test_virtual_pose_rejects_a_wrong_offset():
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        virtual_pose(np.eye(4), (1, 0, 0))
    with pytest.raises(ValueError, match=r"offsets\[0\]"):
        VirtualViewConfig(offsets=((1, 0, 0),))
    with pytest.raises(ValueError, match="backoff"):
        VirtualViewConfig(backoff=(1.5,))


# -- intrinsics -------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.5, 0.25, 2.0, (0.5, 0.25)])
def test_scaled_intrinsics_keep_pixel_centres_consistent_with_pixel_rays(scale):
    c2w = _pose()
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    k2 = scaled_intrinsics(K, scale)
    # Pixel centre (u', v') of the scaled image lies at ((u' + 1/2) / s - 1/2) in the
    # source image: the same ray through both.
    scaled_pix = np.array([[0.0, 0.0], [3.0, 7.0], [100.0, 40.0]])
    source_pix = np.column_stack([(scaled_pix[:, 0] + 0.5) / sx - 0.5,
                                  (scaled_pix[:, 1] + 0.5) / sy - 0.5])
    o1, d1 = pixel_rays(K, c2w, source_pix)
    o2, d2 = pixel_rays(k2, c2w, scaled_pix)
    np.testing.assert_allclose(o1, o2)
    np.testing.assert_allclose(d1, d2, atol=1e-12)
    if scale == 0.5:  # new pixel (0, 0) is the 2x2 block of old pixels 0 and 1
        _, d_block = pixel_rays(K, c2w, np.array([[0.5, 0.5]]))
        np.testing.assert_allclose(d2[0], d_block[0], atol=1e-12)


def test_a_world_point_projects_to_the_scaled_pixel():
    c2w = _pose()
    width, height = 1280, 711
    points = c2w[:3, 3] + np.array([[2.0, -1.0, 10.0], [-3.0, 0.5, 25.0]]) @ c2w[:3, :3].T
    uv, z = _camera(c2w, K, width, height).world_to_pixels(points)
    for w2, h2 in [(640, 356), (320, 178), (2560, 1422)]:
        sx, sy = w2 / width, h2 / height
        uv2, z2 = _camera(c2w, scaled_intrinsics(K, (sx, sy)), w2, h2).world_to_pixels(points)
        np.testing.assert_allclose(z2, z)
        np.testing.assert_allclose(uv2[:, 0], sx * (uv[:, 0] + 0.5) - 0.5, atol=1e-9)
        np.testing.assert_allclose(uv2[:, 1], sy * (uv[:, 1] + 0.5) - 0.5, atol=1e-9)
    # The image corners (pixel edges) map onto each other: the field of view is unchanged.
    corners = np.array([[-0.5, -0.5], [width - 0.5, height - 0.5]])
    _, d = pixel_rays(K, c2w, corners)
    _, d2 = pixel_rays(scaled_intrinsics(K, 0.5), c2w,
                       np.array([[-0.5, -0.5], [width / 2 - 0.5, height / 2 - 0.5]]))
    np.testing.assert_allclose(d, d2, atol=1e-12)


# -- placement --------------------------------------------------------------------------
def _wall_right(c2w, at=0.5):
    """Solid everything at or beyond camera-x = `at` (a building to the camera's right)."""
    return lambda p: np.where(_local(c2w, p)[:, 0] >= at, SOLID, 0.0)


def test_empty_space_keeps_every_view_exactly():
    c2w = _pose()
    config = VirtualViewConfig()
    for offset in config.offsets:
        target = virtual_pose(c2w, offset)
        placed = place_virtual_camera(c2w, target, empty, config)
        assert placed.status == "kept" and placed.shift_m == 0.0
        np.testing.assert_array_equal(placed.cam_to_world, target)


def test_a_wall_to_the_right_moves_the_right_view_and_keeps_left_and_up():
    c2w = _pose()
    config = VirtualViewConfig(clearance=0.2, backoff=(0.75, 0.5, 0.25))
    density = _wall_right(c2w)
    right, left, up = (virtual_pose(c2w, o) for o in config.offsets)
    moved = place_virtual_camera(c2w, right, density, config)
    # 0.75 and 0.5 lie in or against the wall; at 0.25 the probe 0.2 m right is at 0.45.
    assert moved.status == "moved"
    assert moved.shift_m == pytest.approx(0.75, abs=1e-12)
    np.testing.assert_allclose(moved.cam_to_world[:3, 3], c2w[:3, 3] + 0.25 * c2w[:3, 0],
                               atol=1e-12)
    np.testing.assert_allclose(moved.cam_to_world[:3, :3], c2w[:3, :3], atol=1e-12)
    for target in (left, up):
        placed = place_virtual_camera(c2w, target, density, config)
        assert placed.status == "kept" and placed.shift_m == 0.0
    # A wider clearance leaves no free spot on the way: dropped.
    wide = VirtualViewConfig(clearance=0.3)
    assert place_virtual_camera(c2w, right, density, wide).status == "dropped"


def test_a_thin_wall_between_source_and_spot_blocks_it_through_the_segment():
    """The spot itself and its probes are free, but the camera would sit behind a wall."""
    c2w = _pose()
    thin = lambda p: np.where(np.abs(_local(c2w, p)[:, 0] - 0.55) < 0.02, SOLID, 0.0)  # noqa: E731
    config = VirtualViewConfig(clearance=0.1, backoff=(0.75, 0.25))
    right = virtual_pose(c2w, (1, 0, 0, 0, 0, 0))
    assert np.all(thin(right[:3, 3] + 0.1 * np.vstack([np.eye(3), -np.eye(3)]) @ c2w[:3, :3].T)
                  == 0)  # the spot and its probes are free
    placed = place_virtual_camera(c2w, right, thin, config)
    assert placed.status == "moved" and placed.shift_m == pytest.approx(0.75)


def test_solid_everywhere_but_the_source_drops_every_view():
    c2w = _pose()
    pocket = lambda p: np.where(np.linalg.norm(p - c2w[:3, 3], axis=1) < 0.1, 0.0, SOLID)  # noqa: E731
    plan = plan_virtual_views(c2w[None], K[None], (720, 1280), pocket, VirtualViewConfig())
    assert plan.views == [] and len(plan.dropped) == 3
    assert [v.offset_index for v in plan.dropped] == [0, 1, 2]
    assert all(v.status == "dropped" and v.shift_m == 0.0 for v in plan.dropped)


def test_density_fn_may_return_torch():
    torch = pytest.importorskip("torch")
    c2w = _pose()
    placed = place_virtual_camera(c2w, virtual_pose(c2w, (1, 0, 0, 0, 0, 0)),
                                  lambda p: torch.zeros(len(p)), VirtualViewConfig())
    assert placed.status == "kept"
    with pytest.raises(ValueError, match="one density per point"):
        place_virtual_camera(c2w, c2w, lambda p: np.zeros(3), VirtualViewConfig())


# -- planning ---------------------------------------------------------------------------
def test_plan_lists_views_sample_major_with_scaled_intrinsics_and_sizes():
    poses = np.stack([_pose(1), _pose(2)])
    ks = np.stack([K, K * [[2], [2], [1]]])
    sizes = [(711, 1280), (900, 1600)]
    config = VirtualViewConfig(resolution_scale=0.25)
    # A wall to the right of camera 1 only.
    density = _wall_right(poses[1])
    plan = plan_virtual_views(poses, ks, sizes, density, VirtualViewConfig(
        resolution_scale=0.25, clearance=0.2))
    assert [(v.source_sample, v.offset_index, v.status) for v in plan.views] == [
        (0, 0, "kept"), (0, 1, "kept"), (0, 2, "kept"),
        (1, 0, "moved"), (1, 1, "kept"), (1, 2, "kept")]
    assert plan.dropped == []
    assert plan.views[0].size == (178, 320) and plan.views[3].size == (225, 400)
    np.testing.assert_allclose(plan.views[0].intrinsics, scaled_intrinsics(K, (320 / 1280,
                                                                              178 / 711)))
    np.testing.assert_allclose(plan.views[3].intrinsics, scaled_intrinsics(ks[1], 0.25))
    np.testing.assert_allclose(plan.views[2].cam_to_world,
                               virtual_pose(poses[0], config.offsets[2]))
    np.testing.assert_array_equal(plan.views[3].offset, [1, 0, 0, 0, 0, 0])
    arrays = plan_arrays(plan.views)
    np.testing.assert_array_equal(arrays["virtual_source_sample"], [0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(arrays["virtual_shift"], [0, 0, 0, 0.75, 0, 0])
    assert arrays["virtual_cam_to_world"].shape == (6, 4, 4)
    assert arrays["virtual_offset"].dtype == np.float64
    assert arrays["virtual_source_sample"].dtype == np.int32
    assert arrays["virtual_shift"].dtype == np.float32
    empty_arrays = plan_arrays([])
    assert empty_arrays["virtual_offset"].shape == (0, 6)


def test_jitter_is_bounded_and_deterministic_for_a_seed():
    poses = np.stack([_pose(1), _pose(2), _pose(3)])
    config = VirtualViewConfig(yaw_jitter_deg=5.0, pitch_jitter_deg=2.0, seed=42)
    a = plan_virtual_views(poses, np.stack([K] * 3), (711, 1280), empty, config)
    b = plan_virtual_views(poses, np.stack([K] * 3), (711, 1280), empty, config)
    other = plan_virtual_views(poses, np.stack([K] * 3), (711, 1280), empty,
                               VirtualViewConfig(yaw_jitter_deg=5.0, pitch_jitter_deg=2.0,
                                                 seed=43))
    jitter = np.array([v.jitter_deg for v in a.views])
    assert jitter.shape == (9, 2)
    np.testing.assert_array_equal(jitter, [v.jitter_deg for v in b.views])
    for va, vb in zip(a.views, b.views, strict=True):
        np.testing.assert_array_equal(va.cam_to_world, vb.cam_to_world)
    assert not np.allclose(jitter, [v.jitter_deg for v in other.views])
    assert np.all(np.abs(jitter[:, 0]) <= 2.0) and np.all(np.abs(jitter[:, 1]) <= 5.0)
    assert np.all(jitter != 0)
    for view in a.views:  # the pose is the offset's plus exactly the recorded jitter
        pitch, yaw = view.jitter_deg
        expected = virtual_pose(poses[view.source_sample], view.offset, pitch, yaw)
        np.testing.assert_allclose(view.cam_to_world, expected, atol=1e-12)
    # The requested offset is recorded without jitter; zero jitter draws exactly zero.
    np.testing.assert_array_equal(a.views[0].offset, DISTILLNERF_OFFSETS[0])
    still = plan_virtual_views(poses, np.stack([K] * 3), (711, 1280), empty,
                               VirtualViewConfig())
    assert all(v.jitter_deg == (0.0, 0.0) for v in still.views)


def test_plan_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same N cameras"):
        plan_virtual_views(np.stack([np.eye(4)] * 2), K[None], (10, 10), empty,
                           VirtualViewConfig())
