"""The LiDAR-derived sky and silent masks against the synthetic world's exact sky and
depth: mostly right where they say sky / nothing within range, and the sky mask finds a
good part of the sky (its blind spot: buildings beyond the LiDAR's range, which it takes
for sky; see `teachers/nerf/sky.py`)."""

import numpy as np
import pytest

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.scenes.synthetic.truth import load_ground_truth_depth, load_ground_truth_sky
from distillprep.teachers.nerf.rays import camera_rays
from distillprep.teachers.nerf.sky import SkyMaskConfig, lidar_masks, scene_returns, sky_mask


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


def test_silent_pixels_see_nothing_within_the_lidar_range(small_dataset):
    """Pixels the LiDAR swept without a return, below the horizon: the far road, fields and
    sky near the horizon; almost never a surface the LiDAR could have hit."""
    scene = read_nuscenes(small_dataset, scenes=["scene-0001"]).scenes[0]
    silent = near = 0
    for frame in scene.frames:
        for sample in frame.cameras.values():
            _, mask = lidar_masks(sample, frame.lidar)
            depth = load_ground_truth_depth(small_dataset, sample.source_file)
            silent += int(mask.sum())
            near += int((mask & (depth > 0) & (depth < 30.0)).sum())
    assert silent > 100
    assert near / silent < 0.05, (near, silent)


def test_near_objects_are_neither_sky_nor_silent(small_dataset):
    """Returns are binned by their direction from the camera: a pole or a car a few metres
    away, which the LiDAR (a metre off) sees at other angles, is still "something there"
    at the pixels it covers (without propagation up a column, which the next test owns)."""
    scene = read_nuscenes(small_dataset, scenes=["scene-0001"]).scenes[0]
    near = flagged = 0
    for frame in scene.frames:
        for sample in frame.cameras.values():
            sky, silent = lidar_masks(sample, frame.lidar, SkyMaskConfig(propagate_up=False))
            depth = load_ground_truth_depth(small_dataset, sample.source_file)
            close = (depth > 0) & (depth < 12.0)
            near += int(close.sum())
            flagged += int(((sky | silent) & close).sum())
    assert near > 1000
    assert flagged / near < 0.002, (flagged, near)


def test_returns_of_other_times_only_take_pixels_away_and_mostly_wrong_ones(small_dataset):
    """A building beyond the LiDAR's range now was within it earlier or later: with the
    scene's other returns, pixels only leave the sky and silent masks, and the masks
    then hold a smaller share of surfaces (their precision rises)."""
    scene = read_nuscenes(small_dataset, scenes=["scene-0001"], sweeps=True).scenes[0]
    returns = scene_returns([s for f in scene.frames for s in f.lidar])
    assert 0 < len(returns) < sum(len(s.load().points) for f in scene.frames for s in f.lidar)
    config = SkyMaskConfig(propagate_up=False)
    counts = np.zeros((2, 2))  # (own frame, with the scene's returns) x (flagged, surfaces)
    for frame in scene.frames:
        for sample in frame.cameras.values():
            own = lidar_masks(sample, frame.lidar, config)
            more = lidar_masks(sample, frame.lidar, config, elsewhere=returns)
            surface = load_ground_truth_depth(small_dataset, sample.source_file) > 0
            for a, b in zip(own, more, strict=True):
                assert not (b & ~a).any()
                counts += [[a.sum(), (a & surface).sum()], [b.sum(), (b & surface).sum()]]
    assert counts[1, 0] < counts[0, 0]
    assert counts[1, 1] / counts[1, 0] < counts[0, 1] / counts[0, 0], counts


def test_scene_returns_keep_one_point_per_voxel():
    from types import SimpleNamespace

    points = np.array([[0.1, 0.1, 0.1], [0.2, 0.3, 0.4], [0.6, 0.1, 0.1], [-0.1, 0.0, 0.0]])
    sweep = SimpleNamespace(load=lambda: SimpleNamespace(points=points))
    kept = scene_returns([sweep, sweep], voxel=0.5)
    np.testing.assert_array_equal(kept, points[[0, 2, 3]])


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
    from distillprep.teachers.nerf.field import FieldConfig, StaticField
    from distillprep.teachers.volume.contraction import SceneBox

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
