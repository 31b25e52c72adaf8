"""A damage table: stores damaged in one scene the ways disks, networks and people damage
them. For each, `validate` (plain or deep, text and --json) exits 1 with a finding that
names the scene, the array and the file, prints no traceback, and still checks the other
scene; readers that meet the damage (inspect, export) fail with a message that names it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from store_helpers import teacher_arrays, write_teacher_stage

from distillprep.storage_schemas.store import open_store

CLI = str(Path(sys.executable).parent / "distillprep")
SCENE = "scene-0001"


@pytest.fixture(scope="module")
def teacher_store(small_store, tmp_path_factory):
    """The small store with teacher outputs in both scenes (read-only: copy to damage)."""
    path = Path(shutil.copytree(small_store, tmp_path_factory.mktemp("damage") / "s.zarr"))
    store = open_store(path, mode="a")
    for scene in store.scenes():
        n = store.scene_attrs(scene).num_samples
        write_teacher_stage(store, scene, teacher_arrays(n, 4, size=(54, 96)))
    return path


def _group(root: Path, stage: str, scene=SCENE) -> Path:
    head = sorted((root / "commits" / scene / stage).glob("*.json"))[-1]
    return root / "scenes" / scene / stage / json.loads(head.read_text())["attempt"]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json")


def _garble(path: Path, at: int = 0, length: int = 64) -> None:
    data = bytearray(path.read_bytes())
    end = min(len(data), at + length) if at >= 0 else len(data)
    start = at if at >= 0 else max(0, len(data) + at)
    data[start:end] = bytes(255 - b for b in data[start:end])
    path.write_bytes(bytes(data))


def _flip_bit_in_chunk(root: Path, sample: int = 4) -> None:
    """Flip one bit in the middle of rgb_jpeg's chunk of `sample` (caught by its crc32c;
    before chunks carried one, most such flips read as an altered image)."""
    shard = _files(_group(root, "ingest") / "rgb_jpeg")[0]
    data = bytearray(shard.read_bytes())
    chunks = json.loads((_group(root, "ingest") / "rgb_jpeg" / "zarr.json").read_text())
    per_shard = chunks["chunk_grid"]["configuration"]["chunk_shape"][0]
    index = np.frombuffer(bytes(data[-(16 * per_shard + 4):-4]), "<u8").reshape(-1, 2)
    offset, length = (int(v) for v in index[sample])
    data[offset + length // 2] ^= 0x04
    shard.write_bytes(bytes(data))


def _nan_teacher_depth(root: Path) -> None:
    array = zarr.open_array(str(_group(root, "teacher") / "teacher_depth"), mode="r+")
    block = array[2]
    block[3, 3] = np.nan
    array[2] = block


DAMAGES = {
    # name: (damage(root), deep, rule, array, fragment of the file named)
    "small-table-chunk": (lambda r: _garble(_files(_group(r, "ingest") / "intrinsics")[0]),
                          False, "unreadable", "intrinsics", "intrinsics"),
    "array-metadata-not-json": (
        lambda r: (_group(r, "ingest") / "lidar_depth" / "zarr.json").write_text("{nope"),
        False, "unreadable", "lidar_depth", "lidar_depth"),
    "stage-metadata-not-json": (
        lambda r: (_group(r, "teacher") / "zarr.json").write_text("]"), False, "unreadable",
        None, "teacher"),
    "commit-record-not-json": (
        lambda r: sorted((r / "commits" / SCENE / "teacher").glob("*.json"))[-1].write_text(
            "{"), False, "commit-record", None, "commits/scene-0001/teacher/00000001.json"),
    "manifest-part-garbled": (
        lambda r: _garble(next((r / "manifest" / SCENE / "teacher").glob("*.parquet")), 4,
                          400), False, "manifest-checksum", None, "manifest/scene-0001/teacher"),
    "truncated-shard": (
        lambda r: (lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]))(
            _files(_group(r, "ingest") / "rgb_jpeg")[0]), True, "unreadable-chunk", "rgb_jpeg",
        "rgb_jpeg"),
    "garbled-shard-index": (lambda r: _garble(_files(_group(r, "teacher") / "teacher_depth")[0],
                                              -40, 40),
                            True, "unreadable-chunk", "teacher_depth", "teacher_depth"),
    "flipped-bit-in-chunk": (_flip_bit_in_chunk, True, "unreadable-chunk", "rgb_jpeg",
                             "chunk (4, 0) does not match its crc32c checksum"),
    "nan-in-teacher-depth": (_nan_teacher_depth, True, "finite", "teacher_depth", None),
    "attempt-deleted": (lambda r: shutil.rmtree(_group(r, "teacher")), False, "missing-data",
                        None, "scenes/scene-0001/teacher"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_every_damage_is_named_and_the_rest_still_checked(damage, teacher_store, tmp_path):
    root = Path(shutil.copytree(teacher_store, tmp_path / "s.zarr"))
    harm, deep, rule, array, fragment = DAMAGES[damage]
    harm(root)
    flags = ["--deep"] if deep else []
    text = subprocess.run([CLI, "validate", str(root), *flags], capture_output=True, text=True)
    assert text.returncode == 1, text.stdout + text.stderr
    assert "Traceback" not in text.stderr + text.stdout
    assert f"[{rule}] scene '{SCENE}'" in text.stdout, text.stdout
    as_json = subprocess.run([CLI, "validate", str(root), *flags, "--json"],
                             capture_output=True, text=True)
    assert as_json.returncode == 1 and "Traceback" not in as_json.stderr
    report = json.loads(as_json.stdout)
    hits = [f for f in report["findings"] if f["rule"] == rule and f["severity"] == "error"]
    assert hits and all(f["scene"] == SCENE for f in hits), report["findings"]
    if array is not None:
        assert any(f["array"] == array for f in hits), hits
    if fragment is not None:
        assert any(fragment in f["message"] for f in hits), hits
    # the other scene is still checked, and found sound
    assert not [f for f in report["findings"] if f["scene"] == "scene-0002"]
    assert report["scenes"] >= 1


def test_readers_that_meet_damage_name_it(teacher_store, tmp_path):
    root = Path(shutil.copytree(teacher_store, tmp_path / "s.zarr"))
    (_group(root, "ingest") / "lidar_depth" / "zarr.json").write_text("{nope")
    inspect = subprocess.run([CLI, "inspect", str(root)], capture_output=True, text=True)
    assert inspect.returncode == 1 and "Traceback" not in inspect.stderr
    assert "scene 'scene-0001', array lidar_depth" in inspect.stderr
    assert "lidar_depth/zarr.json is unreadable" in inspect.stderr
    root = Path(shutil.copytree(teacher_store, tmp_path / "t.zarr"))
    _garble(_files(_group(root, "teacher") / "teacher_depth")[0], -40, 40)
    export = subprocess.run([CLI, "export", "distillnerf", str(root), str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert export.returncode == 1 and "Traceback" not in export.stderr
    assert "scene 'scene-0001', array teacher_depth" in export.stderr
    assert "cannot read the stored bytes" in export.stderr
    root = Path(shutil.copytree(teacher_store, tmp_path / "u.zarr"))
    _nan_teacher_depth(root)
    export = subprocess.run([CLI, "export", "distillnerf", str(root), str(tmp_path / "out2")],
                            capture_output=True, text=True)
    assert export.returncode == 1 and "Traceback" not in export.stderr
    assert "scene 'scene-0001', array teacher_depth, view 2" in export.stderr
    assert "validate --deep" in export.stderr
    none = subprocess.run([CLI, "validate", str(tmp_path / "nothing"), "--json"],
                          capture_output=True, text=True)
    assert none.returncode == 2 and json.loads(none.stdout)["valid"] is False
