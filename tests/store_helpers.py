"""Builders shared by the storage tests: minimal valid scene payloads from raw arrays."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from distillprep.storage_schemas.attrs import SceneAttrs, SourceFile, StageRecord, config_hash
from distillprep.storage_schemas.manifest import MANIFEST_SCHEMA, SAMPLE_ARRAYS


def scene_attrs(scene_id: str, n: int, f: int, h: int, w: int) -> SceneAttrs:
    stage = StageRecord(stage="ingest", config={}, config_hash=config_hash({}),
                        package_version="test", finished_at=datetime.now(UTC), wall_time_s=0.0)
    return SceneAttrs(scene_id=scene_id, dataset="synthetic", dataset_version="v0",
                      created=datetime.now(UTC), cameras=["CAM_FRONT"], width=w,
                      height=h, num_samples=n, num_frames=f,
                      source_files=[SourceFile(path="x.jpg", size=1, sha256="0" * 64)],
                      stages={"ingest": stage})


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


def teacher_record(config: dict | None = None) -> StageRecord:
    config = {"synthetic": True} if config is None else config
    return StageRecord(stage="teacher", config=config, config_hash=config_hash(config),
                       package_version="test", finished_at=datetime.now(UTC), wall_time_s=0.0)


def write_teacher_stage(store, scene_id: str, teacher: dict[str, np.ndarray]):
    """Commit `scene_id` again with synthetic teacher-stage arrays and a teacher
    provenance record (`Store.replace_stage`): a real store with teacher outputs, without
    running the teacher."""
    return store.replace_stage(scene_id, teacher_record(), teacher)


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
