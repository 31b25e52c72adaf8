"""PCA of feature vectors in two passes, so that full-width features never need storing.

Pass 1 streams feature vectors (M, D) of a sample of images into a `CovarianceSum`
(float64 sums: count, sum, outer-product sum); `fit_pca` turns it into the top-C
principal directions. Pass 2 projects every image's features with `project`. The result
equals a one-pass PCA of all the sampled vectors at once (`_pca_reference`, tested).

The CLIP text path projects with the same basis and mean; `reduced_cosine` scores a text
embedding against reduced features in the reconstructed full-width space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distillprep.teachers.errors import TeacherConfigError, TeacherDataError


class CovarianceSum:
    """Running sums of D-wide feature vectors (float64)."""

    def __init__(self, width: int):
        self.count = 0
        self.total = np.zeros(width, dtype=np.float64)
        self.outer = np.zeros((width, width), dtype=np.float64)

    def add(self, vectors: np.ndarray) -> None:
        """vectors (M, D)."""
        v = np.asarray(vectors, dtype=np.float64)
        self.count += len(v)
        self.total += v.sum(axis=0)
        self.outer += v.T @ v


@dataclass(frozen=True)
class PCA:
    """A fitted projection to C channels."""

    basis: np.ndarray
    """(C, D) float32, rows the principal directions (orthonormal), by falling variance."""
    mean: np.ndarray
    """(D,) float32 mean of the fitted vectors."""
    explained_variance: np.ndarray
    """(C,) float32 variance along each direction."""
    total_variance: float
    """Sum of the variance over all D directions (what `explained_ratio` divides by)."""
    samples: int
    """How many vectors it was fitted on."""

    @property
    def explained_ratio(self) -> float:
        """Share of the total variance the C channels keep."""
        return float(self.explained_variance.sum() / max(self.total_variance, 1e-30))


def fit_pca(sums: CovarianceSum, channels: int) -> PCA:
    """Top-`channels` principal directions of the vectors added to `sums` (population
    covariance, divided by the count)."""
    width = len(sums.total)
    if not 1 <= channels <= width:
        raise TeacherConfigError(f"PCA to {channels} channels: choose 1..{width} (the "
                                 "feature width)")
    if sums.count < 2:
        raise TeacherDataError(None, None, f"PCA needs at least 2 feature vectors, got "
                               f"{sums.count}")
    mean = sums.total / sums.count
    covariance = sums.outer / sums.count - np.outer(mean, mean)
    values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
    order = np.argsort(values)[::-1][:channels]
    basis = vectors[:, order].T
    # a fixed sign per direction (largest component positive): reruns store equal bases
    basis *= np.where(basis[np.arange(channels), np.abs(basis).argmax(axis=1)] < 0, -1, 1)[:, None]
    return PCA(basis.astype(np.float32), mean.astype(np.float32),
               np.clip(values[order], 0.0, None).astype(np.float32),
               float(np.clip(values, 0.0, None).sum()), sums.count)


def project(pca: PCA, features: np.ndarray) -> np.ndarray:
    """features (..., D, h, w) -> (..., C, h, w) float32 coordinates in the basis."""
    moved = np.moveaxis(features, -3, -1).astype(np.float32) - pca.mean
    return np.moveaxis(moved @ pca.basis.T, -1, -3)


def back_project(pca: PCA, reduced: np.ndarray) -> np.ndarray:
    """reduced (..., C, h, w) -> (..., D, h, w) float32: the closest full-width features."""
    full = np.moveaxis(reduced, -3, -1).astype(np.float32) @ pca.basis + pca.mean
    return np.moveaxis(full, -1, -3)


def reduced_cosine(pca: PCA, reduced: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Cosine similarity (..., h, w) between a text embedding (D,) and the full-width
    features that `reduced` (..., C, h, w) stands for (mean + basis^T z), computed without
    forming them: with orthonormal rows, |mean + B^T z|^2 = |mean|^2 + 2 (B mean).z + |z|^2."""
    z = np.moveaxis(reduced, -3, -1).astype(np.float64)
    basis, mean, text = (a.astype(np.float64) for a in (pca.basis, pca.mean, text))
    dot = mean @ text + z @ (basis @ text)
    norm2 = mean @ mean + 2 * z @ (basis @ mean) + (z * z).sum(axis=-1)
    return (dot / (np.sqrt(np.clip(norm2, 1e-30, None)) * np.linalg.norm(text))).astype(
        np.float32)


def _pca_reference(vectors: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """One-pass PCA of all vectors (M, D) at once by SVD (tests only): (basis (C, D), the
    variance along each)."""
    centred = vectors - vectors.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:channels], singular[:channels] ** 2 / len(vectors)
