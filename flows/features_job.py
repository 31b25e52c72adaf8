"""Filling a store's foundation-model feature arrays: plain functions, no Prefect.

A run (one model family in one store) goes in two passes:
1. fit a PCA on the features of `pca_images` images drawn at random across the store's
   scenes (real camera images and virtual views), optionally after taking out the
   features' positional pattern (`positional.py`); the basis and the run's identity are
   saved under `feature_runs/<family>/` at the store root, so that every scene of the run,
   including those of a resumed run, is projected with the same basis;
2. per scene, extract and project every image in batches and commit the scene's feature
   arrays with their provenance (one atomic commit per scene).

Resuming: a committed scene whose provenance names this run is skipped; inside a scene,
each finished batch is kept under `feature_runs/<family>/partial/<scene>/` until the
scene commits, so a killed run loses at most one batch. `force` starts the run afresh.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np

from distillprep.storage_schemas.attrs import StageRecord, config_hash
from distillprep.storage_schemas.errors import StoreError
from distillprep.storage_schemas.reader import decode_jpeg
from distillprep.storage_schemas.store import Store, array_sha256, package_version
from distillprep.teachers.foundation.extract import FeatureConfig, FeatureExtractor
from distillprep.teachers.foundation.pca import PCA, CovarianceSum, fit_pca, project
from distillprep.teachers.foundation.positional import (
    denoise,
    position_pattern,
    resample_pattern,
)

Progress = Callable[[int], None]
"""Called with the number of images just finished."""


class FeatureRunError(StoreError):
    """A feature run that cannot go ahead as asked (names the store and what to do)."""


@dataclass(frozen=True)
class ImageSet:
    """The images of one kind in one scene."""

    scene_id: str
    kind: str
    """"real" (camera samples, array rgb_jpeg) or "virtual" (virtual_rgb)."""
    count: int
    height: int
    width: int


def image_sets(store: Store, scene_id: str) -> list[ImageSet]:
    """The real images of a scene and, when the teacher has rendered them, its virtual
    views."""
    group = store.group(scene_id)
    attrs = store.scene_attrs(scene_id)
    sets = [ImageSet(scene_id, "real", attrs.num_samples, attrs.height, attrs.width)]
    if "virtual_rgb" in group.array_keys():
        count, height, width, _ = group["virtual_rgb"].shape
        if count:
            sets.append(ImageSet(scene_id, "virtual", count, height, width))
    return sets


def read_images(group, images: ImageSet, start: int, stop: int) -> np.ndarray:
    """Images start..stop-1 of a set, (B, H, W, 3) uint8, from its scene's zarr group
    (`Store.group`: opened once per scene by the caller, not per batch)."""
    if images.kind == "virtual":
        return np.asarray(group["virtual_rgb"][start:stop])
    jpeg = np.asarray(group["rgb_jpeg"][start:stop])
    nbytes = np.asarray(group["rgb_jpeg_nbytes"][start:stop])
    return np.stack([decode_jpeg(row, int(n), f"scene {images.scene_id!r}, sample {start + i}")
                     for i, (row, n) in enumerate(zip(jpeg, nbytes, strict=True))])


def grid_for(extractor: FeatureExtractor, config: FeatureConfig, real: ImageSet,
             images: ImageSet) -> tuple[int, int]:
    """The feature grid of a set: virtual views get the density of patches per pixel of
    the scene's real images (a half-size view, half the grid)."""
    input_width = config.input_width or extractor.spec.default_width
    scaled = input_width * images.width / real.width
    return extractor.grid(images.height, images.width, max(1, round(scaled)))


# -- the run's state at the store root ----------------------------------------------------
def run_prefix(family: str) -> str:
    return f"feature_runs/{family}"


def run_identity(config: FeatureConfig, extractor: FeatureExtractor) -> dict:
    """What makes two runs interchangeable: the config and the weights' checksum."""
    return {"config": asdict(config), "weights_sha256": extractor.provenance["weights_sha256"]}


@dataclass(frozen=True)
class RunBasis:
    """What every scene of a run is projected with."""

    pca: PCA
    pattern: np.ndarray | None
    """(D, h, w) positional pattern subtracted first (None: not denoised)."""


def _basis_bytes(basis: RunBasis) -> bytes:
    buffer = io.BytesIO()
    pca = basis.pca
    extra = {} if basis.pattern is None else {"pattern": basis.pattern}
    np.savez(buffer, basis=pca.basis, mean=pca.mean,
             explained_variance=pca.explained_variance,
             total_variance=np.float64(pca.total_variance), samples=np.int64(pca.samples),
             **extra)
    return buffer.getvalue()


