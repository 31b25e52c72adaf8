"""Crash safety: a writer killed with SIGKILL in the middle of a scene leaves a valid store
in which the killed scene is absent or complete; nothing committed before is lost; a
re-run completes the work."""

import json
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.storage_schemas import store as store_module
from distillprep.storage_schemas.backend import Location, is_temp_name
from distillprep.storage_schemas.ingest import IngestConfig, ingest
from distillprep.storage_schemas.reader import iter_samples
from distillprep.storage_schemas.store import create_store, open_store
from distillprep.storage_schemas.validate import format_report, validate_store

_CHILD = """
import json, sys
from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.storage_schemas.backend import Location, is_temp_name
from distillprep.storage_schemas.ingest import IngestConfig, ingest
from distillprep.storage_schemas.store import create_store
read = read_nuscenes(sys.argv[1])
store = create_store(sys.argv[2], "nuscenes", read.version, json.loads(sys.argv[4]))
print("ready", flush=True)
ingest(store, read.scenes, IngestConfig("nuscenes", read.version),
       force=sys.argv[3] == "force")
"""


def _attempts(store, scene: str) -> set[str]:
    loc = store if isinstance(store, Location) else Location(store)
    return set(loc.children(f"scenes/{scene}/ingest")) - {"zarr.json"}


def _new_attempt(before: set[str], scene: str):
    return lambda loc: bool(_attempts(loc, scene) - before)


def _new_array(before: set[str], scene: str, array: str):
    def ready(loc):
        return any(array in loc.children(f"scenes/{scene}/ingest/{a}")
                   for a in _attempts(loc, scene) - before)
    return ready


def _new_manifest(before: set[str], scene: str):
    def ready(loc):
        parts = {p[:-8] for p in loc.children(f"manifest/{scene}/ingest")
                 if p.endswith(".parquet")}
        return bool(parts - before)
    return ready


def _kill_when(dataset: Path, store, force: bool, ready, storage_options=None) -> bool:
    """Run a writer and SIGKILL it as soon as `ready(location)` holds; True if it was
    killed before finishing."""
    loc = Location(store, storage_options=storage_options)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(dataset), str(store),
                             "force" if force else "resume", json.dumps(storage_options or {})],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if ready(loc):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0005)
    proc.wait()
    return False


def _contents(store, storage_options=None) -> dict:
    return {(s["scene_id"], s["sample_index"]): (s["rgb"].tobytes(), s["lidar_depth"].tobytes(),
                                                 s["cam_to_world"].tobytes())
            for s in iter_samples(open_store(store, storage_options=storage_options))}


@pytest.fixture(scope="module")
def reference(small_store):
    return _contents(small_store)


@pytest.mark.parametrize("point", ["attempt-created", "mid-arrays", "manifest-written"])
def test_killed_rewrite_keeps_every_commit(small_store, small_dataset, tmp_path, reference,
                                           point):
    store = Path(shutil.copytree(small_store, tmp_path / "s.zarr"))
    commits = {str(p.relative_to(store)): p.read_bytes()
               for p in (store / "commits").rglob("*.json")}
    scene = "scene-0002"  # the second scene: scene-0001 gets rewritten whole first
    before = _attempts(store, scene)
    ready = {"attempt-created": _new_attempt(before, scene),
             "mid-arrays": _new_array(before, scene, "lidar_depth"),
             "manifest-written": _new_manifest(before, scene)}[point]
    assert _kill_when(small_dataset, store, True, ready)
    report = validate_store(store, deep=True)
    assert report.ok, format_report(report)
    assert report.scenes == 2
    assert _contents(store) == reference  # old or new commit, never a mix, nothing lost
    head = sorted((store / "commits" / scene / "ingest").glob("*.json"))[-1]
    record = json.loads(head.read_text())
    assert (store / "scenes" / scene / "ingest" / record["attempt"]).is_dir()
    # Killed inside the commit's own write, it left at most a new record (the rewrite
    # committed) or a temporary file: every earlier record is there, unchanged.
    after = {str(p.relative_to(store)): p.read_bytes()
             for p in (store / "commits").rglob("*.json") if not is_temp_name(p.name)}
    assert all(after[key] == data for key, data in commits.items())
    assert len(after) - len(commits) in (0, 1)


