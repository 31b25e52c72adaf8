"""A short fit of the static teacher learns the scene: colour and LiDAR depth errors on
fixed rays fall well below where they started. (Quality targets live in `make bench`.)"""

import numpy as np
import pytest
import torch

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.teachers.errors import TeacherDivergedError
from distillprep.teachers.nerf.config import FitConfig
from distillprep.teachers.nerf.field import FieldConfig
from distillprep.teachers.nerf.fit import fit
from distillprep.teachers.nerf.hash_grid import HashGridConfig
from distillprep.teachers.nerf.rays import camera_rays, lidar_rays
from distillprep.teachers.nerf.sampler import RaySampling, SamplerConfig
from distillprep.teachers.nerf.teacher import build_teacher, render_rays

TINY = FitConfig(
    model=FieldConfig(grid=HashGridConfig(levels=8, log2_table_size=14, base_resolution=8,
                                          max_resolution=256), hidden=32),
    sampler=SamplerConfig(grid_resolution=32, rays=RaySampling(candidates=64, max_samples=16)),
    steps=120, camera_rays=512, lidar_rays=256, pixel_stride=2, dynamic=None)


def _errors(teacher, cams, lidar, rng):
    pick = rng.choice(len(cams.rgb), 2048, replace=False)
    lpick = rng.choice(len(lidar.ranges), 1024, replace=False)
    with torch.no_grad():
        out = render_rays(teacher, torch.as_tensor(cams.origins[pick], dtype=torch.float32),
                          torch.as_tensor(cams.directions[pick], dtype=torch.float32),
                          torch.as_tensor(cams.camera_index[pick]))
        lid = render_rays(teacher, torch.as_tensor(lidar.origins[lpick], dtype=torch.float32),
                          torch.as_tensor(lidar.directions[lpick], dtype=torch.float32),
                          torch.zeros(len(lpick), dtype=torch.long))
    mse = float(((out["rgb"].numpy() - cams.rgb[pick]) ** 2).mean())
    rel = np.abs(lid["distance"].numpy() - lidar.ranges[lpick]) / lidar.ranges[lpick]
    return -10 * np.log10(mse), float(np.median(rel))


def test_short_fit_learns_colour_and_depth(small_dataset):
    torch.set_num_threads(2)
    scene = read_nuscenes(small_dataset, scenes=["scene-0001"]).scenes[0]
    frames = [0, 1, 2]
    cams, lidar = camera_rays(scene, frames, stride=2), lidar_rays(scene, frames)
    before = _errors(build_teacher(scene, TINY, lidar), cams, lidar, np.random.default_rng(0))
    teacher, _ = fit(scene, frames, TINY)
    after = _errors(teacher, cams, lidar, np.random.default_rng(0))
    assert after[0] > before[0] + 4.0, (before, after)  # PSNR, dB
    assert after[1] < 0.5 * before[1], (before, after)  # median relative LiDAR depth error
    assert teacher.history[-1]["step"] == TINY.steps


def test_nan_loss_stops_the_fit_naming_the_step(small_dataset, monkeypatch):
    import distillprep.teachers.nerf.teacher as teacher_module

    calls = []
    real = teacher_module.render_weights

    def poisoned(sigma, t_start, t_end):  # the third rendering (step 2) goes bad
        calls.append(1)
        weights = real(sigma, t_start, t_end)
        return weights * float("nan") if len(calls) == 3 else weights

    monkeypatch.setattr(teacher_module, "render_weights", poisoned)
    scene = read_nuscenes(small_dataset, scenes=["scene-0001"]).scenes[0]
    with pytest.raises(TeacherDivergedError, match="at step 2") as info:
        fit(scene, [0, 1, 2], FitConfig(**{**TINY.__dict__, "steps": 5}))
    assert info.value.step == 2 and isinstance(info.value, FloatingPointError)
    assert info.value.kind == "diverged" and not info.value.retryable


def test_distortion_loss_enters_the_step_and_pulls_weight_together(small_dataset):
    from distillprep.teachers.nerf.fit import start_fit, train_step

    torch.set_num_threads(2)
    scene = read_nuscenes(small_dataset, scenes=["scene-0001"]).scenes[0]
    config = FitConfig(**{**TINY.__dict__, "distortion_weight": 0.5})
    state, rays = start_fit(scene, [0, 1, 2], config)
    first = train_step(state, rays)
    assert first["distortion_loss"] > 0
    assert first["loss"] > first["rgb_loss"] + 0.5 * first["distortion_loss"] - 1e-6
    for _ in range(60):
        last = train_step(state, rays)
    assert last["distortion_loss"] < first["distortion_loss"]


def test_learning_rate_decays_exponentially_over_the_fit():
    from distillprep.teachers.nerf.fit import learning_rate

    config = FitConfig(steps=1000, learning_rate=1e-2, final_lr_ratio=0.1)
    assert learning_rate(config, 0) == pytest.approx(1e-2)
    assert learning_rate(config, 500) == pytest.approx(1e-2 * 0.1**0.5)
    assert learning_rate(config, 1000) == pytest.approx(1e-3)
    assert learning_rate(config, 5000) == pytest.approx(1e-3)  # held past the end
    constant = FitConfig(steps=1000, final_lr_ratio=1.0)
    assert learning_rate(constant, 700) == pytest.approx(constant.learning_rate)
