"""The parquet manifest: one row per camera sample, what a researcher filters before
streaming (pandas, polars, DuckDB). Each committed scene has one part,
`manifest/<scene_id>/<attempt>.parquet`; `read_manifest` concatenates the committed ones."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .spec import ARRAYS, FEATURE_FAMILIES

# Per-sample arrays along N: each gets a `has_<name>` column.
SAMPLE_ARRAYS = tuple(name for name, spec in ARRAYS.items()
                      if spec.per_sample and spec.shape[0] == "N")

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("scene_id", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),
        pa.field("camera", pa.string(), nullable=False),
        pa.field("timestamp_us", pa.int64(), nullable=False),
        pa.field("is_keyframe", pa.bool_(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("group", pa.string(), nullable=False),
        pa.field("chunk_index", pa.int32(), nullable=False),
        pa.field("shard_index", pa.int32(), nullable=False),
        pa.field("lidar_depth_min", pa.float32()),
        pa.field("lidar_depth_max", pa.float32()),
        pa.field("lidar_depth_valid_fraction", pa.float32(), nullable=False),
    ]
    # mean L2 norm of each family's stored (PCA-reduced) feature vectors, per image
    + [pa.field(f"{family}_feature_norm_mean", pa.float32()) for family in FEATURE_FAMILIES]
    + [
        # the teacher's own quality figures, so that weak teachers can be filtered out
        pa.field("teacher_psnr", pa.float32()),
        pa.field("teacher_lidar_abs_rel", pa.float32()),
        pa.field("teacher_heldout", pa.bool_()),
    ]
    + [pa.field(f"has_{name}", pa.bool_(), nullable=False) for name in SAMPLE_ARRAYS]
)


def depth_stats(depth: np.ndarray) -> tuple[float | None, float | None, float]:
    """(min, max, valid fraction) of a depth map (H, W); min/max None when nothing valid."""
    valid = depth > 0
    if not valid.any():
        return None, None, 0.0
    values = depth[valid].astype(np.float32)
    return float(values.min()), float(values.max()), float(valid.mean())


def to_parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table.cast(MANIFEST_SCHEMA), sink, compression="zstd")
    return sink.getvalue()


def from_parquet_bytes(data: bytes) -> pa.Table:
    """A manifest part in the current schema's columns: a part written under schema
    version 1 lacks the per-family feature columns (null; `has_*` false) and has a
    `feature_norm_mean` column that nothing ever filled (dropped)."""
    table = pq.read_table(io.BytesIO(data))
    if "feature_norm_mean" in table.column_names:
        table = table.drop_columns(["feature_norm_mean"])
    for field in MANIFEST_SCHEMA:
        if field.name not in table.column_names:
            fill = [False] * table.num_rows if field.name.startswith("has_") else None
            column = (pa.array(fill, type=field.type) if fill is not None
                      else pa.nulls(table.num_rows, type=field.type))
            table = table.append_column(field, column)
    return table.select(MANIFEST_SCHEMA.names)
