"""The student's losses and metrics on values worked out by hand, and SSIM against its
window-by-window reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distillprep.student.losses import (
    LossConfig,
    entropy_loss,
    feature_loss,
    lidar_depth_loss,
    opacity_loss,
    teacher_depth_loss,
)
from distillprep.student.metrics import _ssim_reference, eval_depth, ssim

CONFIG = LossConfig()


def test_lidar_depth_loss_normalises_by_the_range_and_skips_empty_pixels():
    lidar = torch.tensor([0.0, 40.0, 8.0, 100.0])
    pred = torch.tensor([5.0, 48.0, 8.0, 90.0])
    # pixels 1..3: errors 8/80, 0, 0 (both clamped to 80 m)
    expected = (0.1 ** 2) / 3 + 0.1 * 0.1 / 3
    assert float(lidar_depth_loss(pred, lidar, CONFIG)) == pytest.approx(expected)
    assert float(lidar_depth_loss(pred, torch.zeros(4), CONFIG)) == 0.0


def test_teacher_depth_loss_splits_at_50_m():
    teacher = torch.tensor([10.0, 30.0, 60.0, 200.0, 0.0])
    pred = torch.tensor([15.0, 30.0, 72.0, 120.0, 3.0])
    inner = (0.1 ** 2 + 0) / 2 + 0.1 * (0.1 + 0) / 2  # 5 m / 50 m on one of two pixels
    outer = (0.1 ** 2 + 0) / 2 + 0.1 * (0.1 + 0) / 2  # 12 m / 120 m; 200 m clamped to 120
    assert float(teacher_depth_loss(pred, teacher, CONFIG)) == pytest.approx(inner + outer)


def test_entropy_opacity_and_feature_terms():
    uniform = torch.full((3, 4), 0.25)
    assert float(entropy_loss(uniform)) == pytest.approx(math.log(4))
    assert float(entropy_loss(torch.tensor([[0.0, 1.0, 0.0]]))) == pytest.approx(0.0, abs=1e-6)
    assert float(opacity_loss(torch.tensor([[0.5, 0.5]]))) == pytest.approx(0.0, abs=1e-5)
    assert float(opacity_loss(torch.tensor([[0.25, 0.25]]))) == pytest.approx(math.log(2))
    assert float(feature_loss(torch.ones(2, 3), torch.zeros(2, 3))) == 1.0
    grads = torch.full((2, 3), 0.2, requires_grad=True)
    (entropy_loss(grads) + opacity_loss(grads)).backward()
    assert torch.isfinite(grads.grad).all()


def test_ssim_equals_its_reference_and_known_values():
    rng = np.random.default_rng(0)
    x = rng.random((20, 17))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    assert ssim(x, y) == pytest.approx(_ssim_reference(x, y), abs=1e-12)
    assert ssim(x, x) == pytest.approx(1.0)
    a, b = np.full((10, 10), 0.2), np.full((10, 10), 0.6)  # constant: the luminance term
    assert ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + 1e-4) / (0.04 + 0.36 + 1e-4))
    rgb = np.stack([x, y, x], -1)
    assert ssim(rgb, rgb) == pytest.approx(1.0)


def test_depth_is_evaluated_up_to_80_m():
    gt = np.array([[10.0, 90.0, 0.0, 20.0]])
    pred = np.array([[11.0, 5.0, 3.0, 200.0]])  # 90 m and no-return pixels are not scored
    m = eval_depth(pred, gt)
    assert m["pixels"] == 2
    assert m["abs_rel"] == pytest.approx((0.1 + 60 / 20) / 2)  # 200 m clipped to 80


def test_the_teachers_sky_becomes_the_far_target():
    """Pixels the teacher leaves transparent (its sky) take `sky_depth` (DistillNeRF's
    far plane less 5 m); the others keep the teacher's depth; without opacity, all do."""
    from distillprep.student.losses import teacher_target

    depth = torch.tensor([[3.0, 0.75, 40.0, 12.0]])
    opacity = torch.tensor([[1.0, 0.1, 0.6, 0.49]])
    config = LossConfig()
    assert teacher_target(depth, opacity, config).tolist() == [[3.0, 115.0, 40.0, 115.0]]
    assert torch.equal(teacher_target(depth, None, config), depth)
    far = LossConfig(sky_depth=100.0, sky_opacity=0.05)
    assert teacher_target(depth, opacity, far).tolist() == [[3.0, 0.75, 40.0, 12.0]]


def test_empty_lidar_pixels_on_the_sky_take_the_far_target():
    from distillprep.student.losses import lidar_target

    lidar = torch.tensor([[0.0, 5.0, 0.0, float("nan")]])
    sky = torch.tensor([[True, True, False, True]])
    assert lidar_target(lidar, sky, CONFIG)[0, :3].tolist() == [115.0, 5.0, 0.0]
    assert lidar_target(lidar, sky, CONFIG)[0, 3] == 115.0
    assert lidar_target(lidar, None, CONFIG) is lidar
