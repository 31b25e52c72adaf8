"""Faults map to their exit codes (issue 28, item 7, the store's side): a full disk is the
transient StoreIOError (exit 3) naming what was being written, and the failed attempt is
removed; a cleanup that cannot remove something is a warning, never a failure of a commit
that landed."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from pathlib import Path

import pytest
from store_helpers import write_scene


def leftovers(store: Path, scene_id: str) -> list[str]:
    """What of a scene's failed ingest is in the store: its attempt folders, manifest
    parts, commit records and temporary files (its group's zarr.json files are no
    attempt's: they name the scene's folders and stay)."""
    found = [str(p.relative_to(store)) for p in store.rglob("*")
             if p.name.endswith((".tmp", ".partial"))]
    stage = store / "scenes" / scene_id / "ingest"
    found += [str(p.relative_to(store)) for p in stage.glob("*") if p.name != "zarr.json"]
    found += [str(p.relative_to(store)) for p in (store / "manifest" / scene_id).rglob("*")
              if p.is_file()]
    found += [str(p.relative_to(store)) for p in (store / "commits" / scene_id).rglob("*")
              if p.is_file()]
    return found


@pytest.fixture
def tmpfs(tmp_path):
    """A 6 MiB tmpfs at tmp_path/mnt (root and a kernel that lets us mount; else skip)."""
    folder = tmp_path / "mnt"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(folder)],
                              capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def test_disk_full_on_a_real_tmpfs_exits_3_and_leaves_nothing(small_dataset, tmpfs, capsys):
    from distillprep.flows.cli import main
    from distillprep.scenes.nuscenes import read_nuscenes
    from distillprep.storage_schemas.ingest import IngestConfig, ingest
    from distillprep.storage_schemas.store import create_store
    from distillprep.storage_schemas.validate import validate_store

    out = tmpfs / "store.zarr"
    read = read_nuscenes(small_dataset)
    config = IngestConfig("nuscenes", read.version)
    first, second = read.scenes
    assert ingest(create_store(out, "nuscenes", read.version), [first], config).written
    ballast = tmpfs / "ballast"  # the disk is full but for 128 KiB: less than a scene
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    ballast.write_bytes(b"\0" * max(0, free - 128 * 1024))

    code = main(["ingest", str(small_dataset), "--out", str(out), "--scene", second.scene_id,
                 "--json"])
    err = capsys.readouterr().err
    assert code == 3, err[-3000:]
    assert "Traceback" not in err
    assert "the disk is full" in err and f"scenes/{second.scene_id}/" in err
    assert leftovers(out, second.scene_id) == []

    ballast.unlink()  # the space back, the store is as before and the retry succeeds
    report = validate_store(out, deep=True)
    assert report.exit_code == 0 and report.to_json()["scenes"] == 1, report.to_json()
    assert ingest(create_store(out, "nuscenes", read.version), [second], config).written


def test_disk_full_in_zarrs_own_writes_is_transient_and_removes_the_attempt(
        tmp_path, monkeypatch):
    """Without a mount: ENOSPC from the OS call that puts each of zarr's metadata files
    in place (a rename finds no room for the directory entry)."""
    from distillprep.scenes.errors import EXIT_TRANSIENT
    from distillprep.storage_schemas.errors import StoreIOError
    from distillprep.storage_schemas.store import create_store
    from distillprep.storage_schemas.validate import validate_store

    store = create_store(tmp_path / "store.zarr", "synthetic", "v0")
    write_scene(store, "a")
    before = leftovers(tmp_path / "store.zarr", "a")
    replace = os.replace

    def full(src, dst, *args, **kwargs):
        if str(src).endswith(".partial"):  # zarr's local store's atomic writes
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StoreIOError) as caught:
        write_scene(store, "a", seed=1)
    monkeypatch.undo()
    assert caught.value.exit_code == EXIT_TRANSIENT and caught.value.retryable
    assert "the disk is full" in str(caught.value) and "scenes/a/ingest/" in str(caught.value)
    assert leftovers(tmp_path / "store.zarr", "a") == before  # the first commit alone
    assert validate_store(tmp_path / "store.zarr").exit_code == 0


def test_the_zarrs_pipelines_full_disk_is_a_store_io_error():
    """The zarrs (Rust) pipeline reports a full disk as a RuntimeError, not an OSError."""
    from distillprep.storage_schemas.backend import Location

    location = Location("/nowhere")
    error = location.io_error("write", "scenes/a/ingest/x/lidar_depth",
                              RuntimeError("No space left on device (os error 28)"))
    assert error is not None and error.exit_code == 3
    assert "the disk is full" in str(error) and "scenes/a/ingest/x/lidar_depth" in str(error)
    assert location.io_error("write", "k", RuntimeError("a bug")) is None
    assert location.io_error("write", "k", PermissionError(errno.EACCES, "no")) is None


def test_a_symlinked_attempt_is_a_warning_and_later_commits_land(small_dataset, tmp_path,
                                                                capsys, caplog):
    """`ingest --force` over a store whose stage folder holds an attempt that is a symbolic
    link: the link is neither followed nor removed, a warning names it (the CLI prints it
    on stderr), and this commit and the next land."""
    from distillprep.flows.cli import main
    from distillprep.scenes.nuscenes import read_nuscenes
    from distillprep.storage_schemas.ingest import IngestConfig, ingest
    from distillprep.storage_schemas.store import create_store, open_store

    out = tmp_path / "store.zarr"
    read = read_nuscenes(small_dataset, scenes=["scene-0001"])
    assert ingest(create_store(out, "nuscenes", read.version), read.scenes,
                  IngestConfig("nuscenes", read.version)).written
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not the store's")
    # an attempt no commit names, started long ago (so cleanup removes it), as a link
    link = out / "scenes" / "scene-0001" / "ingest" / "20000101T000000-deadbeef"
    link.symlink_to(elsewhere, target_is_directory=True)

    for sequence in (2, 3):
        caplog.clear()
        code = main(["ingest", str(small_dataset), "--out", str(out), "--scene", "scene-0001",
                     "--force", "--json"])
        assert code == 0, capsys.readouterr()
        assert "FAILED" not in capsys.readouterr().out
        [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "symbolic link" in warning and "left in place" in warning
        assert "scenes/scene-0001/ingest/20000101T000000-deadbeef" in warning
        assert open_store(out).head("scene-0001", "ingest").sequence == sequence
    assert (elsewhere / "keep.txt").read_text() == "not the store's" and link.is_symlink()
