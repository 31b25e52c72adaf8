"""A store built for the loader's tests and bench: several scenes of uneven length, a rig
of several cameras, every stage's arrays, and values that say where they came from (each
sample's teacher depth is its sample index + 1, its K's fx 100 + the sample index), so
that a test can check that a yielded frame carries its own data."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime

import numpy as np
from PIL import Image
from store_helpers import feature_record, ingest_provenance, rigid_poses, teacher_record

from distillprep.storage_schemas.attrs import SceneAttrs, SourceFile
from distillprep.storage_schemas.feature_runs import (
    FeatureBasis,
    FeatureRun,
    basis_to_bytes,
    write_run,
)
from distillprep.storage_schemas.manifest import MANIFEST_SCHEMA, SAMPLE_ARRAYS
from distillprep.storage_schemas.store import create_store

CAMERAS = ("CAM_FRONT", "CAM_BACK")


def _jpeg(value: int, h: int, w: int, rng) -> bytes:
    image = np.clip(value % 200 + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_loader_scene(store, scene_id: str, frames: int, cams: tuple[str, ...] = CAMERAS,
                       size: tuple[int, int] = (12, 16), seed: int = 0,
                       teacher: bool = True, features: bool = True,
                       images: list[bytes] | None = None,
                       basis: np.ndarray | None = None,
                       overrides: dict[str, np.ndarray] | None = None) -> None:
    """Commit ingest, teacher and DINO-feature stages of a scene (frames x cams samples).
    Teacher: every sample rendered; virtual views: 2 per camera sample, except that the
    last camera of every third frame has none (placement dropped them); frames with
    frame_index % 4 == 3 are held out, teacher PSNR is 20 + frame_index % 10. `images`:
    the samples' JPEG bytes (used in turn); `overrides`: arrays of any stage replacing
    the made-up ones (the bench's realistic sizes and values)."""
    rng = np.random.default_rng(seed)
    h, w = size
    n = frames * len(cams)
    jpegs = ([_jpeg(i, h, w, rng) for i in range(n)] if images is None
             else [images[i % len(images)] for i in range(n)])
    overrides = overrides or {}
    longest = max(len(j) for j in jpegs)
    rows = np.zeros((n, longest), np.uint8)
    for i, j in enumerate(jpegs):
        rows[i, :len(j)] = np.frombuffer(j, np.uint8)
    k = np.tile(np.array([[10.0, 0, w / 2], [0, 10.0, h / 2], [0, 0, 1]]), (n, 1, 1))
    k[:, 0, 0] = 100 + np.arange(n)
    lidar = np.zeros((n, h, w), np.float16)
    lidar[:, ::3, ::4] = (np.arange(n) + 1)[:, None, None]
    arrays = {
        "rgb_jpeg": rows, "rgb_jpeg_nbytes": np.array([len(j) for j in jpegs], np.int64),
        "lidar_depth": lidar, "intrinsics": k, "cam_to_world": rigid_poses(n, rng),
        "timestamp_us": np.arange(n, dtype=np.int64) * 1000,
        "camera_index": np.tile(np.arange(len(cams), dtype=np.int16), frames),
        "frame_index": np.repeat(np.arange(frames, dtype=np.int32), len(cams)),
        "ego_to_world": rigid_poses(frames, rng),
        "frame_timestamp_us": np.arange(frames, dtype=np.int64) * 1000 * len(cams),
        "frame_is_keyframe": (np.arange(frames) % 2 == 0).astype(np.uint8),
        "lidar_points": np.zeros((0, 3), np.float32),
        "lidar_intensity": np.zeros(0, np.float32),
        "lidar_sweep_points": np.zeros(0, np.int64),
        "lidar_sensor_to_world": np.zeros((0, 4, 4)),
        "lidar_timestamp_us": np.zeros(0, np.int64),
        "lidar_frame_index": np.zeros(0, np.int32),
        "lidar_is_keyframe": np.zeros(0, np.uint8),
        "lidar_sensor_index": np.zeros(0, np.int16),
    }
    arrays.update({k: v for k, v in overrides.items() if k in arrays})
    attrs = SceneAttrs(scene_id=scene_id, dataset="synthetic", dataset_version="v0",
                       created=datetime.now(UTC), cameras=list(cams), lidars=["LIDAR_TOP"],
                       width=w, height=h, num_samples=n, num_frames=frames,
                       source_files=[SourceFile(path="x.jpg", size=1, sha256="0" * 64)])
    frame = np.repeat(np.arange(frames), len(cams))
    columns = {f.name: [None] * n for f in MANIFEST_SCHEMA}
    columns.update({
        "scene_id": [scene_id] * n, "sample_index": list(range(n)),
        "frame_index": frame.tolist(), "camera": [cams[i % len(cams)] for i in range(n)],
        "timestamp_us": arrays["timestamp_us"].tolist(),
        "is_keyframe": (frame % 2 == 0).tolist(), "width": [w] * n, "height": [h] * n,
        "source_file": ["x.jpg"] * n, "group": [scene_id] * n, "chunk_index": list(range(n)),
        "shard_index": [0] * n,
        "lidar_depth_valid_fraction": [0.05 if f % 5 == 4 else 0.2 for f in frame]})
    for name in SAMPLE_ARRAYS:
        columns[f"has_{name}"] = [name in arrays] * n
    import pyarrow as pa

    store.write_scene(attrs, arrays, pa.table(columns, schema=MANIFEST_SCHEMA),
                      ingest_provenance({"seed": seed}))
    if not teacher:
        return
    source = [s for s in range(n) if not (s % len(cams) == len(cams) - 1
                                          and (s // len(cams)) % 3 == 2)
              for _ in range(2)]
    v = len(source)
    views = {
        "teacher_depth": np.broadcast_to((np.arange(n) + 1)[:, None, None],
                                         (n, h, w)).astype(np.float16),
        "teacher_opacity": np.full((n, h, w), 0.5, np.float16),
        "virtual_rgb": np.broadcast_to((np.arange(v) % 250)[:, None, None, None],
                                       (v, h // 2, w // 2, 3)).astype(np.uint8),
        "virtual_depth": np.broadcast_to((np.asarray(source) + 1)[:, None, None],
                                         (v, h // 2, w // 2)).astype(np.float16),
        "virtual_opacity": np.ones((v, h // 2, w // 2), np.float16),
        "virtual_intrinsics": np.tile(np.eye(3), (v, 1, 1)),
        "virtual_cam_to_world": rigid_poses(v, rng),
        "virtual_source_sample": np.asarray(source, np.int32),
        "virtual_offset": np.tile([1.0, 0, 0, 0, 0, 0], (v, 1)) * (np.arange(v) % 2 * 2 - 1
                                                                    )[:, None],
        "virtual_shift": np.zeros(v, np.float32),
    }
    views.update({k: v for k, v in overrides.items() if k in views})
    record = teacher_record(store, scene_id, samples=n)
    store.commit_stage(scene_id, record, views, {
        "teacher_psnr": [20.0 + f % 10 for f in frame],
        "teacher_lidar_abs_rel": [0.05 + 0.01 * (f % 7) for f in frame],
        "teacher_heldout": [bool(f % 4 == 3) for f in frame]})
    if not features:
        return
    feats = {"dino_features": np.broadcast_to((np.arange(n) + 1)[:, None, None, None],
                                              (n, 2, 2, 2)).astype(np.float16),
             "dino_virtual_features": np.zeros((v, 2, 1, 1), np.float16),
             "dino_pca_basis": (np.eye(2, 3) if basis is None else basis).astype(np.float32),
             "dino_pca_mean": np.zeros(3, np.float32),
             "dino_pca_explained_variance": np.ones(2, np.float32)}
    feats.update({k: v for k, v in overrides.items() if k in feats})
    store.commit_stage(scene_id, feature_record(store, scene_id, "dino"), feats)


UNEVEN = {"scene-a": 23, "scene-b": 9, "scene-c": 41, "scene-d": 5, "scene-e": 17}
"""Frames per scene of the loader tests' store: uneven, some scenes several shards."""


def build_loader_store(path, scenes: dict[str, int] = UNEVEN, storage_options=None,
                       basis: np.ndarray | None = None, **kwargs):
    """A store of `scenes` (id -> frames) and, with features, their DINO run record."""
    store = create_store(path, "synthetic", "v0", storage_options=storage_options)
    for i, (scene_id, frames) in enumerate(scenes.items()):
        write_loader_scene(store, scene_id, frames, seed=i, basis=basis, **kwargs)
    if kwargs.get("features", True) and kwargs.get("teacher", True):
        basis = (np.eye(2, 3) if basis is None else basis).astype(np.float32)
        pca = FeatureBasis(basis=basis, mean=np.zeros(3, np.float32),
                           explained_variance=np.ones(2, np.float32), total_variance=3.0,
                           samples=100)
        write_run(store, FeatureRun(
            family="dino", run_id="0" * 64, model="synthetic", config={},
            weights_sha256=None, created=datetime.now(UTC),
            basis_sha256=hashlib.sha256(basis_to_bytes(pca)).hexdigest()), pca)
    return path