def _basis_from_bytes(data: bytes, where: str) -> RunBasis:
    try:
        with np.load(io.BytesIO(data)) as z:
            pca = PCA(z["basis"], z["mean"], z["explained_variance"],
                      float(z["total_variance"]), int(z["samples"]))
            return RunBasis(pca, z["pattern"] if "pattern" in z.files else None)
    except (OSError, KeyError, ValueError) as exc:
        raise FeatureRunError(f"{where}: unreadable PCA ({exc}); rerun with --force") from None


def saved_run(store: Store, family: str) -> tuple[dict, RunBasis] | None:
    """(identity, basis) of the run saved in the store for a family, or None."""
    prefix = run_prefix(family)
    raw, basis = store.location.get(f"{prefix}/run.json"), store.location.get(f"{prefix}/pca.npz")
    if raw is None or basis is None:
        return None
    where = f"{store.location.location}/{prefix}/pca.npz"
    return json.loads(raw), _basis_from_bytes(basis, where)


def fit_run_basis(store: Store, extractor: FeatureExtractor, config: FeatureConfig,
                  progress: Progress | None = None) -> RunBasis:
    """Pass 1: the PCA of the features of `config.pca_images` images drawn at random
    (without replacement) across every committed scene's real and virtual images; with
    `denoise_positions`, the positional pattern of the sampled real images (on the first
    scene's grid) is estimated first and taken out of every sampled image."""
    sets = [s for scene_id in store.scenes() for s in image_sets(store, scene_id)]
    if not sets:
        raise FeatureRunError(f"store {store.location.location} has no committed scenes: "
                              "run `distillprep ingest` first")
    real = {s.scene_id: s for s in sets if s.kind == "real"}
    offsets = np.cumsum([0] + [s.count for s in sets])
    rng = np.random.default_rng(config.seed)
    picks = np.sort(rng.choice(offsets[-1], size=min(config.pca_images, offsets[-1]),
                               replace=False))
    sums = CovarianceSum(extractor.spec.width)
    kept: list[tuple[str, np.ndarray]] = []  # (kind, features): only to denoise

    def add(features: np.ndarray) -> None:
        sums.add(np.moveaxis(features, 1, -1).reshape(-1, features.shape[1]))

    for i, images in enumerate(sets):
        mine = picks[(picks >= offsets[i]) & (picks < offsets[i + 1])] - offsets[i]
        if not len(mine):
            continue
        grid = grid_for(extractor, config, real[images.scene_id], images)
        group = store.group(images.scene_id)
        batch = np.stack([read_images(group, images, j, j + 1)[0] for j in mine])
        features = extractor(batch, grid)
        if config.denoise_positions:
            kept.append((images.kind, features.astype(np.float16)))
        else:
            add(features)
        if progress:
            progress(len(mine))
    pattern = None
    if config.denoise_positions:
        reals = [f for kind, f in kept if kind == "real"]
        if not reals:
            raise FeatureRunError("denoise_positions: the PCA sample holds no real image; "
                                  "raise --pca-images")
        grid = reals[0].shape[-2:]
        pattern = position_pattern(np.concatenate(
            [f if f.shape[-2:] == grid else np.stack([resample_pattern(x, grid) for x in f])
             for f in (r.astype(np.float32) for r in reals)]))
        for _, features in kept:
            add(denoise(features.astype(np.float32), pattern))
    return RunBasis(fit_pca(sums, config.channels), pattern)


def start_run(store: Store, extractor: FeatureExtractor, config: FeatureConfig,
              force: bool = False, progress: Progress | None = None) -> RunBasis:
    """The run's basis: the saved one when the store holds this same run (a resume), else
    fitted afresh (pass 1) and saved. A store holding another run of the family is
    refused unless `force` (which redoes every scene)."""
    family = extractor.spec.family
    identity = run_identity(config, extractor)
    saved = None if force else saved_run(store, family)
    if saved is not None:
        if saved[0] == identity:
            return saved[1]
        raise FeatureRunError(
            f"store {store.location.location} holds {family} features of another run "
            f"({saved[0]['config']['model']}, config hash {config_hash(saved[0])[:12]}); "
            "pass --force to replace them in every scene")
    store.location.delete(run_prefix(family))
    basis = fit_run_basis(store, extractor, config, progress)
    store.location.put(f"{run_prefix(family)}/pca.npz", _basis_bytes(basis))
    store.location.put(f"{run_prefix(family)}/run.json", json.dumps(identity).encode())
    return basis


def scene_done(store: Store, scene_id: str, family: str, identity: dict) -> bool:
    """Whether the scene's committed features come from this run."""
    record = store.scene_attrs(scene_id).stages.get(f"{family}_features")
    if record is None or record.config_hash != config_hash(identity):
        return False
    group = store.group(scene_id)
    names = set(group.array_keys())
    if "virtual_rgb" not in names:
        return True
    # views rendered (again) by the teacher after the features: theirs are still to do
    virtual = f"{family}_virtual_features"
    return virtual in names and group[virtual].shape[0] == group["virtual_rgb"].shape[0]


