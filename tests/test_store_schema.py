"""The store's schema as types: checked-in JSON Schemas, parsing of untrusted metadata."""

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from store_helpers import manifest, scene_attrs

from distillprep.storage_schemas.attrs import (
    SCHEMA_VERSION,
    parse_commit,
    parse_scene_attrs,
    parse_store_attrs,
)
from distillprep.storage_schemas.errors import MetadataError, SchemaVersionError, StoreError
from distillprep.storage_schemas.manifest import (
    MANIFEST_SCHEMA,
    legacy_from_parquet_bytes,
    part_from_parquet_bytes,
    to_parquet_bytes,
)
from distillprep.storage_schemas.schema_files import SCHEMA_DIR, generated
from distillprep.storage_schemas.spec import ARRAYS, resolve_shape


def test_checked_in_json_schemas_match_the_code():
    files = generated()
    on_disk = {p.name for p in SCHEMA_DIR.glob("*.json")}
    assert on_disk == set(files), "run: python -m distillprep.storage_schemas.schema_files"
    for name, text in files.items():
        assert (SCHEMA_DIR / name).read_text() == text, (
            f"{name} drifted from the code; regenerate with "
            "python -m distillprep.storage_schemas.schema_files")


def test_every_array_spec_round_trips_through_json():
    for spec in ARRAYS.values():
        assert type(spec).model_validate_json(spec.model_dump_json()) == spec


def test_resolve_shape_names_the_missing_dimension():
    assert resolve_shape(ARRAYS["lidar_depth"], {"N": 2, "H": 3, "W": 4}) == (2, 3, 4)
    with pytest.raises(KeyError, match="'H'"):
        resolve_shape(ARRAYS["lidar_depth"], {"N": 2, "W": 4})


def _store_raw(**changes):
    raw = {"format": "distillprep-store", "schema_version": SCHEMA_VERSION,
           "dataset": "nuscenes", "dataset_version": "v1.0-mini", "package_version": "0.1.0",
           "created": "2026-11-24T00:00:00+00:00"}
    raw.update(changes)
    return raw


def test_store_attrs_round_trip_and_errors():
    attrs = parse_store_attrs(_store_raw())
    assert parse_store_attrs(attrs.model_dump(mode="json")) == attrs
    with pytest.raises(SchemaVersionError, match="newer"):
        parse_store_attrs(_store_raw(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(SchemaVersionError, match="reads or migrates.*ingest --force"):
        parse_store_attrs(_store_raw(schema_version=0))
    for old in (1, 2):  # earlier layouts: refused, naming the command that upgrades them
        with pytest.raises(SchemaVersionError, match="distillprep migrate /data/s.zarr"):
            parse_store_attrs(_store_raw(schema_version=old), "s", "/data/s.zarr")
    with pytest.raises(MetadataError, match="format"):
        parse_store_attrs(_store_raw(format="something-else"))
    with pytest.raises(MetadataError, match="dataset"):
        parse_store_attrs({k: v for k, v in _store_raw().items() if k != "dataset"})
    with pytest.raises(MetadataError, match="expected a JSON object"):
        parse_store_attrs([1, 2])
    assert issubclass(MetadataError, StoreError) and issubclass(SchemaVersionError, StoreError)


def test_scene_attrs_round_trip_and_refuse_escaping_ids():
    attrs = scene_attrs("scene-1", 4, 2, 8, 8)
    assert parse_scene_attrs(attrs.model_dump(mode="json")) == attrs
    raw = attrs.model_dump(mode="json")
    raw["scene_id"] = "../../evil"
    with pytest.raises(MetadataError, match="scene_id.*slash"):
        parse_scene_attrs(raw)
    raw = attrs.model_dump(mode="json")
    raw["width"] = 0
    with pytest.raises(MetadataError, match="width"):
        parse_scene_attrs(raw)


def test_commit_record_parse_errors():
    with pytest.raises(MetadataError, match="attempt"):
        parse_commit({"scene_id": "a"})


def test_schema_dir_is_shipped_in_the_package():
    assert SCHEMA_DIR == Path(__file__).resolve().parents[1] / "storage_schemas" / "json"


def test_manifest_parts_round_trip_per_stage():
    """Each stage's part holds the key columns and its own; joined, they are the rows."""
    from distillprep.storage_schemas.manifest import STAGE_COLUMNS, join_parts

    table = manifest("scene-1", 3, ["rgb_jpeg"])
    parts = {stage: part_from_parquet_bytes(to_parquet_bytes(table, stage), stage, stage)
             for stage in ("ingest", "teacher")}
    assert parts["teacher"].column_names == ["scene_id", "sample_index",
                                             *STAGE_COLUMNS["teacher"]]
    joined = join_parts(parts, "scene-1")
    assert joined.schema.names == MANIFEST_SCHEMA.names and joined.num_rows == 3
    assert joined.column("has_rgb_jpeg").to_pylist() == [True] * 3
    assert joined.column("has_dino_features").to_pylist() == [False] * 3
    shuffled = parts["teacher"].take([1, 0, 2])
    with pytest.raises(MetadataError, match="not the scene's samples in order"):
        join_parts({**parts, "teacher": shuffled}, "scene-1")
    with pytest.raises(MetadataError, match="missing"):
        part_from_parquet_bytes(to_parquet_bytes(table, "teacher"), "ingest", "part")


def test_version_1_manifest_parts_come_back_in_the_current_columns():
    """What `migrate` reads: a version-1 part lacks the per-family feature columns (null or
    false) and has a `feature_norm_mean` column that nothing ever filled (dropped)."""
    current = manifest("scene-1", 3, ["rgb_jpeg"])
    old = current.drop_columns([n for n in current.column_names if "feature" in n])
    old = old.append_column("feature_norm_mean", pa.nulls(3, pa.float32()))
    sink = io.BytesIO()
    pq.write_table(old, sink)
    read = legacy_from_parquet_bytes(sink.getvalue())
    assert read.schema.names == MANIFEST_SCHEMA.names
    assert read.column("has_dino_features").to_pylist() == [False] * 3
    assert read.column("clip_feature_norm_mean").null_count == 3


def test_quarantine_records_round_trip_and_bad_ones_name_their_file(tmp_path):
    from datetime import UTC, datetime

    from distillprep.storage_schemas.errors import MetadataError
    from distillprep.storage_schemas.quarantine import (
        QuarantineRecord,
        clear_quarantine,
        quarantined,
        read_quarantine,
        write_quarantine,
    )
    from distillprep.storage_schemas.store import create_store

    store = create_store(tmp_path / "s.zarr", "nuscenes", "v1.0-mini")
    assert quarantined(store) == {} and read_quarantine(store, "scene-0001") is None
    record = QuarantineRecord(scene_id="scene-0001", step="ingest", kind="bad-data",
                              error_type="SceneDataError", message="bad.jpg: truncated",
                              attempts=1, retryable=False, at=datetime.now(UTC))
    write_quarantine(store, record)
    assert read_quarantine(store, "scene-0001") == record
    assert quarantined(store) == {"scene-0001": record}
    clear_quarantine(store, "scene-0001")
    assert quarantined(store) == {}
    (tmp_path / "s.zarr" / "quarantine" / "scene-0002.json").write_text('{"scene_id": 3}')
    with pytest.raises(MetadataError, match=r"quarantine/scene-0002\.json: .*scene_id"):
        quarantined(store)
