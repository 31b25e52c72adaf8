"""The files of feature runs, a typed part of the store format:

    feature_runs/<family>/run.json                       FeatureRun: the family's run
    feature_runs/<family>/pca.npz                        FeatureBasis: its PCA (+ pattern)
    feature_runs/<family>/partial/<scene>/<key>/<kind>-<start>.npz
                                                         a finished batch of an uncommitted
                                                         scene, kept for a resume
                                                         (`partials.py`)

A run is one model and config over a store (`run_id` hashes its config and weights):
every scene of a run is projected with the same basis, so a resumed run reuses the saved
one. Kept batches live under a key made of the run and the fingerprints of the scene's
inputs (`partials.py`), so a batch computed from other images (the scene re-ingested
meanwhile) is never reused. `pca.npz` is written before `run.json`, and `run.json`
records the basis' SHA-256: a run whose files disagree is refused.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .attrs import parse_json, parse_model
from .errors import MetadataError
from .store import Store


class FeatureRunError(MetadataError):
    """A feature run's files that cannot be used (names the file and what to do)."""


class FeatureRun(BaseModel):
    """`feature_runs/<family>/run.json`: which run a family's saved basis belongs to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str = Field(description="feature family, e.g. dino")
    run_id: str = Field(pattern=r"^[0-9a-f]{64}$", description="hash of config and weights")
    model: str = Field(description="feature model")
    config: dict[str, Any] = Field(description="the run's FeatureConfig")
    weights_sha256: str | None = Field(description="SHA-256 of the weights (None: random)")
    created: datetime = Field(description="when the basis was fitted (UTC)")
    basis_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of pca.npz")


@dataclass(frozen=True)
class FeatureBasis:
    """A run's PCA as stored: `features ~ mean + basis^T z` after taking out `pattern`."""

    basis: np.ndarray
    """(C, D) float32, orthonormal rows."""
    mean: np.ndarray
    """(D,) float32."""
    explained_variance: np.ndarray
    """(C,) float32."""
    total_variance: float
    """Variance of the full-width features."""
    samples: int
    """Feature vectors the PCA was fitted on."""
    pattern: np.ndarray | None = None
    """(D, h, w) positional pattern subtracted first (None: not denoised)."""


def run_prefix(family: str) -> str:
    return f"feature_runs/{family}"


def basis_to_bytes(basis: FeatureBasis) -> bytes:
    buffer = io.BytesIO()
    extra = {} if basis.pattern is None else {"pattern": basis.pattern}
    np.savez(buffer, basis=basis.basis, mean=basis.mean,
             explained_variance=basis.explained_variance,
             total_variance=np.float64(basis.total_variance), samples=np.int64(basis.samples),
             **extra)
    return buffer.getvalue()


def parse_basis(data: bytes, where: str) -> FeatureBasis:
    """A FeatureBasis from pca.npz bytes, or FeatureRunError naming the file."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            basis = FeatureBasis(z["basis"], z["mean"], z["explained_variance"],
                                 float(z["total_variance"]), int(z["samples"]),
                                 z["pattern"] if "pattern" in z.files else None)
    except (OSError, KeyError, ValueError, EOFError) as exc:
        raise FeatureRunError(f"{where}: unreadable PCA ({type(exc).__name__}: {exc}); rerun "
                              "with --force") from None
    c, d = basis.basis.shape if basis.basis.ndim == 2 else (-1, -1)
    if basis.mean.shape != (d,) or basis.explained_variance.shape != (c,):
        raise FeatureRunError(f"{where}: basis {basis.basis.shape}, mean {basis.mean.shape} and "
                              f"variance {basis.explained_variance.shape} do not fit together; "
                              "rerun with --force")
    return basis


def parse_feature_run(raw: Any, where: str = "feature run") -> FeatureRun:
    return parse_model(FeatureRun, raw, where)


def read_run(store: Store, family: str) -> tuple[FeatureRun, FeatureBasis] | None:
    """The run saved in the store for a family and its basis, or None when there is none
    (or only half of one: a run killed while saving it)."""
    prefix = run_prefix(family)
    raw, data = store.location.get(f"{prefix}/run.json"), store.location.get(f"{prefix}/pca.npz")
    if raw is None or data is None:
        return None
    where = f"{store.location.location}/{prefix}"
    run = parse_feature_run(parse_json(raw, f"{where}/run.json"), f"{where}/run.json")
    if hashlib.sha256(data).hexdigest() != run.basis_sha256:
        raise FeatureRunError(f"{where}/pca.npz is not the basis {where}/run.json names (its "
                              "SHA-256 differs); rerun with --force")
    return run, parse_basis(data, f"{where}/pca.npz")


def write_run(store: Store, run: FeatureRun, basis: FeatureBasis) -> None:
    """Save a run: the basis first, then the record naming it (what makes it a run)."""
    prefix = run_prefix(run.family)
    store.location.put(f"{prefix}/pca.npz", basis_to_bytes(basis))
    store.location.put(f"{prefix}/run.json", run.model_dump_json(indent=1).encode())
