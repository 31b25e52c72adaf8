"""Training rays from a scene: geometry against exact depth, LiDAR ranges, bad input."""

import dataclasses
import shutil

import numpy as np
import pytest
from PIL import Image

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.scenes.synthetic.truth import load_ground_truth_depth
from distillprep.teachers.errors import TeacherDataError
from distillprep.teachers.nerf.rays import (
    camera_rays,
    check_scene_for_fit,
    holdout_frames,
    lidar_rays,
)


@pytest.fixture(scope="module")
def scene(small_dataset):
    return read_nuscenes(small_dataset, scenes=["scene-0001"]).scenes[0]


def test_camera_rays_hit_the_exact_depth_where_the_pixels_say(scene, small_dataset):
    rays = camera_rays(scene, [1], stride=3)
    np.testing.assert_allclose(np.linalg.norm(rays.directions, axis=1), 1.0, atol=1e-12)
    assert np.all(rays.range_per_depth >= 1.0)
    for name, sample in scene.frames[1].cameras.items():
        mine = rays.camera_index == scene.camera_names.index(name)
        depth = load_ground_truth_depth(small_dataset, sample.source_file)
        col, row = rays.pixel[mine, 0].astype(int), rays.pixel[mine, 1].astype(int)
        d = depth[row, col].astype(np.float64)
        solid = d > 0
        points = (rays.origins[mine] + rays.directions[mine]
                  * (d * rays.range_per_depth[mine])[:, None])[solid]
        uv, z = sample.world_to_pixels(points)
        np.testing.assert_allclose(uv, rays.pixel[mine][solid], atol=1e-6)
        np.testing.assert_allclose(z, d[solid], rtol=1e-9)
        np.testing.assert_allclose(rays.rgb[mine], sample.load_image()[row, col] / 255.0,
                                   atol=1e-6)


def test_lidar_rays_end_at_the_returns(scene):
    rays = lidar_rays(scene, [0, 2])
    points = np.concatenate([scene.frames[f].lidar_points().points for f in (0, 2)])
    np.testing.assert_allclose(rays.origins + rays.directions * rays.ranges[:, None], points,
                               atol=1e-9)
    assert set(np.unique(rays.frame_index)) == {0, 2}
    assert rays.time_s.min() == 0.0 and rays.time_s.max() == pytest.approx(1.0, abs=0.01)


def _with_keyframes(scene, flags):
    """`scene` with len(flags) frames (its own, repeated), keyframe where flags say so."""
    frames = [dataclasses.replace(scene.frames[i % len(scene.frames)], index=i, is_keyframe=k)
              for i, k in enumerate(flags)]
    return dataclasses.replace(scene, frames=tuple(frames))


def test_holdout_frames_sit_between_training_frames(scene):
    train, held = holdout_frames(_with_keyframes(scene, [True] * 10), 2)
    assert held == [3, 6] and sorted(train + held) == list(range(10))
    with pytest.raises(TeacherDataError, match="scene-0001.*4 keyframes leave fewer than 3"):
        holdout_frames(_with_keyframes(scene, [True] * 4), 2)


def test_holdout_frames_hold_out_keyframes_and_train_on_the_sweeps_around_them(scene):
    flags = [i % 3 == 0 for i in range(30)]  # keyframes 0, 3, ..., 27 and two sweeps after each
    swept = _with_keyframes(scene, flags)
    train, held = holdout_frames(swept, 2)
    assert held == [9, 18] and sorted(train + held) == list(range(30))
    keys = swept.keyframes_only()
    assert [f.index for f in keys.frames] == list(range(10))
    assert [f.timestamp_us for f in keys.frames] == [swept.frames[i].timestamp_us
                                                     for i in range(0, 30, 3)]


def test_fit_input_checks(scene, small_dataset, tmp_path):
    check_scene_for_fit(scene)  # the synthetic scene is fine
    with pytest.raises(TeacherDataError, match="at least 5"):
        check_scene_for_fit(scene, min_frames=5)
    root = shutil.copytree(small_dataset, tmp_path / "ds")
    victim = root / scene.frames[0].cameras["CAM_BACK"].source_file.split(
        str(small_dataset) + "/")[1]
    Image.new("RGB", Image.open(victim).size).save(victim, quality=95)
    dark = read_nuscenes(root, scenes=["scene-0001"]).scenes[0]
    with pytest.raises(TeacherDataError, match="all black") as info:
        check_scene_for_fit(dark)
    assert info.value.file.endswith(victim.name)


def test_fit_input_without_lidar_fails_early(scene):
    from dataclasses import replace

    bare = replace(scene, frames=tuple(replace(f, lidar=()) for f in scene.frames))
    with pytest.raises(TeacherDataError, match="no LiDAR sweeps") as info:
        check_scene_for_fit(bare)
    assert info.value.scene == "scene-0001"
