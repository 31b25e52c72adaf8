"""The feature stage's jobs over a store: plain functions, no Prefect, no printing.

A run (one model family in one store) goes in two steps a flow can call separately:
1. `fit_feature_basis`: the PCA of the features of `pca_images` images drawn at random
   across the store's scenes (real camera images and virtual views), optionally after
   taking out the features' positional pattern (`positional.py`); saved under
   `feature_runs/<family>/` (`storage_schemas.feature_runs`), so that every scene of the
   run, a resumed one's too, is projected with the same basis;
2. `extract_scene_features`: one scene's images extracted and projected in batches, and
   committed as the family's stage (only its own arrays).

Both are idempotent: a saved run with the same config and weights is reused, a scene whose
current features come from this run and code version is skipped. Inside a scene each
finished batch is kept until the scene commits, keyed to the run and the scene's content,
so a killed run loses at most one batch and never reuses a batch of other images.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from distillprep.storage_schemas.attrs import config_hash
from distillprep.storage_schemas.feature_runs import (
    FeatureBasis,
    FeatureRun,
    FeatureRunError,
    basis_to_bytes,
    read_run,
    run_prefix,
    write_run,
)
from distillprep.storage_schemas.layout import array_sha256
from distillprep.storage_schemas.partials import Pieces, drop_pieces, partial_prefix
from distillprep.storage_schemas.provenance import FeatureProvenance
from distillprep.storage_schemas.reader import decode_jpeg
from distillprep.storage_schemas.scene_view import SceneView
from distillprep.storage_schemas.store import Store, package_version

from .extract import FeatureConfig, FeatureExtractor
from .pca import PCA, CovarianceSum, fit_pca, project
from .positional import denoise, position_pattern, resample_pattern

CODE_VERSION = 1
"""Version of what the feature stage writes (bumped when its outputs change meaning)."""

Progress = Callable[[int], None]
"""Called with the number of images just finished."""


@dataclass(frozen=True)
class ImageSet:
    """The images of one kind in one scene."""

    scene_id: str
    kind: str
    """"real" (camera samples, array rgb_jpeg) or "virtual" (virtual_rgb)."""
    count: int
    height: int
    width: int


@dataclass(frozen=True)
class RunBasis:
    """What every scene of a run is projected with."""

    run: FeatureRun
    """The run's record (its id, config, weights)."""
    pca: PCA
    pattern: np.ndarray | None
    """(D, h, w) positional pattern subtracted first (None: not denoised)."""


@dataclass(frozen=True)
class SceneFeaturesResult:
    """What `extract_scene_features` did for one scene."""

    scene_id: str
    status: Literal["written", "skipped"]
    """written: extracted and committed now; skipped: this run's features were there."""
    images: int
    """Images extracted by this call (kept batches reused are not counted)."""
    wall_time_s: float


def image_sets(view: SceneView) -> list[ImageSet]:
    """The real images of a scene and, when its current teacher outputs have them, its
    virtual views."""
    attrs = view.attrs
    sets = [ImageSet(view.scene_id, "real", attrs.num_samples, attrs.height, attrs.width)]
    if "virtual_rgb" in view:
        count, height, width, _ = view["virtual_rgb"].shape
        if count:
            sets.append(ImageSet(view.scene_id, "virtual", count, height, width))
    return sets


def read_images(view: SceneView, images: ImageSet, start: int, stop: int) -> np.ndarray:
    """Images start..stop-1 of a set, (B, H, W, 3) uint8."""
    if images.kind == "virtual":
        return np.asarray(view["virtual_rgb"][start:stop])
    jpeg = np.asarray(view["rgb_jpeg"][start:stop])
    nbytes = np.asarray(view["rgb_jpeg_nbytes"][start:stop])
    return np.stack([decode_jpeg(row, int(n), f"scene {images.scene_id!r}, sample {start + i}")
                     for i, (row, n) in enumerate(zip(jpeg, nbytes, strict=True))])


