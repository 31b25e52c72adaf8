"""Builders shared by the storage tests: minimal valid scenes and stage commits from raw
arrays, without running the dataset readers or the teachers."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from distillprep.storage_schemas.attrs import SceneAttrs, SourceFile, config_hash
from distillprep.storage_schemas.manifest import MANIFEST_SCHEMA, SAMPLE_ARRAYS
from distillprep.storage_schemas.provenance import (
    FeatureProvenance,
    IngestProvenance,
    TeacherProvenance,
    VirtualViewCounts,
)


def scene_attrs(scene_id: str, n: int, f: int, h: int, w: int) -> SceneAttrs:
    return SceneAttrs(scene_id=scene_id, dataset="synthetic", dataset_version="v0",
                      created=datetime.now(UTC), cameras=["CAM_FRONT"], lidars=["LIDAR_TOP"],
                      width=w, height=h, num_samples=n, num_frames=f,
                      source_files=[SourceFile(path="x.jpg", size=1, sha256="0" * 64)])


def ingest_provenance(config: dict | None = None) -> IngestProvenance:
    config = {} if config is None else config
    return IngestProvenance(stage="ingest", config=config, config_hash=config_hash(config),
                            code_version=1, package_version="test",
                            finished_at=datetime.now(UTC), wall_time_s=0.0, reader="synthetic",
                            dataroot="/nowhere", sweeps=False)


def manifest(scene_id: str, n: int, arrays) -> pa.Table:
    rows = {field.name: [None] * n for field in MANIFEST_SCHEMA}
    rows.update({"scene_id": [scene_id] * n, "sample_index": list(range(n)),
                 "frame_index": list(range(n)), "camera": ["CAM_FRONT"] * n,
                 "timestamp_us": list(range(n)), "is_keyframe": [True] * n,
                 "width": [1] * n, "height": [1] * n, "source_file": ["x.jpg"] * n,
                 "group": [scene_id] * n, "chunk_index": list(range(n)),
                 "shard_index": [0] * n, "lidar_depth_valid_fraction": [0.0] * n})
    for name in SAMPLE_ARRAYS:
        rows[f"has_{name}"] = [name in arrays] * n
    return pa.table(rows, schema=MANIFEST_SCHEMA)


def rigid_poses(n: int, rng: np.random.Generator) -> np.ndarray:
    poses = np.tile(np.eye(4), (n, 1, 1))
    for pose in poses:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        pose[:3, :3] = q * np.sign(np.linalg.det(q))
        pose[:3, 3] = rng.normal(size=3) * 100
    return poses


def ingest_arrays(n: int, h: int, w: int, sweeps: int = 2, seed: int = 0,
                  ) -> dict[str, np.ndarray]:
    """Valid ingest arrays of n samples (one frame each) and `sweeps` LiDAR sweeps."""
    rng = np.random.default_rng(seed)
    k = np.tile(np.array([[10.0, 0, w / 2], [0, 10.0, h / 2], [0, 0, 1]]), (n, 1, 1))
    counts = rng.integers(0, 20, sweeps)
    return {
        "rgb_jpeg": rng.integers(0, 256, (n, 40), dtype=np.uint8),
        "rgb_jpeg_nbytes": np.full(n, 40, np.int64),
        "lidar_depth": rng.uniform(0, 50, (n, h, w)).astype(np.float16),
        "intrinsics": k, "cam_to_world": rigid_poses(n, rng),
        "timestamp_us": np.arange(n, dtype=np.int64) * 500_000,
        "camera_index": np.zeros(n, np.int16), "frame_index": np.arange(n, dtype=np.int32),
        "ego_to_world": rigid_poses(n, rng),
        "frame_timestamp_us": np.arange(n, dtype=np.int64) * 500_000,
        "frame_is_keyframe": np.ones(n, np.uint8),
        "lidar_points": rng.normal(size=(int(counts.sum()), 3)).astype(np.float32),
        "lidar_intensity": rng.uniform(0, 1, int(counts.sum())).astype(np.float32),
        "lidar_sweep_points": counts.astype(np.int64),
        "lidar_sensor_to_world": rigid_poses(sweeps, rng),
        "lidar_timestamp_us": np.arange(sweeps, dtype=np.int64) * 500_000,
        "lidar_frame_index": np.minimum(np.arange(sweeps), n - 1).astype(np.int32),
        "lidar_is_keyframe": np.ones(sweeps, np.uint8),
        "lidar_sensor_index": np.zeros(sweeps, np.int16),
    }


def write_scene(store, scene_id: str, n: int = 4, h: int = 6, w: int = 8, seed: int = 0):
    """Commit a small valid scene's ingest stage; returns its arrays."""
    arrays = ingest_arrays(n, h, w, seed=seed)
    store.write_scene(scene_attrs(scene_id, n, n, h, w), arrays, manifest(scene_id, n, arrays),
                      ingest_provenance({"seed": seed}))
    return arrays


