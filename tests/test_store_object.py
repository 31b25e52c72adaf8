"""The same store code against object stores: an S3-compatible server (moto) started on
loopback by the test, and fsspec's `memory://`."""

import pytest

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.storage_schemas.ingest import IngestConfig, ingest
from distillprep.storage_schemas.reader import iter_samples
from distillprep.storage_schemas.store import create_store, open_store
from distillprep.storage_schemas.validate import format_report, validate_store


def _samples(store):
    return {(s["scene_id"], s["sample_index"]): (s["rgb"].tobytes(), s["lidar_depth"].tobytes())
            for s in iter_samples(store)}


@pytest.fixture(scope="module")
def local_reference(small_store):
    return _samples(open_store(small_store))


@pytest.mark.parametrize("backend", ["s3", "memory"])
def test_round_trip_and_commit_on_object_stores(backend, s3, small_dataset, local_reference):
    if backend == "s3":
        url, options = "s3://distillprep-test/store-a", s3
    else:
        url, options = "memory://distillprep-test/store-a", None
    read = read_nuscenes(small_dataset)
    store = create_store(url, "nuscenes", read.version, storage_options=options)
    report = ingest(store, read.scenes, IngestConfig("nuscenes", read.version))
    assert report.written == ["scene-0001", "scene-0002"]
    reopened = open_store(url, storage_options=options)
    assert reopened.scenes() == ["scene-0001", "scene-0002"]
    assert _samples(reopened) == local_reference
    assert reopened.manifest().num_rows == 36
    result = validate_store(url, deep=True, storage_options=options)
    assert result.ok and not result.findings, format_report(result)
    # Re-writing a scene replaces it, same content; the superseded attempt stays for its
    # readers (SUPERSEDED_GRACE) and validate does not call it an orphan.
    first = store.head("scene-0001", "ingest")
    again = ingest(create_store(url, "nuscenes", read.version, storage_options=options),
                   read.scenes[:1], IngestConfig("nuscenes", read.version), force=True)
    assert again.written == ["scene-0001"]
    second = store.head("scene-0001", "ingest")
    assert [a for a in store.location.children("scenes/scene-0001/ingest")
            if a != "zarr.json"] == sorted([first.attempt, second.attempt])
    result = validate_store(url, storage_options=options)
    assert result.ok and not result.findings, format_report(result)
    assert _samples(open_store(url, storage_options=options)) == local_reference


def test_uncommitted_attempt_is_invisible_on_s3(s3, small_dataset):
    """No rename on S3: a scene whose data is written but whose commit object is not is
    absent for readers and reported; the next write commits it anew (the old attempt is
    left: nothing proves its writer is gone, and the validator reports it)."""
    url = "s3://distillprep-test/store-b"
    read = read_nuscenes(small_dataset)
    store = create_store(url, "nuscenes", read.version, storage_options=s3)
    ingest(store, read.scenes, IngestConfig("nuscenes", read.version))
    store.location.delete("commits/scene-0002")  # as if killed before the commit
    assert open_store(url, storage_options=s3).scenes() == ["scene-0001"]
    report = validate_store(url, storage_options=s3)
    assert report.ok and [f.rule for f in report.findings] == ["uncommitted-scene"]
    again = ingest(store, read.scenes, IngestConfig("nuscenes", read.version))
    assert again.written == ["scene-0002"] and again.skipped == ["scene-0001"]
    final = validate_store(url, deep=True, storage_options=s3)
    assert final.ok and [f.rule for f in final.findings] == ["orphan-attempt"], (
        format_report(final))


# ~25 s (three CLI processes against the moto server): slow set; the default suite keeps
# the S3 round trip, commits and races in-process.
@pytest.mark.slow
def test_cli_ingest_validate_inspect_on_s3(s3, small_dataset):
    import json
    import subprocess
    import sys
    from pathlib import Path

    cli = str(Path(sys.executable).parent / "distillprep")
    url = "s3://distillprep-test/cli"
    options = ["--storage-option", f"endpoint_url={s3['endpoint_url']}",
               "--storage-option", "key=testing", "--storage-option", "secret=testing"]
    ingest_run = subprocess.run([cli, "ingest", str(small_dataset), "--out", url, *options,
                                 "--json"], capture_output=True, text=True)
    assert ingest_run.returncode == 0, ingest_run.stderr
    assert json.loads(ingest_run.stdout)["written"] == ["scene-0001", "scene-0002"]
    check = subprocess.run([cli, "validate", url, *options, "--json"], capture_output=True,
                           text=True)
    assert check.returncode == 0 and json.loads(check.stdout)["scenes"] == 2
    summary = subprocess.run([cli, "inspect", url, *options, "--json"], capture_output=True,
                             text=True)
    assert summary.returncode == 0 and json.loads(summary.stdout)["samples"] == 36
