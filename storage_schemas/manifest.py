"""The parquet manifest: one row per camera sample, what a researcher filters before
streaming (pandas, polars, DuckDB). Each stage of each scene commits its own part,
`manifest/<scene_id>/<stage>/<attempt>.parquet`, holding `scene_id`, `sample_index` and
the columns that stage owns (`STAGE_COLUMNS`); `Store.manifest()` joins a scene's current
parts into rows of `MANIFEST_SCHEMA` (a stage not committed: nulls, `has_*` false)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import MetadataError
from .spec import ARRAYS, FEATURE_FAMILIES, STAGES

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


OPTIONAL_COLUMNS = ("has_sky_mask",)
"""Columns added to schema version 3 later: a part without one reads as all false."""

KEY_COLUMNS = ("scene_id", "sample_index")
"""Columns every stage's part has: the row's identity."""


def _column_stage(name: str) -> str:
    if name.startswith("has_"):
        return ARRAYS[name[4:]].stage
    if name.startswith("teacher_"):
        return "teacher"
    for family in FEATURE_FAMILIES:
        if name.startswith(f"{family}_"):
            return f"{family}_features"
    return "ingest"


STAGE_COLUMNS: dict[str, tuple[str, ...]] = {
    stage: tuple(n for n in MANIFEST_SCHEMA.names
                 if n not in KEY_COLUMNS and _column_stage(n) == stage)
    for stage in STAGES}
"""Stage -> the manifest columns it fills (besides the key columns)."""


def part_schema(stage: str) -> pa.Schema:
    """The columns of one stage's manifest part."""
    return pa.schema([MANIFEST_SCHEMA.field(n) for n in (*KEY_COLUMNS, *STAGE_COLUMNS[stage])])


def empty_columns(stage: str, rows: int) -> dict[str, pa.Array]:
    """A stage's columns for `rows` rows when it has not filled them: nulls, has_* false."""
    return {n: (pa.array([False] * rows, type=pa.bool_()) if n.startswith("has_")
                else pa.nulls(rows, type=MANIFEST_SCHEMA.field(n).type))
            for n in STAGE_COLUMNS[stage]}


def join_parts(parts: dict[str, pa.Table], where: str) -> pa.Table:
    """One scene's rows in MANIFEST_SCHEMA from its stages' parts (stage -> table, the
    ingest part required); rows of every part must be the ingest part's samples in order."""
    base = parts["ingest"]
    keys = base.column("sample_index").to_pylist()
    columns = {n: base.column(n) for n in (*KEY_COLUMNS, *STAGE_COLUMNS["ingest"])}
    for stage in STAGES[1:]:
        part = parts.get(stage)
        if part is None:
            columns.update(empty_columns(stage, base.num_rows))
            continue
        if part.column("sample_index").to_pylist() != keys:
            raise MetadataError(f"{where}: the {stage} manifest part's rows are not the "
                                "scene's samples in order")
        columns.update({n: part.column(n) for n in STAGE_COLUMNS[stage]})
    return pa.table([columns[n] for n in MANIFEST_SCHEMA.names], schema=MANIFEST_SCHEMA)


def depth_stats(depth: np.ndarray) -> tuple[float | None, float | None, float]:
    """(min, max, valid fraction) of a depth map (H, W); min/max None when nothing valid."""
    valid = depth > 0
    if not valid.any():
        return None, None, 0.0
    values = depth[valid].astype(np.float32)
    return float(values.min()), float(values.max()), float(valid.mean())


def to_parquet_bytes(table: pa.Table, stage: str) -> bytes:
    """A stage's manifest part (its key columns and its own columns of `table`)."""
    schema = part_schema(stage)
    sink = io.BytesIO()
    pq.write_table(table.select(schema.names).cast(schema), sink, compression="zstd")
    return sink.getvalue()


def part_from_parquet_bytes(data: bytes, stage: str, where: str) -> pa.Table:
    """A stage's manifest part, checked to hold that stage's columns."""
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise MetadataError(f"{where}: not a readable parquet file: {exc}") from None
    schema = part_schema(stage)
    for name in OPTIONAL_COLUMNS:  # parts written before the column existed
        if name in schema.names and name not in table.column_names:
            table = table.append_column(name, pa.array([False] * table.num_rows, pa.bool_()))
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise MetadataError(f"{where}: columns {missing} are missing")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise MetadataError(f"{where}: columns of the wrong type: {exc}") from None


def legacy_from_parquet_bytes(data: bytes) -> pa.Table:
    """A whole-scene manifest part of schema version 1 or 2 in the current columns (for
    `migrate`): version 1 lacks the per-family feature columns (null; `has_*` false) and
    has a `feature_norm_mean` column that nothing ever filled (dropped)."""
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
