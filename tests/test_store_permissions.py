"""A store's files honour the umask (issue 28, item 6): what one account prepares, others
read as its umask allows. Temporary files are private while written (`mkstemp`) and given
the mode a plain `open()` would when moved into place."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from store_helpers import teacher_arrays, write_teacher_stage

NOBODY = 65534


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of everything under `root` (itself included)."""
    found = {".": stat.S_IMODE(root.lstat().st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def prepare(dataset: Path, out: Path) -> None:
    """Every kind of file the store stages write: an ingest, a teacher-stage commit made
    without a teacher, kept pieces of unfinished work and a quarantine record."""
    from distillprep.scenes.nuscenes import read_nuscenes
    from distillprep.storage_schemas.ingest import IngestConfig, ingest
    from distillprep.storage_schemas.partials import Pieces
    from distillprep.storage_schemas.quarantine import QuarantineRecord, write_quarantine
    from distillprep.storage_schemas.store import create_store

    read = read_nuscenes(dataset, scenes=["scene-0001"])
    store = create_store(out, "nuscenes", read.version)
    assert ingest(store, read.scenes, IngestConfig("nuscenes", read.version)).written
    attrs = store.scene_attrs("scene-0001")
    write_teacher_stage(store, "scene-0001", teacher_arrays(
        attrs.num_samples, 2, (attrs.height, attrs.width)))
    Pieces(store, "teacher_runs/partial/scene-0001/key").put("real-0", {"a": np.ones(3)})
    write_quarantine(store, QuarantineRecord(
        scene_id="scene-0002", step="ingest", kind="bad-data", error_type="SceneDataError",
        message="m", attempts=1, retryable=False, at=attrs.created))


def test_every_file_and_folder_gets_the_umasks_mode(small_dataset, tmp_path):
    """Under umask 022 everything is readable by all (0644 files, 0755 folders); under 077
    private (0600, 0700): what a plain open() / mkdir() would give."""
    from distillprep.scenes.io import atomic_file
    from distillprep.storage_schemas.export_distillnerf import write_atomic

    for mask, file_mode, folder_mode in [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]:
        out = tmp_path / f"umask-{mask:03o}"
        out.mkdir()
        with umask(mask):
            prepare(small_dataset, out / "store.zarr")
            with atomic_file(out / "atomic.bin") as f:
                f.write(b"x")
            write_atomic(out / "export.bin", lambda handle: handle.write(b"x"))
        found = modes(out / "store.zarr")
        wrong = {path: oct(mode) for path, mode in found.items()
                 if mode != (folder_mode if (out / "store.zarr" / path).is_dir()
                             else file_mode)}
        assert not wrong, f"umask {mask:#o}: modes other than a plain open()/mkdir()'s: {wrong}"
        kinds = {Path(p).name for p in found}
        assert {"zarr.json", "00000001.json", "real-0.npz", "scene-0002.json"} <= kinds
        assert any(p.endswith(".parquet") for p in found)
        for name in ("atomic.bin", "export.bin"):
            assert stat.S_IMODE((out / name).stat().st_mode) == file_mode, (mask, name)


CHILD = textwrap.dedent("""
    import json, os, sys
    from distillprep.storage_schemas.validate import validate_store
    # the interpreter lives where the other user may not read: every import is done first
    assert validate_store(sys.argv[1], deep=True).exit_code == 0
    os.setgroups([])
    os.setgid({uid})
    os.setuid({uid})
    report = validate_store(sys.argv[1], deep=True)
    print(json.dumps(report.to_json()))
    sys.exit(report.exit_code)
""")


def test_another_user_reads_a_store_prepared_under_umask_022(small_dataset):
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root (os.setuid)")
    # tmp_path's parents are private to this account: the store goes where others can go
    folder = Path(tempfile.mkdtemp(prefix="distillprep-shared-"))
    try:
        folder.chmod(0o755)
        with umask(0o022):
            prepare(small_dataset, folder / "store.zarr")
        proc = subprocess.run(
            [sys.executable, "-c", CHILD.format(uid=NOBODY), str(folder / "store.zarr")],
            capture_output=True, text=True, cwd=REPO, timeout=120)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert '"valid": true' in proc.stdout
