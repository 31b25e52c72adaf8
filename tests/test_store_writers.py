"""Writers of one scene never destroy it: two `ingest --force` of one scene at once, many
rounds, locally and on S3 (the scene is there and valid after every round, the loser is
told with exit code 4); a scene id already holding another source's scene is refused
unless forced; new content under later stages' outputs only when asked for."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from store_helpers import teacher_arrays, write_teacher_stage

from distillprep.scenes.errors import EXIT_CONFLICT
from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.scenes.synthetic.generate import SynthConfig, generate
from distillprep.storage_schemas.errors import OutputsWouldGoStaleError, SceneSourceError
from distillprep.storage_schemas.ingest import IngestConfig, ingest, ingest_scene
from distillprep.storage_schemas.reader import iter_samples
from distillprep.storage_schemas.store import create_store, open_store
from distillprep.storage_schemas.validate import format_report, validate_store

CLI = str(Path(sys.executable).parent / "distillprep")


def _contents(location, options=None):
    return {(s["scene_id"], s["sample_index"]): s["rgb"].tobytes()
            for s in iter_samples(open_store(location, storage_options=options))}


# a few local rounds by default (each ~6 s); the slow set hammers longer, and on S3 (whose
# exclusive commits the default suite races in test_store_concurrency.py)
@pytest.mark.parametrize("backend, rounds", [
    ("local", 3), pytest.param("s3", 3, marks=pytest.mark.slow),
    pytest.param("local", 12, marks=pytest.mark.slow)])
def test_two_forced_ingests_of_one_scene_never_lose_it(backend, rounds, small_dataset,
                                                       small_store, tmp_path, s3):
    if backend == "local":
        url, options, extra = str(tmp_path / "s.zarr"), None, []
    else:
        url, options = f"s3://distillprep-test/writers-{tmp_path.name}", s3
        extra = ["--storage-option", f"endpoint_url={s3['endpoint_url']}",
                 "--storage-option", "key=testing", "--storage-option", "secret=testing"]
    command = [CLI, "ingest", str(small_dataset), "--out", url, "--scene", "scene-0001",
               "--force", "--json", *extra]
    assert subprocess.run(command, capture_output=True).returncode == 0
    reference = {k: v for k, v in _contents(small_store).items() if k[0] == "scene-0001"}
    for round_ in range(rounds):
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        outcomes = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        for code, out, err in outcomes:
            assert code in (0, EXIT_CONFLICT), err
            assert "Traceback" not in err
            if code == EXIT_CONFLICT:
                report = json.loads(out)
                assert "another writer committed it first" in report["conflicts"]["scene-0001"]
        assert any(code == 0 for code, *_ in outcomes), round_
        store = open_store(url, storage_options=options)
        assert store.scenes() == ["scene-0001"], round_
        report = validate_store(url, deep=True, storage_options=options)
        assert report.ok, format_report(report)
        assert _contents(url, options) == reference


def test_a_scene_id_holding_another_sources_scene_is_refused_unless_forced(small_dataset,
                                                                           tmp_path):
    other = generate(tmp_path / "other", "nuscenes", SynthConfig(
        scenes=1, frames=3, width=96, height=54, seed=8, supersample=1, workers=1))
    store = create_store(tmp_path / "s.zarr", "nuscenes", "v1.0-mini")
    read = read_nuscenes(small_dataset, scenes=["scene-0001"])
    config = IngestConfig("nuscenes", read.version)
    ingest_scene(store, read.scenes[0], config)
    theirs = read_nuscenes(other).scenes[0]
    assert theirs.scene_id == "scene-0001"
    with pytest.raises(SceneSourceError) as info:
        ingest_scene(store, theirs, config)
    message = str(info.value)
    assert read.scenes[0].metadata["scene_token"] in message
    assert theirs.metadata["scene_token"] in message and "--force" in message
    assert open_store(tmp_path / "s.zarr").scene_attrs("scene-0001").width == 192
    report = ingest(store, [theirs], config)  # the CLI's loop reports it and goes on
    assert report.failed and not report.written
    assert ingest_scene(store, theirs, config, force=True).status == "written"
    assert open_store(tmp_path / "s.zarr").scene_attrs("scene-0001").width == 96


def test_new_content_under_later_outputs_only_when_asked(store_copy, small_dataset, capsys):
    from distillprep.flows.cli import main

    store = open_store(store_copy, mode="a")
    n = store.scene_attrs("scene-0001").num_samples
    write_teacher_stage(store, "scene-0001", teacher_arrays(n, 2))
    read = read_nuscenes(small_dataset, scenes=["scene-0001"], sweeps=True)
    with pytest.raises(OutputsWouldGoStaleError, match="teacher outputs were made"):
        ingest_scene(store, read.scenes[0], IngestConfig("nuscenes", read.version, True))
    ingest_cli = ["ingest", str(small_dataset), "--out", str(store_copy), "--scene",
                  "scene-0001", "--sweeps", "--json"]
    assert main(ingest_cli) == 1
    failed = json.loads(capsys.readouterr().out)["failed"]["scene-0001"]
    assert "--replace-outputs" in failed
    assert "teacher" in open_store(store_copy).scene("scene-0001").stages()
    assert main([*ingest_cli, "--replace-outputs"]) == 0
    assert json.loads(capsys.readouterr().out)["stale"] == {"scene-0001": ["teacher"]}
    view = open_store(store_copy).scene("scene-0001")
    assert view.attrs.num_samples == 30 and set(view.stale) == {"teacher"}
    # the same content again is no change: nothing goes stale, nothing is asked
    write_teacher_stage(open_store(store_copy, mode="a"), "scene-0001", teacher_arrays(30, 2))
    assert main([*ingest_cli, "--force"]) == 0
    assert json.loads(capsys.readouterr().out)["stale"] == {}