@pytest.mark.parametrize("point", ["attempt-created", "mid-arrays", "manifest-written"])
def test_killed_first_write_leaves_scene_absent_and_rerun_completes(small_dataset, tmp_path,
                                                                    reference, point,
                                                                    monkeypatch):
    store = tmp_path / "s.zarr"
    read = read_nuscenes(small_dataset, scenes=["scene-0001"])
    ingest(create_store(store, "nuscenes", read.version), read.scenes,
           IngestConfig("nuscenes", read.version))
    scene = "scene-0002"
    ready = {"attempt-created": _new_attempt(set(), scene),
             "mid-arrays": _new_array(set(), scene, "lidar_depth"),
             "manifest-written": _new_manifest(set(), scene)}[point]
    assert _kill_when(small_dataset, store, False, ready)
    report = validate_store(store, deep=True)
    assert report.ok, format_report(report)
    scenes = open_store(store).scenes()
    assert scenes in (["scene-0001"], ["scene-0001", "scene-0002"])
    if scenes == ["scene-0001"]:
        assert {f.rule for f in report.findings} <= {"uncommitted-scene", "temp-file"}
    # The re-run skips what is committed and completes the rest; the killed writer's
    # attempt is left alone (a writer never deletes what it cannot prove is abandoned)
    # until it is older than any live writer can be.
    reread = read_nuscenes(small_dataset)
    again = ingest(create_store(store, "nuscenes", reread.version), reread.scenes,
                   IngestConfig("nuscenes", reread.version))
    assert again.skipped[0] == "scene-0001"
    assert open_store(store).scenes() == ["scene-0001", "scene-0002"]
    final = validate_store(store, deep=True)
    assert final.ok and {f.rule for f in final.findings} <= {"orphan-attempt", "temp-file"}, (
        format_report(final))
    assert _contents(store) == reference
    monkeypatch.setattr(store_module, "ABANDONED_AFTER", timedelta(0))
    ingest(create_store(store, "nuscenes", reread.version), reread.scenes,
           IngestConfig("nuscenes", reread.version), force=True)
    final = validate_store(store, deep=True)
    assert final.ok and not final.findings, format_report(final)
    # the killed writer's attempt is gone; the superseded commit's stays for its readers
    assert np.all([len(_attempts(store, s)) == 2 for s in ("scene-0001", "scene-0002")])
    monkeypatch.setattr(store_module, "SUPERSEDED_GRACE", timedelta(0))
    ingest(create_store(store, "nuscenes", reread.version), reread.scenes,
           IngestConfig("nuscenes", reread.version), force=True)
    assert np.all([len(_attempts(store, s)) == 1 for s in ("scene-0001", "scene-0002")])


def test_killed_writer_on_an_object_store(s3, small_dataset, reference):
    """The same guarantee without rename: SIGKILL mid-scene against the S3 server."""
    url = "s3://distillprep-test/crash"
    read = read_nuscenes(small_dataset, scenes=["scene-0001"])
    ingest(create_store(url, "nuscenes", read.version, storage_options=s3), read.scenes,
           IngestConfig("nuscenes", read.version))
    assert _kill_when(small_dataset, url, False, _new_array(set(), "scene-0002", "lidar_depth"),
                      storage_options=s3)
    report = validate_store(url, deep=True, storage_options=s3)
    assert report.ok, format_report(report)
    assert open_store(url, storage_options=s3).scenes()[0] == "scene-0001"
    reread = read_nuscenes(small_dataset)
    ingest(create_store(url, "nuscenes", reread.version, storage_options=s3), reread.scenes,
           IngestConfig("nuscenes", reread.version))
    final = validate_store(url, deep=True, storage_options=s3)
    assert final.ok and {f.rule for f in final.findings} <= {"orphan-attempt"}, (
        format_report(final))
    assert _contents(url, s3) == reference
