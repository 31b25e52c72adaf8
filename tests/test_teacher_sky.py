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


def _sky_head_psnr(sky_grid, steps: int = 300) -> float:
    """PSNR of the static field's sky head fitted alone to the generator's cloudy sky
    (a function of direction only), on held-out directions."""
    import dataclasses

    import torch

    from distillprep.scenes.synthetic.shading import sky_color
    from distillprep.teachers.nerf.contraction import SceneBox
    from distillprep.teachers.nerf.field import FieldConfig, StaticField

    torch.manual_seed(0)
    field = StaticField(dataclasses.replace(FieldConfig(), sky_grid=sky_grid),
                        SceneBox((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)), num_cameras=1)
    rng = np.random.default_rng(0)

    def directions(n):  # upward, where the clouds are
        d = rng.normal(size=(n, 3))
        d[:, 2] = np.abs(d[:, 2]) + 0.3
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    def colour(d):
        dirs = torch.as_tensor(d, dtype=torch.float32)
        return field.sky(dirs, field.ray_features(dirs, torch.zeros(len(d), dtype=torch.long)))

    optimizer = torch.optim.Adam(field.parameters(), lr=1e-2, eps=1e-15)
    for _ in range(steps):
        d = directions(4096)
        loss = ((colour(d) - torch.as_tensor(sky_color(d), dtype=torch.float32)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    d = directions(20000)
    with torch.no_grad():
        mse = float(((colour(d).numpy() - sky_color(d)) ** 2).mean())
    return -10 * np.log10(mse)


def test_the_sky_grid_lets_the_sky_head_hold_clouds():
    from distillprep.teachers.nerf.field import SKY_GRID

    with_grid, without = _sky_head_psnr(SKY_GRID), _sky_head_psnr(None)
    assert with_grid > without + 3.0, (with_grid, without)