def teacher_record(store, scene_id: str, config: dict | None = None,
                   samples: int = 0) -> TeacherProvenance:
    """A teacher provenance record made from the scene's current ingest."""
    config = {"synthetic": True} if config is None else config
    return TeacherProvenance(
        stage="teacher", config=config, config_hash=config_hash(config), code_version=1,
        package_version="test", finished_at=datetime.now(UTC), wall_time_s=0.0,
        inputs=store.scene(scene_id).input_fingerprints("teacher"), backend="torch",
        device="cpu", steps=0, fit_wall_time_s=0.0, render_time_s=0.0, checkpoint_sha256=None,
        fitted_frames=[], heldout_frames=[], rendered_samples=list(range(samples)),
        final_losses={}, heldout_psnr_db=None, train_psnr_db=None, lidar_abs_rel=None,
        lidar_abs_rel_heldout=None, virtual_views=VirtualViewCounts(kept=0, moved=0, dropped=0))


def write_teacher_stage(store, scene_id: str, teacher: dict[str, np.ndarray], **kwargs):
    """Commit synthetic teacher-stage arrays with a teacher provenance record: a real
    store with teacher outputs, without running the teacher."""
    return store.commit_stage(scene_id, teacher_record(store, scene_id), teacher, **kwargs)


def teacher_arrays(n: int, views: int, size: tuple[int, int] = (6, 8),
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Valid teacher-stage arrays with random values: n samples, `views` virtual views."""
    rng = np.random.default_rng(seed)
    h, w = size
    k = np.tile(np.array([[10.0, 0, w / 2], [0, 10.0, h / 2], [0, 0, 1]]), (views, 1, 1))
    return {
        "teacher_depth": rng.uniform(1, 50, (n, h, w)).astype(np.float16),
        "teacher_opacity": rng.uniform(0, 1, (n, h, w)).astype(np.float16),
        "virtual_rgb": rng.integers(0, 256, (views, h, w, 3), dtype=np.uint8),
        "virtual_depth": rng.uniform(1, 50, (views, h, w)).astype(np.float16),
        "virtual_opacity": rng.uniform(0, 1, (views, h, w)).astype(np.float16),
        "virtual_intrinsics": k,
        "virtual_cam_to_world": rigid_poses(views, rng),
        "virtual_source_sample": rng.integers(0, n, views).astype(np.int32),
        "virtual_offset": np.tile([1.0, 0, 0, 0, 0, 0], (views, 1)),
        "virtual_shift": np.zeros(views, np.float32),
    }


def feature_record(store, scene_id: str, family: str, run: str = "run") -> FeatureProvenance:
    """A feature provenance record made from the scene's current inputs."""
    config = {"run": run}
    return FeatureProvenance(
        stage=f"{family}_features", config=config, config_hash=config_hash(config),
        code_version=1, package_version="test", finished_at=datetime.now(UTC),
        wall_time_s=0.0, inputs=store.scene(scene_id).input_fingerprints(f"{family}_features"),
        run_id=config_hash(config), model="synthetic", library="none", architecture="none",
        weights=None, weights_sha256=None, random_init=True, device="cpu", batch_size=1,
        precision="fp32", stride=14, pca_channels=2, pca_explained_ratio=0.5, pca_samples=1,
        pca_sha256="0" * 64, position_pattern_sha256=None, grid=[2, 2], images=0)


def feature_arrays(family: str, n: int, views: int | None, seed: int = 0,
                   ) -> dict[str, np.ndarray]:
    """Valid feature-stage arrays (C = 2, D = 3, a 2 x 2 grid); views None: no virtual."""
    rng = np.random.default_rng(seed)
    arrays = {f"{family}_features": rng.normal(size=(n, 2, 2, 2)).astype(np.float16),
              f"{family}_pca_basis": np.eye(2, 3, dtype=np.float32),
              f"{family}_pca_mean": np.zeros(3, np.float32),
              f"{family}_pca_explained_variance": np.ones(2, np.float32)}
    if views is not None:
        arrays[f"{family}_virtual_features"] = rng.normal(size=(views, 2, 1, 1)).astype(
            np.float16)
    return arrays


def commit_rounds(location: str, storage_options: dict | None, scene_id: str, family: str,
                  seed: int, rounds: int, barrier, results, same_base: bool) -> None:
    """A writer process: each round, after the barrier, commit `family`'s feature stage
    of the scene (seeded seed + round) and report ("ok" or "conflict", message); with
    `same_base`, the round's base commit is read before the barrier, so that two writers
    race from the same state. The second barrier lets the caller check the store."""
    from distillprep.storage_schemas.errors import CommitConflictError
    from distillprep.storage_schemas.store import open_store

    store = open_store(location, mode="a", storage_options=storage_options)
    n = store.scene_attrs(scene_id).num_samples
    stage = f"{family}_features"
    for r in range(rounds):
        head = store.head(scene_id, stage) if same_base else None
        base = (head.sequence if head else 0) if same_base else None
        barrier.wait()
        try:
            store.commit_stage(scene_id, feature_record(store, scene_id, family),
                               feature_arrays(family, n, None, seed=seed + r),
                               expect_sequence=base)
            results.put((seed, r, "ok", ""))
        except CommitConflictError as exc:
            results.put((seed, r, "conflict", str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            results.put((seed, r, "error", f"{type(exc).__name__}: {exc}"))
        barrier.wait()
