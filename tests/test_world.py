"""The procedural world: exact rebuild, road geometry, and a scene as hard as real roads."""

import json

import numpy as np
import pytest

from distillprep.scenes.synthetic.builder import build_world
from distillprep.scenes.synthetic.capture import ego_to_world
from distillprep.scenes.synthetic.noise import fbm, value_noise
from distillprep.scenes.synthetic.render import HDL32E, render_view
from distillprep.scenes.synthetic.rig import NUSCENES_RIG
from distillprep.scenes.synthetic.world import World


def test_world_json_rebuilds_exactly():
    world = build_world(123, 6.0)
    text = json.dumps(world.to_json())
    again = World.from_json(json.loads(text))
    assert again == world
    np.testing.assert_array_equal(again.primitives_at(2.5).center, world.primitives_at(2.5).center)


def test_world_json_refuses_unknown_format_version():
    data = build_world(1, 1.0).to_json()
    data["format_version"] = 99
    with pytest.raises(ValueError, match="format_version"):
        World.from_json(data)


def test_road_projection_inverts_pose():
    road = build_world(9, 20.0).road
    rng = np.random.default_rng(0)
    s = rng.uniform(-100, 300, 500)
    d = rng.uniform(-30, 30, 500)
    x, y, _ = road.pose(s, d)
    s2, d2 = road.project(np.stack([x, y], axis=1))
    np.testing.assert_allclose(s2, s, atol=1e-6)
    np.testing.assert_allclose(d2, d, atol=1e-6)


def test_noise_is_deterministic_and_in_range():
    pts = np.random.default_rng(1).uniform(-50, 50, (1000, 3))
    a, b = fbm(pts, seed=3), fbm(pts, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert not np.array_equal(value_noise(pts, 3), value_noise(pts, 4))


def test_ego_moves_fast_with_speed_and_yaw_changes():
    world = build_world(4, 20.0)
    t = np.linspace(0, 20, 81)
    speed = world.ego.speed(t)
    assert speed.min() >= 10.0 and speed.max() - speed.min() > 2.0
    yaws = [np.arctan2(ego_to_world(world, ti)[1, 0], ego_to_world(world, ti)[0, 0]) for ti in t]
    assert np.ptp(np.unwrap(yaws)) > np.deg2rad(5)
    # Speed is the derivative of the closed-form arc length.
    ds = (world.ego.s(t + 1e-4) - world.ego.s(t - 1e-4)) / 2e-4
    np.testing.assert_allclose(ds, speed, rtol=1e-6)


def _views(seed, times, size=(128, 72)):
    world = build_world(seed, max(times) + 1)
    for t in times:
        ego = ego_to_world(world, t)
        for cam in NUSCENES_RIG.cameras:
            pose = ego @ cam.cam_to_ego()
            yield world, cam, pose, render_view(world, cam.intrinsics(*size), pose, t, *size)


def test_sky_covers_a_fair_part_of_the_views():
    sky = [v.sky.mean() for seed in (0, 1) for *_, v in _views(seed, (0.0, 6.0))]
    assert 0.12 < np.mean(sky) < 0.40, np.mean(sky)
    # The sky sits in the upper part of the image, as on real roads.
    assert all(v.sky[-v.sky.shape[0] // 3:].mean() < 0.01 for *_, v in _views(2, (1.0,)))


def test_textures_have_detail_at_several_scales():
    from scipy.ndimage import uniform_filter

    for *_, view in _views(3, (2.0,), size=(320, 180)):
        gray = view.rgb.astype(float).mean(axis=2)
        surface = ~view.sky
        for size in (3, 9, 27):
            detail = np.abs(gray - uniform_filter(gray, size))[surface]
            assert detail.mean() > 1.0, (size, detail.mean())


def test_lidar_misses_geometry_the_cameras_see():
    """Buildings above the top beam and thin poles leave camera pixels that no LiDAR
    return can explain: depth densified from LiDAR alone is incomplete, as in real data."""
    top = np.deg2rad(max(HDL32E.elevations_deg))
    unreachable, total = 0, 0
    for _world, cam, pose, view in _views(5, (1.0, 5.0), size=(160, 90)):
        ego = pose @ np.linalg.inv(cam.cam_to_ego())
        lidar_origin = (ego @ NUSCENES_RIG.lidar("LIDAR_TOP").sensor_to_ego())[:3, 3]
        h, w = view.depth.shape
        u, v = np.meshgrid(np.arange(w), np.arange(h))
        k = cam.intrinsics(w, h)
        cam_pts = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)],
                           -1) * view.depth[..., None]
        world_pts = cam_pts.reshape(-1, 3) @ pose[:3, :3].T + pose[:3, 3]
        rel = world_pts[~view.sky.ravel()] - lidar_origin
        elevation = np.arctan2(rel[:, 2], np.linalg.norm(rel[:, :2], axis=1))
        unreachable += int((elevation > top).sum())
        total += len(rel)
    assert unreachable / total > 0.03, unreachable / total
