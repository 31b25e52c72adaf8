"""`distillprep prepare`: the whole preparation as one Prefect flow (threads, Prefect's
local API, no server started by hand): every stage once, then nothing twice; a changed
teacher config reruns the teacher and what depends on it, nothing before; a scene with
corrupted input is quarantined while the others complete; transient errors are retried,
permanent ones are not."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from distillprep.flows.cli import main
from distillprep.flows.failpoints import ENV as FAILPOINTS
from distillprep.storage_schemas.quarantine import quarantined, read_quarantine
from distillprep.storage_schemas.store import open_store
from distillprep.storage_schemas.validate import format_report, validate_store

CONFIG = Path(__file__).parent / "data" / "prepare_tiny.yaml"
SCENES = ["scene-0001", "scene-0002"]
STAGES = {"ingest", "teacher", "dino_features", "clip_features"}


def prepare(dataroot: Path, store: Path, *extra: str) -> tuple[int, dict]:
    """Run `distillprep prepare ... --json` in this process: (exit code, summary)."""
    out = io.StringIO()
    config = [] if "--config" in extra else ["--config", str(CONFIG)]
    with contextlib.redirect_stdout(out):
        code = main(["prepare", str(dataroot), "--out", str(store), *config, "--json", *extra])
    return code, json.loads(out.getvalue()) if out.getvalue().strip() else {}


def steps_of(summary: dict, scene: str) -> dict[str, dict]:
    return next(s for s in summary["scenes"] if s["scene_id"] == scene)["steps"]


def statuses(summary: dict) -> dict[str, str]:
    return {s["scene_id"]: s["status"] for s in summary["scenes"]}


def _copy(prepared, tmp_path) -> Path:
    root = prepared[0]
    shutil.copytree(root / "store.zarr", tmp_path / "store.zarr")
    shutil.copytree(root / "store.zarr.work", tmp_path / "store.zarr.work")
    return tmp_path / "store.zarr"


def test_every_stage_runs_once_and_a_second_run_finds_everything_done(prepared,
                                                                      small_dataset):
    root, code, summary = prepared
    assert code == 0, summary
    assert summary["state"] == "Completed" and statuses(summary) == dict.fromkeys(SCENES, "done")
    assert summary["prefect_startup_s"] > 0
    for scene in SCENES:
        steps = steps_of(summary, scene)
        assert set(steps) == {"ingest", "teacher-fit", "teacher-render",
                              "features-dinov2-vits14", "features-clip-vitb16", "validate"}
        assert all(s["status"] == "done" for s in steps.values()), steps
        assert steps["teacher-fit"]["fit"] == "fitted" and steps["teacher-fit"]["steps"] == 20
        assert steps["teacher-render"]["virtual_views"] > 0
    store = open_store(root / "store.zarr")
    for scene in SCENES:
        assert set(store.scene(scene).stages()) == STAGES
    report = validate_store(root / "store.zarr", deep=True)
    assert report.ok and {f.rule for f in report.findings} == {"random-weights"}, (
        format_report(report))

    sequences = {s: store.sequences(s) for s in SCENES}
    code, again = prepare(small_dataset, root / "store.zarr")
    assert code == 0 and statuses(again) == dict.fromkeys(SCENES, "skipped"), again
    for scene in SCENES:
        assert {k: v["status"] for k, v in steps_of(again, scene).items()} == {
            "ingest": "skipped", "teacher-fit": "skipped", "teacher-render": "skipped",
            "features-dinov2-vits14": "skipped", "features-clip-vitb16": "skipped",
            "validate": "done"}
    assert {s: store.sequences(s) for s in SCENES} == sequences  # nothing written


def test_a_longer_teacher_reruns_the_teacher_and_what_depends_on_it(prepared, small_dataset,
                                                                    tmp_path):
    store = _copy(prepared, tmp_path)
    before = {s: open_store(store).sequences(s) for s in SCENES}
    code, summary = prepare(small_dataset, store, "--scene", "scene-0001",
                            "--teacher-steps", "25")
    assert code == 0, summary
    steps = steps_of(summary, "scene-0001")
    assert steps["ingest"]["status"] == "skipped"
    # the checkpoint is keyed to what is fitted, not how long: the fit resumes it
    assert steps["teacher-fit"]["fit"] == "resumed" and steps["teacher-fit"]["steps_now"] == 5
    assert steps["teacher-render"]["status"] == "done"
    assert steps["features-dinov2-vits14"]["status"] == "done"  # its inputs changed
    after = open_store(store)
    assert after.sequences("scene-0001")["ingest"] == before["scene-0001"]["ingest"]
    assert len(after.sequences("scene-0001")["teacher"]) == 2
    assert after.sequences("scene-0002") == before["scene-0002"]  # not named: untouched
    assert validate_store(store).ok


# ~45 s on 2 cores (three whole flows): slow set. The default suite keeps the store's own
# quarantine records (test_store_schema.py) and every damaged input named (test_damage.py).
@pytest.mark.slow
def test_a_scene_with_corrupted_input_is_quarantined_and_the_others_complete(dataset_copy,
                                                                              tmp_path):
    image = sorted((dataset_copy / "samples" / "CAM_FRONT").glob("*.jpg"))[-1]
    assert "scene-0002" in _scene_of(dataset_copy, image.name)
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 3])  # a truncated JPEG
    store = tmp_path / "store.zarr"
    code, summary = prepare(dataset_copy, store)
    assert code == 1 and summary["state"] == "PartialSuccess", summary
    assert statuses(summary) == {"scene-0001": "done", "scene-0002": "quarantined"}
    bad = next(s for s in summary["scenes"] if s["scene_id"] == "scene-0002")
    assert bad["failed_step"] == "ingest" and image.name in bad["error"]
    record = read_quarantine(open_store(store), "scene-0002")
    assert record.step == "ingest" and record.kind == "bad-data" and not record.retryable
    assert record.attempts == 1 and image.name in record.message  # bad data: no retry
    assert set(open_store(store).scenes()) == {"scene-0001"}
    assert validate_store(store).ok

    code, again = prepare(dataset_copy, store)  # left alone unless asked
    assert code == 1 and statuses(again) == {"scene-0001": "skipped",
                                             "scene-0002": "quarantined-before"}
    assert steps_of(again, "scene-0002") == {}
    image.write_bytes(good)
    code, retried = prepare(dataset_copy, store, "--retry-quarantined")
    assert code == 0 and statuses(retried) == {"scene-0001": "skipped", "scene-0002": "done"}
    assert quarantined(open_store(store)) == {}


def _scene_of(dataroot: Path, filename: str) -> str:
    """The scene name of a sample file, through the nuScenes tables."""
    version = next(dataroot.glob("v1.0-*"))
    tables = {n: json.loads((version / f"{n}.json").read_text())
              for n in ("sample_data", "sample", "scene")}
    data = next(d for d in tables["sample_data"] if d["filename"].endswith(filename))
    sample = next(s for s in tables["sample"] if s["token"] == data["sample_token"])
    return next(s["name"] for s in tables["scene"] if s["token"] == sample["scene_token"])


def test_transient_errors_are_retried_and_permanent_ones_are_not(prepared, small_dataset,
                                                                 tmp_path, monkeypatch):
    store = _copy(prepared, tmp_path)
    monkeypatch.setenv(FAILPOINTS, "teacher-render@scene-0001=transient*1;"
                                   "features@scene-0002=bad-data*1")
    code, summary = prepare(small_dataset, store)
    assert code == 1 and statuses(summary) == {"scene-0001": "skipped",
                                               "scene-0002": "quarantined"}, summary
    record = read_quarantine(open_store(store), "scene-0002")
    assert record.step == "features-dinov2-vits14" and record.attempts == 1
    assert record.kind == "bad-data" and "failpoint features=bad-data" in record.message

    # a transient error that outlives the retries (1 in the config) is quarantined too
    monkeypatch.setenv(FAILPOINTS, "ingest@scene-0001=transient*5")
    code, summary = prepare(small_dataset, store, "--retry-quarantined")
    assert statuses(summary) == {"scene-0001": "quarantined", "scene-0002": "skipped"}
    record = read_quarantine(open_store(store), "scene-0001")
    assert record.retryable and record.kind == "transient" and record.attempts == 2


def test_the_config_file_is_parsed_strictly(tmp_path):
    from distillprep.flows.prepare_config import load_prepare_config
    from distillprep.scenes.errors import ConfigError

    toml = tmp_path / "prepare.toml"
    toml.write_text('device_slots = 2\n[teacher]\nsteps = 7\n[teacher.fit]\npixel_stride = 3\n'
                    '[[features]]\nmodel = "clip-vitb16"\nchannels = 8\nweights = "/w/c.pth"\n')
    config = load_prepare_config(toml)
    assert config.device_slots == 2 and config.teacher.steps == 7
    assert config.teacher.fit.pixel_stride == 3 and config.teacher.fit.steps == 2000
    (model,) = config.features
    assert (model.config.model, model.config.channels, model.weights) == (
        "clip-vitb16", 8, "/w/c.pth")
    for text, named in [("teacher: {stpes: 3}", "stpes"),
                        ("features: [{model: dinov2-vits14}, {model: dinov2-vitb14}]",
                         "one model per family"),
                        ("features: [{channels: 3}]", "names no model"),
                        ("device_slots: 0", "device_slots"),
                        ("teacher: [1, 2", "not valid yaml")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=named):
            load_prepare_config(bad)


def test_feature_weights_that_cannot_be_found_are_refused_before_anything_runs(
        small_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISTILLPREP_WEIGHTS_DIR", raising=False)
    code = main(["prepare", str(small_dataset), "--out", str(tmp_path / "store.zarr")])
    assert code == 2
    error = capsys.readouterr().err
    assert "dinov2-vitb14" in error and "--random-init-features" in error
    assert "weights:" in error and "DISTILLPREP_WEIGHTS_DIR" in error
    assert not (tmp_path / "store.zarr").exists()
