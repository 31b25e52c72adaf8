"""Positional-pattern denoising on features with a known pattern planted in them."""

from __future__ import annotations

import numpy as np

from distillprep.teachers.foundation.positional import (
    denoise,
    position_pattern,
    position_share,
    resample_pattern,
)


def _planted(images=200, width=16, grid=(6, 10), seed=0):
    """Content that moves freely over the grid plus a fixed pattern per position."""
    rng = np.random.default_rng(seed)
    content = rng.normal(size=(images, width, *grid)) + rng.normal(size=(1, width, 1, 1))
    pattern = rng.normal(size=(width, *grid)) * 2.0
    pattern -= pattern.mean(axis=(1, 2), keepdims=True)
    return content, pattern


def test_the_pattern_is_recovered_and_taken_out():
    content, pattern = _planted()
    features = content + pattern
    estimate = position_pattern(features)
    # the estimate is off by the content's own per-position mean: ~1/sqrt(images)
    assert np.abs(estimate - pattern).max() < 0.5
    assert np.sqrt(((estimate - pattern) ** 2).mean()) < 0.1
    before, after = position_share(features), position_share(denoise(features, estimate))
    assert before > 0.75  # the planted pattern's variance is 4x the content's
    assert after < 0.02 and after <= position_share(content) + 1e-9


def test_no_pattern_no_change_and_resampling_keeps_a_constant():
    content, _ = _planted(images=4)
    assert denoise(content, None) is content
    flat = np.full((3, 4, 6), 2.5, np.float32)
    np.testing.assert_allclose(resample_pattern(flat, (8, 12)), 2.5, rtol=1e-6)
    assert resample_pattern(flat, (4, 6)) is flat


def test_position_share_of_content_alone_is_about_zero():
    content, pattern = _planted(images=12, seed=4)
    assert abs(position_share(content)) < 0.05  # not 1/12: the sampling share is taken off
    assert 0.7 < position_share(content + pattern) < 0.9  # pattern variance 4 of 5
