"""The LiDAR-derived sky mask against the synthetic world's exact sky: mostly right where
it says sky, and it finds a good part of the sky (its blind spot: buildings beyond the
LiDAR's range, which it takes for sky; see `teachers/nerf/sky.py`)."""

import numpy as np
import pytest

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.scenes.synthetic.truth import load_ground_truth_sky
from distillprep.teachers.nerf.rays import camera_rays
from distillprep.teachers.nerf.sky import SkyMaskConfig, sky_mask


@pytest.mark.parametrize("propagate_up, min_recall", [(False, 0.15), (True, 0.45)])
def test_sky_mask_against_exact_sky(small_dataset, propagate_up, min_recall):
    scene = read_nuscenes(small_dataset, scenes=["scene-0001"]).scenes[0]
    hit = said = truth = 0
    for frame in scene.frames:
        for sample in frame.cameras.values():
            mask = sky_mask(sample, frame.lidar, SkyMaskConfig(propagate_up=propagate_up))
            sky = load_ground_truth_sky(small_dataset, sample.source_file) > 0
            hit += int((mask & sky).sum())
            said += int(mask.sum())
            truth += int(sky.sum())
    assert truth > 0 and said > 0
    assert hit / said > 0.85, hit / said  # precision
    assert hit / truth > min_recall, hit / truth  # recall


def test_without_returns_nothing_is_sky(small_dataset):
    scene = read_nuscenes(small_dataset, scenes=["scene-0001"]).scenes[0]
    frame = scene.frames[0]
    sample = next(iter(frame.cameras.values()))
    sweep = frame.lidar[0]
    empty = type(sweep)(**{**sweep.__dict__,
                           "loader": lambda: (np.zeros((0, 3)), np.zeros(0))})
    assert not sky_mask(sample, [empty]).any()


def test_training_rays_carry_the_mask(small_dataset):
    scene = read_nuscenes(small_dataset, scenes=["scene-0001"]).scenes[0]
    rays = camera_rays(scene, [0], stride=3, sky=SkyMaskConfig())
    sample = scene.frames[0].cameras[scene.camera_names[0]]
    mask = sky_mask(sample, scene.frames[0].lidar)
    first = rays.camera_index == 0
    cols, rows = rays.pixel[first, 0].astype(int), rays.pixel[first, 1].astype(int)
    assert np.array_equal(rays.sky[first], mask[rows, cols])
    assert not camera_rays(scene, [0], stride=3).sky.any()
