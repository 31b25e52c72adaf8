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