def _batches(images: ImageSet, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, images.count, batch_size):
        yield start, min(start + batch_size, images.count)


def scene_features(store: Store, scene_id: str, extractor: FeatureExtractor,
                   config: FeatureConfig, basis: RunBasis, progress: Progress | None = None,
                   ) -> dict[str, np.ndarray]:
    """Pass 2 for one scene: {"real": (N, C, h, w), "virtual": (V, C, hv, wv)} float16
    projected features, each finished batch kept in the store until the scene commits
    (and read back instead of recomputed on a resume)."""
    sets = image_sets(store, scene_id)
    group = store.group(scene_id)
    kept_under = f"{run_prefix(extractor.spec.family)}/partial/{scene_id}"
    out = {}
    for images in sets:
        grid = grid_for(extractor, config, sets[0], images)
        parts = []
        for start, stop in _batches(images, extractor.batch_size):
            key = f"{kept_under}/{images.kind}-{start}.npy"
            kept = store.location.get(key)
            if kept is not None:
                part = np.load(io.BytesIO(kept))
                if part.shape == (stop - start, config.channels, *extractor.feature_grid(grid)):
                    parts.append(part)
                    continue
            features = extractor(read_images(group, images, start, stop), grid)
            reduced = project(basis.pca, denoise(features, basis.pattern))
            part = reduced.astype(np.float16)
            buffer = io.BytesIO()
            np.save(buffer, part)
            store.location.put(key, buffer.getvalue())
            parts.append(part)
            if progress:
                progress(stop - start)
        out[images.kind] = np.concatenate(parts)
    return out


def write_scene_features(store: Store, scene_id: str, extractor: FeatureExtractor,
                         config: FeatureConfig, basis: RunBasis,
                         features: dict[str, np.ndarray], wall_time_s: float) -> None:
    """Commit a scene's features with their provenance; then drop its kept batches."""
    family, pca = extractor.spec.family, basis.pca
    identity = run_identity(config, extractor)
    arrays = {f"{family}_features": features["real"],
              f"{family}_pca_basis": pca.basis, f"{family}_pca_mean": pca.mean,
              f"{family}_pca_explained_variance": pca.explained_variance}
    group = store.group(scene_id)
    if "virtual_rgb" in group.array_keys():  # the teacher stage's arrays come all together
        arrays[f"{family}_virtual_features"] = features.get(
            "virtual", np.zeros((0, config.channels, 1, 1), np.float16))
    norms = np.linalg.norm(features["real"].astype(np.float32), axis=1).mean(axis=(1, 2))
    record = StageRecord(
        stage=f"{family}_features", config=identity, config_hash=config_hash(identity),
        package_version=package_version(), finished_at=datetime.now(UTC),
        wall_time_s=wall_time_s,
        extra={**extractor.provenance, "pca_channels": config.channels,
               "pca_explained_ratio": pca.explained_ratio, "pca_samples": pca.samples,
               "pca_sha256": array_sha256(pca.basis),
               "position_pattern_sha256": None if basis.pattern is None
               else array_sha256(basis.pattern),
               "grid": list(features["real"].shape[-2:]),
               "images": int(sum(len(f) for f in features.values()))})
    store.replace_stage(scene_id, record, arrays,
                        {f"{family}_feature_norm_mean": norms.astype(np.float32).tolist()})
    store.location.delete(f"{run_prefix(family)}/partial/{scene_id}")


@dataclass
class RunSummary:
    """What a feature run did."""

    done: list[str]
    """Scenes whose features this call computed and committed."""
    skipped: list[str]
    """Scenes that already held this run's features."""
    images: int
    """Images extracted by this call (PCA sample included)."""
    wall_time_s: float


def run_features(store: Store, extractor: FeatureExtractor, config: FeatureConfig,
                 scene_ids: list[str] | None = None, force: bool = False,
                 progress: Progress | None = None) -> RunSummary:
    """Both passes over the store's scenes (all, or those named)."""
    start = time.perf_counter()
    counted = [0]

    def count(n: int) -> None:
        counted[0] += n
        if progress:
            progress(n)

    basis = start_run(store, extractor, config, force, count)
    identity = run_identity(config, extractor)
    done, skipped = [], []
    for scene_id in scene_ids or store.scenes():
        if not force and scene_done(store, scene_id, extractor.spec.family, identity):
            skipped.append(scene_id)
            continue
        began = time.perf_counter()
        features = scene_features(store, scene_id, extractor, config, basis, count)
        write_scene_features(store, scene_id, extractor, config, basis, features,
                             time.perf_counter() - began)
        done.append(scene_id)
    return RunSummary(done, skipped, counted[0], time.perf_counter() - start)
