"""Two-pass PCA: streamed sums equal a one-pass PCA of the same vectors; the error of
projecting and back-projecting is the variance the PCA says it leaves out; text queries on
reduced features equal those on the reconstructed full-width features."""

from __future__ import annotations

import numpy as np
import pytest

from distillprep.teachers.errors import TeacherConfigError, TeacherDataError
from distillprep.teachers.foundation.pca import (
    CovarianceSum,
    _pca_reference,
    back_project,
    fit_pca,
    project,
    reduced_cosine,
)


def _vectors(count=3000, width=24, seed=0):
    """Correlated vectors with a spread of variances and a non-zero mean."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(width, width)) * np.geomspace(3.0, 0.01, width)[:, None]
    return (rng.normal(size=(count, width)) @ mixing + rng.normal(size=width) * 5).astype(
        np.float32)


def test_two_pass_equals_one_pass_pca_of_the_same_sample():
    vectors = _vectors()
    sums = CovarianceSum(vectors.shape[1])
    for part in np.array_split(vectors, 7):  # streamed in uneven batches
        sums.add(part)
    pca = fit_pca(sums, 6)
    basis, variance = _pca_reference(vectors.astype(np.float64), 6)
    np.testing.assert_allclose(pca.explained_variance, variance, rtol=1e-4)
    # the same directions (a sign per direction is a convention)
    np.testing.assert_allclose(np.abs(np.sum(pca.basis * basis, axis=1)), 1.0, atol=1e-4)
    np.testing.assert_allclose(pca.mean, vectors.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pca.basis @ pca.basis.T, np.eye(6), atol=1e-5)
    assert pca.samples == len(vectors)


def test_reconstruction_error_is_the_variance_left_out():
    vectors = _vectors(seed=1)
    sums = CovarianceSum(vectors.shape[1])
    sums.add(vectors)
    for channels in (2, 8, 24):
        pca = fit_pca(sums, channels)
        grid = vectors.T.reshape(1, -1, 50, 60)  # (1, D, h, w) as features come
        reduced = project(pca, grid)
        assert reduced.shape == (1, channels, 50, 60)
        residual = ((back_project(pca, reduced) - grid) ** 2).sum(axis=1).mean()
        left_out = pca.total_variance - pca.explained_variance.sum()
        assert residual == pytest.approx(left_out, rel=1e-3, abs=1e-3 * pca.total_variance)
        assert 0 < pca.explained_ratio <= 1.0 + 1e-6
    assert fit_pca(sums, 24).explained_ratio == pytest.approx(1.0, abs=1e-5)


def test_text_query_on_reduced_features_equals_it_on_the_reconstruction():
    vectors = _vectors(count=500, seed=2)
    sums = CovarianceSum(vectors.shape[1])
    sums.add(vectors)
    pca = fit_pca(sums, 5)
    reduced = project(pca, vectors.T.reshape(-1, 20, 25))
    text = np.random.default_rng(3).normal(size=vectors.shape[1])
    full = back_project(pca, reduced)  # (D, 20, 25)
    expected = np.einsum("dhw,d->hw", full, text) / (
        np.linalg.norm(full, axis=0) * np.linalg.norm(text))
    np.testing.assert_allclose(reduced_cosine(pca, reduced, text), expected, atol=1e-5)


def test_bad_requests_are_clear():
    sums = CovarianceSum(4)
    sums.add(np.ones((1, 4)))
    with pytest.raises(TeacherDataError, match="at least 2 feature vectors"):
        fit_pca(sums, 2)
    sums.add(np.zeros((3, 4)))
    with pytest.raises(TeacherConfigError, match="choose 1..4"):
        fit_pca(sums, 5)
