"""Geometric truth: LiDAR read through the nuScenes reader, projected through the reader's
K and cam_to_world, lands on pixels whose exact depth matches the point's camera depth."""

import numpy as np

from distillprep.scenes.geometry import invert_pose
from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.scenes.synthetic.capture import KEYFRAME_INTERVAL_US, ego_to_world
from distillprep.scenes.synthetic.generate import load_worlds
from distillprep.scenes.synthetic.raycast import cast_rays
from distillprep.scenes.synthetic.render import cast_lidar
from distillprep.scenes.synthetic.rig import NUSCENES_RIG
from distillprep.scenes.synthetic.truth import load_ground_truth_depth


def _inverse_depth_bilinear(depth: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Depth at sub-pixel uv (N, 2). Inverse depth is affine in pixel coordinates over a
    plane, so interpolating it bilinearly is exact on planar surfaces. NaN where a corner
    is sky or outside the image."""
    h, w = depth.shape
    x0, y0 = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
    x0, y0 = np.clip(x0, 0, w - 2), np.clip(y0, 0, h - 2)
    fx, fy = uv[:, 0] - x0, uv[:, 1] - y0
    corners = [depth[y0, x0], depth[y0, x0 + 1], depth[y0 + 1, x0], depth[y0 + 1, x0 + 1]]
    valid = inside & np.all([c > 0 for c in corners], axis=0)
    inv = [1.0 / np.where(c > 0, c, 1.0) for c in corners]
    mix = ((1 - fx) * (1 - fy) * inv[0] + fx * (1 - fy) * inv[1] + (1 - fx) * fy * inv[2]
           + fx * fy * inv[3])
    return np.where(valid, 1.0 / mix, np.nan)


def _visible_static_points(world, cam_spec, t_cam, points_true, moving):
    """Which true LiDAR points (N, 3) world the true camera sees at t_cam: in front, inside
    the image, nothing in between, and not on a moving car (which has moved since the
    sweep). Decided from the generator's own world, independently of the reader."""
    cam_to_world = ego_to_world(world, t_cam) @ cam_spec.cam_to_ego()
    centre = cam_to_world[:3, 3]
    cam = (points_true - centre) @ cam_to_world[:3, :3]
    k = cam_spec.intrinsics(480, 270)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = k[0, 0] * cam[:, 0] / cam[:, 2] + k[0, 2]
        v = k[1, 1] * cam[:, 1] / cam[:, 2] + k[1, 2]
    inside = (cam[:, 2] > 0.5) & (u >= 0) & (u <= 479) & (v >= 0) & (v <= 269)
    hits = cast_rays(world.primitives_at(t_cam), centre, points_true - centre)
    unobstructed = hits.t > 1.0 - 1e-6
    return inside & unobstructed & ~moving


def _projection_errors(dataset, wrong_pose: bool = False) -> tuple[np.ndarray, list[float]]:
    scene = read_nuscenes(dataset).scenes[0]
    world = load_worlds(dataset)[scene.scene_id]
    errors, speeds = [], []
    for k, frame in enumerate(scene.frames):
        lidar = frame.lidar[0]
        points = lidar.load().points
        t_lidar = k * KEYFRAME_INTERVAL_US / 1e6
        truth_pose = ego_to_world(world, t_lidar) @ NUSCENES_RIG.lidar("LIDAR_TOP").sensor_to_ego()
        scan = cast_lidar(world, truth_pose, t_lidar)
        assert len(scan.points) == len(points)
        points_true = scan.points @ truth_pose[:3, :3].T + truth_pose[:3, 3]
        moving = np.array([i >= 0 and world.objects[i].speed != 0 for i in scan.object_index])
        for name, sample in frame.cameras.items():
            spec = NUSCENES_RIG.camera(name)
            t_cam = t_lidar + spec.fire_offset_us / 1e6
            assert sample.timestamp_us - lidar.timestamp_us == spec.fire_offset_us
            visible = _visible_static_points(world, spec, t_cam, points_true, moving)
            cam_to_world = sample.cam_to_world
            if wrong_pose:  # what a reader using the keyframe's (LiDAR) ego pose would get
                cam_to_world = frame.ego_to_world @ spec.cam_to_ego()
            cam = (points[visible] - cam_to_world[:3, 3]) @ cam_to_world[:3, :3]
            uv = cam[:, :2] / cam[:, 2:3] @ sample.intrinsics[:2, :2].T + sample.intrinsics[:2, 2]
            depth = _inverse_depth_bilinear(
                load_ground_truth_depth(dataset, sample.source_file), uv)
            rel = np.abs(depth - cam[:, 2]) / cam[:, 2]
            errors.append(np.where(np.isnan(rel), np.inf, rel))
        if k:
            prev = scene.frames[k - 1]
            dt = (frame.timestamp_us - prev.timestamp_us) / 1e6
            speeds.append(np.linalg.norm(frame.ego_to_world[:3, 3] - prev.ego_to_world[:3, 3]) / dt)
    return np.concatenate(errors), speeds


def test_lidar_projects_onto_exact_depth(geometry_dataset):
    errors, speeds = _projection_errors(geometry_dataset)
    assert min(speeds) >= 10.0, speeds  # fast enough that a wrong ego pose shows
    assert len(errors) > 10_000
    assert np.median(errors) < 0.005, np.median(errors)
    assert np.mean(errors < 0.02) >= 0.95, np.mean(errors < 0.02)


def test_wrong_ego_pose_per_camera_fails_the_same_check(geometry_dataset):
    errors, _ = _projection_errors(geometry_dataset, wrong_pose=True)
    assert np.median(errors) > 0.005 or np.mean(errors < 0.02) < 0.95


def test_reader_cam_to_world_is_ego_at_image_time_times_calibration(geometry_dataset):
    scene = read_nuscenes(geometry_dataset).scenes[0]
    world = load_worlds(geometry_dataset)[scene.scene_id]
    base = scene.frames[0].lidar[0].timestamp_us
    for frame in scene.frames:
        for name, sample in frame.cameras.items():
            truth = ego_to_world(world, (sample.timestamp_us - base) / 1e6) @ NUSCENES_RIG.camera(
                name).cam_to_ego()
            np.testing.assert_allclose(invert_pose(truth) @ sample.cam_to_world, np.eye(4),
                                       atol=1e-9)
            np.testing.assert_allclose(sample.intrinsics,
                                       NUSCENES_RIG.camera(name).intrinsics(480, 270), atol=1e-12)