def grid_for(extractor: FeatureExtractor, config: FeatureConfig, real: ImageSet,
             images: ImageSet) -> tuple[int, int]:
    """The feature grid of a set: virtual views get the density of patches per pixel of
    the scene's real images (a half-size view, half the grid)."""
    input_width = config.input_width or extractor.spec.default_width
    scaled = input_width * images.width / real.width
    return extractor.grid(images.height, images.width, max(1, round(scaled)))


def run_identity(config: FeatureConfig, extractor: FeatureExtractor) -> dict:
    """What makes two runs interchangeable: the config and the weights' checksum."""
    return {"config": asdict(config), "weights_sha256": extractor.provenance["weights_sha256"]}


def saved_basis(store: Store, family: str) -> RunBasis | None:
    """The run saved in the store for a family, or None."""
    saved = read_run(store, family)
    if saved is None:
        return None
    run, stored = saved
    pca = PCA(stored.basis, stored.mean, stored.explained_variance, stored.total_variance,
              stored.samples)
    return RunBasis(run, pca, stored.pattern)


def _sample_features(store: Store, extractor: FeatureExtractor, config: FeatureConfig,
                     progress: Progress | None) -> tuple[CovarianceSum, np.ndarray | None]:
    """Pass 1's sums over `pca_images` images drawn at random (without replacement)
    across every scene's real and virtual images; with `denoise_positions`, the positional
    pattern of the sampled real images (on the first one's grid), taken out first."""
    views = {scene_id: store.scene(scene_id) for scene_id in store.scenes()}
    sets = [s for view in views.values() for s in image_sets(view)]
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
        view = views[images.scene_id]
        batch = np.stack([read_images(view, images, j, j + 1)[0] for j in mine])
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
    return sums, pattern


def fit_feature_basis(store: Store, extractor: FeatureExtractor, config: FeatureConfig,
                      force: bool = False, progress: Progress | None = None) -> RunBasis:
    """The run's basis: the saved one when the store holds this same run (nothing is
    done), else fitted afresh over the store (pass 1) and saved. A store holding another
    run of the family is refused unless `force` (which replaces it; every scene is then
    redone by `extract_scene_features`, its features being of the old run)."""
    family = extractor.spec.family
    identity = run_identity(config, extractor)
    run_id = config_hash(identity)
    saved = saved_basis(store, family)
    if saved is not None and not force:
        if saved.run.run_id == run_id:
            return saved
        raise FeatureRunError(
            f"store {store.location.location} holds {family} features of another run "
            f"({saved.run.model}, run {saved.run.run_id[:12]}); pass --force to replace them "
            "in every scene")
    store.location.delete(run_prefix(family))
    sums, pattern = _sample_features(store, extractor, config, progress)
    pca = fit_pca(sums, config.channels)
    stored = FeatureBasis(pca.basis, pca.mean, pca.explained_variance, pca.total_variance,
                          pca.samples, pattern)
    run = FeatureRun(family=family, run_id=run_id, model=config.model,
                     config=identity["config"], weights_sha256=identity["weights_sha256"],
                     created=datetime.now(UTC),
                     basis_sha256=hashlib.sha256(basis_to_bytes(stored)).hexdigest())
    write_run(store, run, stored)
    return RunBasis(run, pca, pattern)


def scene_done(view: SceneView, family: str, run_id: str) -> bool:
    """Whether the scene's current features of a family come from this run and code."""
    record = view.provenance(f"{family}_features")
    return (record is not None and record.run_id == run_id
            and record.code_version == CODE_VERSION)


def _batches(images: ImageSet, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, images.count, batch_size):
        yield start, min(start + batch_size, images.count)


