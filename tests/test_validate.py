"""The validator on a corpus of damaged stores: each damage caught with the right rule,
naming the scene and the array."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import zarr

from distillprep.storage_schemas.errors import NotAStoreError
from distillprep.storage_schemas.manifest import part_from_parquet_bytes, to_parquet_bytes
from distillprep.storage_schemas.validate import format_report, validate_store

SCENE = "scene-0001"


def _commit_path(root: Path, scene=SCENE, stage="ingest") -> Path:
    return sorted((root / "commits" / scene / stage).glob("*.json"))[-1]


def _commit(root: Path, scene=SCENE, stage="ingest") -> dict:
    return json.loads(_commit_path(root, scene, stage).read_text())


def _prefix(root: Path, scene=SCENE, stage="ingest") -> Path:
    return root / "scenes" / scene / stage / _commit(root, scene, stage)["attempt"]


def _array(root: Path, name: str, mode="r+") -> zarr.Array:
    return zarr.open_array(str(_prefix(root) / name), mode=mode)


def _replace_array(root: Path, name: str, data: np.ndarray) -> None:
    shutil.rmtree(_prefix(root) / name)
    zarr.create_array(str(_prefix(root) / name), shape=data.shape, dtype=data.dtype,
                      chunks=data.shape)[...] = data


def _rewrite_manifest(root: Path, edit) -> None:
    path = root / _commit(root)["manifest"]
    rows = part_from_parquet_bytes(path.read_bytes(), "ingest", str(path)).to_pylist()
    path.write_bytes(to_parquet_bytes(pa.Table.from_pylist(edit(rows)), "ingest"))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _assert_caught(root: Path, rule: str, array: str | None = None, fragment: str = "",
                   deep: bool = False):
    report = validate_store(root, deep=deep)
    assert not report.ok and report.exit_code == 1
    hits = [f for f in report.errors if f.rule == rule]
    assert hits, format_report(report)
    finding = hits[0]
    if array is not None:
        assert finding.array == array and finding.scene == SCENE, finding
    assert fragment in finding.message, finding
    text = format_report(report)
    assert f"[{rule}]" in text
    return report


def test_a_fresh_store_is_valid_shallow_and_deep(small_store):
    for deep in (False, True):
        report = validate_store(small_store, deep=deep)
        assert report.ok and report.exit_code == 0, format_report(report)
        assert report.scenes == 2 and report.samples == 36


def test_missing_array(store_copy):
    shutil.rmtree(_prefix(store_copy) / "intrinsics")
    _assert_caught(store_copy, "missing-array", "intrinsics")


def test_wrong_dtype(store_copy):
    _replace_array(store_copy, "frame_index", _array(store_copy, "frame_index")[...].astype(
        np.int64))
    _assert_caught(store_copy, "dtype", "frame_index", "int64")


def test_wrong_shape(store_copy):
    data = _array(store_copy, "timestamp_us")[...]
    _replace_array(store_copy, "timestamp_us", np.concatenate([data, data[-1:] + 1]))
    _assert_caught(store_copy, "shape", "timestamp_us", "(19,)")


def test_nan_depth(store_copy):
    _array(store_copy, "lidar_depth")[3, 10, 10] = np.nan
    _assert_caught(store_copy, "finite", "lidar_depth", "rows 0..", deep=True)


def test_truncated_shard_file(store_copy):
    shard = next(p for p in (_prefix(store_copy) / "rgb_jpeg" / "c").rglob("*") if p.is_file())
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    _assert_caught(store_copy, "stored-bytes", "rgb_jpeg", "truncated")
    _assert_caught(store_copy, "unreadable-chunk", "rgb_jpeg", deep=True)


def test_manifest_row_without_data(store_copy):
    _rewrite_manifest(store_copy, lambda rows: rows + [{**rows[-1], "sample_index": 18}])
    _assert_caught(store_copy, "manifest-row-without-data", fragment="[18]")


def test_data_without_manifest_row(store_copy):
    _rewrite_manifest(store_copy, lambda rows: rows[:-1])
    _assert_caught(store_copy, "data-without-manifest-row", fragment="[17]")


def test_duplicate_sample(store_copy):
    _rewrite_manifest(store_copy, lambda rows: [rows[0], rows[0]] + rows[2:])
    _assert_caught(store_copy, "duplicate-sample", fragment="[0]")


def test_wrong_schema_version(store_copy):
    _edit_json(store_copy / "zarr.json",
               lambda d: d["attributes"].__setitem__("schema_version", 99))
    report = _assert_caught(store_copy, "store-attributes", fragment="newer")
    assert "upgrade distillprep" in report.errors[0].message


def test_stage_without_ingest(store_copy):
    shutil.rmtree(store_copy / "commits" / SCENE / "ingest")
    (store_copy / "commits" / SCENE / "teacher").mkdir()
    (store_copy / "commits" / SCENE / "teacher" / "00000001.json").write_text(
        _commit_path(store_copy, "scene-0002").read_text())
    _assert_caught(store_copy, "commit-record", fragment="records scene 'scene-0002'")


def test_unparsable_commit_record(store_copy):
    _commit_path(store_copy).write_text("{not json")
    _assert_caught(store_copy, "commit-record", fragment="not valid JSON")


def test_lidar_tables_that_do_not_add_up(store_copy):
    counts = _array(store_copy, "lidar_sweep_points")
    counts[...] = counts[...] + 1
    _assert_caught(store_copy, "value-range", "lidar_sweep_points", "add up to")


def test_non_orthonormal_pose(store_copy):
    poses = _array(store_copy, "cam_to_world")
    data = poses[...]
    data[4, :3, :3] *= 1.1
    poses[...] = data
    _assert_caught(store_copy, "pose-orthonormal", "cam_to_world", "[4]")


def test_path_escaping_scene_id(store_copy):
    record = _commit(store_copy)
    record["scene_id"] = "a..b"
    (store_copy / "commits" / "a..b" / "ingest").mkdir(parents=True)
    (store_copy / "commits" / "a..b" / "ingest" / "00000001.json").write_text(
        json.dumps(record))
    report = validate_store(store_copy)
    [finding] = [f for f in report.errors if f.rule == "scene-id"]
    assert finding.scene == "a..b" and "'..'" in finding.message


def test_timestamps_not_increasing(store_copy):
    stamps = _array(store_copy, "frame_timestamp_us")
    stamps[...] = stamps[...][::-1].copy()
    _assert_caught(store_copy, "timestamps-increasing", "frame_timestamp_us")


def test_commit_pointing_nowhere(store_copy):
    shutil.rmtree(_prefix(store_copy))
    _assert_caught(store_copy, "missing-data", fragment="does not exist")


def test_uncommitted_data_is_a_warning_not_an_error(store_copy):
    shutil.rmtree(store_copy / "commits" / SCENE)
    report = validate_store(store_copy)
    assert report.ok and report.scenes == 1
    assert [f.rule for f in report.findings] == ["uncommitted-scene"]


def test_not_a_store(tmp_path):
    with pytest.raises(NotAStoreError):
        validate_store(tmp_path)


def test_cli_exit_codes_and_json(store_copy, tmp_path):
    cli = str(Path(sys.executable).parent / "distillprep")
    ok = subprocess.run([cli, "validate", str(store_copy), "--json"], capture_output=True,
                        text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["valid"] is True
    shutil.rmtree(_prefix(store_copy) / "intrinsics")
    bad = subprocess.run([cli, "validate", str(store_copy)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "[missing-array] scene 'scene-0001', array intrinsics" in bad.stdout
    none = subprocess.run([cli, "validate", str(tmp_path / "nothing")], capture_output=True,
                          text=True)
    assert none.returncode == 2 and "not a distillprep store" in none.stderr
