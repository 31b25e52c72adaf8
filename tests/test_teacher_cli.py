"""`distillprep teacher fit / render` end to end on a tiny scene: fit -> checkpoint ->
render -> store -> validate, resuming (also after SIGKILL), and the refusals."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from test_teacher_fit import TINY

from distillprep.flows.cli import main
from distillprep.storage_schemas.reader import SceneReader
from distillprep.storage_schemas.store import open_store
from distillprep.teachers.errors import CheckpointError
from distillprep.teachers.nerf.checkpoint import check_matches, load_checkpoint
from distillprep.teachers.nerf.config_io import to_dict

SCENE = "scene-0001"


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(to_dict(TINY)))
    return path


def _fit(store, ckpt, config, *extra):
    return main(["teacher", "fit", str(store), "--scene", SCENE, "--out", str(ckpt),
                 "--config", str(config), "--holdout", "0", "--json", *extra])


def test_fit_render_store_validate(sweeps_store_copy, tiny_config, tmp_path, capsys):
    """From a store whose dataset no longer exists: fit, render, validate."""
    torch.set_num_threads(2)
    ckpt, store_path = tmp_path / "teacher.pt", sweeps_store_copy
    # 450 steps: the fit spreads them over the 2 sweep frames as well as the 3 keyframes
    assert _fit(store_path, ckpt, tiny_config, "--steps", "450") == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["step"] == 450 and not fitted["resumed"]
    assert fitted["frames"] == [0, 1, 2, 3, 4]
    render_config = tmp_path / "render.json"
    render_config.write_text(json.dumps({"scale": 0.5, "virtual": {"resolution_scale": 0.5}}))
    render = ["teacher", "render", str(store_path), "--checkpoint", str(ckpt),
              "--render-config", str(render_config), "--json"]
    assert main(render) == 0
    rendered = json.loads(capsys.readouterr().out)
    assert rendered["status"] == "written" and rendered["rendered_samples"] == 18
    assert main(render) == 0  # the same teacher again: nothing to do
    assert json.loads(capsys.readouterr().out)["status"] == "skipped"
    assert main(["validate", str(store_path), "--deep"]) == 0
    capsys.readouterr()

    store = open_store(store_path)
    view = store.scene(SCENE)
    manifest = store.manifest([SCENE])
    keyframe = np.array(manifest.column("is_keyframe").to_pylist())
    assert len(keyframe) == 30 and keyframe.sum() == 18  # 3 keyframes, 2 sweep frames
    depth = view["teacher_depth"][...].astype(np.float32)
    assert depth.shape == (30, 54, 96)
    assert not depth[~keyframe].any()  # sweep images are not rendered by default
    views = view["virtual_rgb"].shape[0]
    counts = rendered["virtual_views"]
    assert views == counts["kept"] + counts["moved"] == 3 * 18 - counts["dropped"]
    assert set(view["virtual_source_sample"][...]) <= set(np.flatnonzero(keyframe))
    record = view.provenance("teacher")
    assert record.steps == 450 and record.backend in ("torch", "cpp")
    assert record.fitted_frames == [0, 1, 2, 3, 4] and record.heldout_frames == []
    assert record.config["fit"]["camera_rays"] == TINY.camera_rays
    # the teacher's dense depth agrees with the scene's LiDAR where LiDAR landed, at the
    # half-resolution pixel covering each return (not a shape check: values)
    reader = SceneReader(store, SCENE)
    errors = []
    for i in np.flatnonzero(keyframe):
        lidar = reader.read(int(i))["lidar_depth"].astype(np.float32)
        rows, cols = np.nonzero(lidar)
        pred = depth[i][rows // 2, cols // 2]  # pixel u's centre lands in half-res pixel u // 2
        errors.append(np.abs(pred - lidar[rows, cols]) / lidar[rows, cols])
    median = float(np.median(np.concatenate(errors)))
    assert median < 0.15, median
    assert manifest.column("has_teacher_depth").to_pylist() == keyframe.tolist()
    scores = manifest.column("teacher_psnr").to_pylist()
    rendered = [s for s, k in zip(scores, keyframe, strict=True) if k]
    assert all(s is not None and s > 14.0 for s in rendered), scores
    assert all(s is None for s, k in zip(scores, keyframe, strict=True) if not k)


def test_resume_equals_an_uninterrupted_fit(sweeps_store, tmp_path, capsys):
    """With a constant learning rate, a fit extended in parts (--steps 12, then 30) is the
    fit run whole (a decaying schedule depends on --steps: see the killed-fit test)."""
    constant = tmp_path / "constant.json"
    constant.write_text(json.dumps(to_dict(dataclasses.replace(TINY, final_lr_ratio=1.0))))
    whole, parts = tmp_path / "whole.pt", tmp_path / "parts.pt"
    assert _fit(sweeps_store, whole, constant, "--steps", "30") == 0
    assert _fit(sweeps_store, parts, constant, "--steps", "12") == 0
    capsys.readouterr()
    assert _fit(sweeps_store, parts, constant, "--steps", "30") == 0
    last = json.loads(capsys.readouterr().out)
    assert last["resumed"] and last["step"] == 30
    a, b = load_checkpoint(whole), load_checkpoint(parts)
    assert a.step == b.step == 30
    for (name, x), y in zip(a.teacher.field.state_dict().items(),
                            b.teacher.field.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


TOTAL = "120"
# Every fit of the killed-fit test runs in a fresh process with these: float sums depend on
# the thread count (a pytest process keeps whatever an earlier test set), and MKL's
# reproducible mode keeps its kernels from depending on where a run's arrays lie in memory.
SAME_MACHINE = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "MKL_CBWR": "AUTO,STRICT"}


def test_a_killed_fit_resumes_to_the_same_teacher(sweeps_store, tiny_config, tmp_path):
    ckpt, reference = tmp_path / "killed.pt", tmp_path / "reference.pt"

    def command(out):
        return [sys.executable, "-m", "distillprep.flows.cli", "teacher", "fit",
                str(sweeps_store), "--scene", SCENE, "--out", str(out), "--config",
                str(tiny_config), "--holdout", "0", "--steps", TOTAL,
                "--checkpoint-every", "10", "--json"]

    env = {**os.environ, **SAME_MACHINE}
    proc = subprocess.Popen(command(ckpt), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ckpt.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let it get into its next checkpoint interval
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt).step
    assert 10 <= killed_at < int(TOTAL) and killed_at % 10 == 0
    # the same command resumed: the learning-rate schedule over TOTAL steps goes on
    resumed = subprocess.run(command(ckpt), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed"]
    whole = subprocess.run(command(reference), env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    a, b = load_checkpoint(ckpt), load_checkpoint(reference)
    assert a.step == b.step == int(TOTAL)
    for (name, x), y in zip(a.teacher.field.state_dict().items(),
                            b.teacher.field.state_dict().values(), strict=True):
        assert torch.equal(x, y), f"{name} (killed at step {killed_at})"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_checkpoints_of_another_scene_content_or_config_are_refused(
        sweeps_store_copy, small_store, tiny_config, tmp_path, capsys):
    store = sweeps_store_copy
    ckpt = tmp_path / "teacher.pt"
    assert _fit(store, ckpt, tiny_config, "--steps", "2") == 0
    other = open_store(store).scene("scene-0002")
    with pytest.raises(CheckpointError, match="fitted on scene 'scene-0001', not 'scene-0002'"):
        check_matches(load_checkpoint(ckpt), other.scene_id, other.fingerprint)
    # the same scene id with other content (ingested without its sweeps) is refused too
    capsys.readouterr()
    assert main(["teacher", "render", str(small_store), "--checkpoint", str(ckpt)]) == 1
    assert "differs from the one it was fitted on" in capsys.readouterr().err
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps({**to_dict(TINY), "learning_rate": 0.5}))
    code = main(["teacher", "render", str(store), "--checkpoint", str(ckpt),
                 "--config", str(changed)])
    assert code == 1
    assert "another config (differs in ['learning_rate'])" in capsys.readouterr().err
    # a resumed fit with another config is refused the same way
    assert _fit(store, ckpt, changed, "--steps", "4") == 1
    assert "another config" in capsys.readouterr().err
    # and so is one that would change the frames it fits (a usage error)
    assert _fit(store, ckpt, tiny_config, "--steps", "4", "--keyframes-only") == 2
    assert "fitted with sweep frames; resume it without --keyframes-only" in (
        capsys.readouterr().err)
    assert "teacher" not in open_store(store).scene("scene-0001").heads


def test_a_scene_without_lidar_is_refused_naming_what_is_missing(tmp_path, capsys):
    from store_helpers import ingest_arrays, ingest_provenance, manifest, scene_attrs

    from distillprep.storage_schemas.store import create_store

    store = create_store(tmp_path / "s.zarr", "synthetic", "v0")
    arrays = ingest_arrays(4, 6, 8, sweeps=0)
    store.write_scene(scene_attrs("no-lidar", 4, 4, 6, 8), arrays,
                      manifest("no-lidar", 4, arrays), ingest_provenance())
    assert main(["teacher", "fit", str(tmp_path / "s.zarr"), "--scene", "no-lidar",
                 "--out", str(tmp_path / "t.pt")]) == 1
    err = capsys.readouterr().err
    assert "scene 'no-lidar'" in err and "no LiDAR sweeps" in err and "Traceback" not in err
    assert not (tmp_path / "t.pt").exists()


def test_bad_checkpoint_and_config_files_are_named(sweeps_store, tiny_config, tmp_path,
                                                   capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    render = ["teacher", "render", str(sweeps_store), "--checkpoint", str(junk)]
    assert main(render) == 1
    assert f"checkpoint {junk}: not a readable torch checkpoint" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(3)}, junk)
    assert main(render) == 1
    assert "not a distillprep teacher checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"hiden": 3}}))
    assert _fit(sweeps_store, tmp_path / "t.pt", bad) == 2  # a config error: bad usage
    err = capsys.readouterr().err
    assert f"config file {bad}.model: unknown field(s) ['hiden']" in err


def test_nan_loss_names_the_step_and_the_last_good_checkpoint(sweeps_store, tiny_config,
                                                              tmp_path, capsys, monkeypatch):
    import distillprep.teachers.nerf.teacher as teacher_module

    ckpt = tmp_path / "teacher.pt"
    calls = []
    real = teacher_module.render_weights

    def poisoned(sigma, t_start, t_end):  # two renders per step: step 13 goes bad
        calls.append(1)
        weights = real(sigma, t_start, t_end)
        return weights * float("nan") if len(calls) == 25 else weights

    monkeypatch.setattr(teacher_module, "render_weights", poisoned)
    assert _fit(sweeps_store, ckpt, tiny_config, "--steps", "30",
                "--checkpoint-every", "10") == 1
    err = capsys.readouterr().err
    assert "loss became nan at step 13" in err
    assert f"last good checkpoint: {ckpt} (step 10)" in err
    assert load_checkpoint(ckpt).step == 10