def scene_features(store: Store, view: SceneView, extractor: FeatureExtractor,
                   config: FeatureConfig, basis: RunBasis, progress: Progress | None = None,
                   ) -> tuple[dict[str, np.ndarray], int]:
    """Pass 2 for one scene: ({"real": (N, C, h, w), "virtual": (V, C, hv, wv)} float16
    projected features, images extracted now), each finished batch kept in the store until
    the scene commits (and read back instead of recomputed on a resume)."""
    family = extractor.spec.family
    sets = image_sets(view)
    kept = Pieces(store, partial_prefix(
        run_prefix(family), view.scene_id,
        {"run": basis.run.run_id, "inputs": view.input_fingerprints(f"{family}_features")}))
    out, extracted = {}, 0
    for images in sets:
        grid = grid_for(extractor, config, sets[0], images)
        shape = (config.channels, *extractor.feature_grid(grid))
        parts = []
        for start, stop in _batches(images, extractor.batch_size):
            name = f"{images.kind}-{start}"
            piece = kept.get(name, {"features": ((stop - start, *shape), "float16")})
            if piece is None:
                features = extractor(read_images(view, images, start, stop), grid)
                part = project(basis.pca, denoise(features, basis.pattern)).astype(np.float16)
                kept.put(name, {"features": part})
                extracted += stop - start
                if progress:
                    progress(stop - start)
            else:
                part = piece["features"]
            parts.append(part)
        out[images.kind] = np.concatenate(parts)
    return out, extracted


def extract_scene_features(store: Store, scene_id: str, extractor: FeatureExtractor,
                           config: FeatureConfig, basis: RunBasis, force: bool = False,
                           progress: Progress | None = None) -> SceneFeaturesResult:
    """Extract, project and commit one scene's features of the run `basis` (from
    `fit_feature_basis`); a scene that already holds them is skipped unless `force`."""
    start = time.perf_counter()
    family = extractor.spec.family
    stage = f"{family}_features"
    view = store.scene(scene_id)
    if not force and scene_done(view, family, basis.run.run_id):
        return SceneFeaturesResult(scene_id, "skipped", 0, time.perf_counter() - start)
    base = view.heads[stage].sequence if stage in view.heads else 0
    features, extracted = scene_features(store, view, extractor, config, basis, progress)
    pca = basis.pca
    arrays = {f"{family}_features": features["real"], f"{family}_pca_basis": pca.basis,
              f"{family}_pca_mean": pca.mean,
              f"{family}_pca_explained_variance": pca.explained_variance}
    if view.has_virtual_views():  # the teacher stage's views come all together
        arrays[f"{family}_virtual_features"] = features.get(
            "virtual", np.zeros((0, config.channels, 1, 1), np.float16))
    norms = np.linalg.norm(features["real"].astype(np.float32), axis=1).mean(axis=(1, 2))
    identity = run_identity(config, extractor)
    provenance = FeatureProvenance(
        stage=stage, config=identity, config_hash=basis.run.run_id, code_version=CODE_VERSION,
        package_version=package_version(), finished_at=datetime.now(UTC),
        wall_time_s=time.perf_counter() - start,
        inputs=view.input_fingerprints(stage), run_id=basis.run.run_id,
        **{k: extractor.provenance[k] for k in (
            "model", "library", "architecture", "weights", "weights_sha256", "random_init",
            "device", "batch_size", "precision", "stride")},
        pca_channels=config.channels, pca_explained_ratio=pca.explained_ratio,
        pca_samples=pca.samples, pca_sha256=array_sha256(pca.basis),
        position_pattern_sha256=None if basis.pattern is None else array_sha256(basis.pattern),
        grid=list(features["real"].shape[-2:]),
        images=int(sum(len(f) for f in features.values())))
    store.commit_stage(scene_id, provenance, arrays,
                       {f"{family}_feature_norm_mean": norms.astype(np.float32).tolist(),
                        f"has_{family}_features": [True] * len(norms)},
                       expect_sequence=base)
    drop_pieces(store, run_prefix(family), scene_id)
    return SceneFeaturesResult(scene_id, "written", extracted, time.perf_counter() - start)


@dataclass
class RunSummary:
    """What a feature run over a store did."""

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
    """Both steps over the store's scenes (all, or those named): what `distillprep
    features` runs."""
    start = time.perf_counter()
    counted = [0]

    def count(n: int) -> None:
        counted[0] += n
        if progress:
            progress(n)

    basis = fit_feature_basis(store, extractor, config, force, count)
    done, skipped = [], []
    for scene_id in scene_ids or store.scenes():
        result = extract_scene_features(store, scene_id, extractor, config, basis, force,
                                        count)
        (done if result.status == "written" else skipped).append(scene_id)
    return RunSummary(done, skipped, counted[0], time.perf_counter() - start)
