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
from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.storage_schemas.reader import SceneReader
from distillprep.storage_schemas.store import open_store
from distillprep.teachers.errors import CheckpointError
from distillprep.teachers.nerf.checkpoint import check_matches, load_checkpoint, scene_fingerprint
from distillprep.teachers.nerf.config_io import to_dict

SCENE = "scene-0001"


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(to_dict(TINY)))
    return path


def _fit(dataset, ckpt, config, *extra):
    return main(["teacher", "fit", str(dataset), "--scene", SCENE, "--out", str(ckpt),
                 "--config", str(config), "--holdout", "0", "--json", *extra])


def test_fit_render_store_validate(small_dataset, tiny_config, tmp_path, capsys):
    torch.set_num_threads(2)
    ckpt, store_path = tmp_path / "teacher.pt", tmp_path / "store.zarr"
    # 450 steps: the fit spreads them over the 2 sweep frames as well as the 3 keyframes
    assert _fit(small_dataset, ckpt, tiny_config, "--steps", "450") == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["step"] == 450 and not fitted["resumed"]
    render_config = tmp_path / "render.json"
    render_config.write_text(json.dumps({"scale": 0.5, "virtual": {"resolution_scale": 0.5}}))
    assert main(["teacher", "render", str(ckpt), "--store", str(store_path),
                 "--render-config", str(render_config), "--json"]) == 0
    rendered = json.loads(capsys.readouterr().out)
    assert rendered["ingested"] is True
    assert main(["validate", str(store_path), "--deep"]) == 0
    capsys.readouterr()

    store = open_store(store_path)
    attrs = store.scene_attrs(SCENE)
    n = attrs.num_samples
    group = store.group(SCENE)
    depth = group["teacher_depth"][...].astype(np.float32)
    assert depth.shape == (n, 54, 96)
    views = group["virtual_rgb"].shape[0]
    counts = rendered["virtual_views"]
    assert views == counts["kept"] + counts["moved"] == 3 * n - counts["dropped"]
    record = attrs.stages["teacher"]
    assert record.extra["steps"] == 450 and record.extra["backend"] in ("torch", "cpp")
    # fitted on the 3 keyframes and the sweep frame between each two; rendered for the
    # keyframes the store holds
    assert record.extra["fitted_frames"] == [0, 1, 2]
    assert record.extra["fitted_sweep_frames"] == 2
    assert record.config["fit"]["camera_rays"] == TINY.camera_rays
    # the teacher's dense depth agrees with the scene's LiDAR where LiDAR landed, at the
    # half-resolution pixel covering each return (not a shape check: values)
    reader = SceneReader(store, SCENE)
    errors = []
    for i in range(n):
        lidar = reader.read(i)["lidar_depth"].astype(np.float32)
        rows, cols = np.nonzero(lidar)
        pred = depth[i][rows // 2, cols // 2]  # pixel u's centre lands in half-res pixel u // 2
        errors.append(np.abs(pred - lidar[rows, cols]) / lidar[rows, cols])
    median = float(np.median(np.concatenate(errors)))
    assert median < 0.15, median
    manifest = store.manifest([SCENE])
    assert all(manifest.column("has_teacher_depth").to_pylist())
    scores = manifest.column("teacher_psnr").to_pylist()
    assert all(s is not None and s > 14.0 for s in scores), scores


def test_resume_equals_an_uninterrupted_fit(small_dataset, tmp_path, capsys):
    """With a constant learning rate, a fit extended in parts (--steps 12, then 30) is the
    fit run whole (a decaying schedule depends on --steps: see the killed-fit test)."""
    constant = tmp_path / "constant.json"
    constant.write_text(json.dumps(to_dict(dataclasses.replace(TINY, final_lr_ratio=1.0))))
    whole, parts = tmp_path / "whole.pt", tmp_path / "parts.pt"
    assert _fit(small_dataset, whole, constant, "--steps", "30") == 0
    assert _fit(small_dataset, parts, constant, "--steps", "12") == 0
    capsys.readouterr()
    assert _fit(small_dataset, parts, constant, "--steps", "30") == 0
    last = json.loads(capsys.readouterr().out)
    assert last["resumed"] and last["step"] == 30
    a, b = load_checkpoint(whole), load_checkpoint(parts)
    assert a.step == b.step == 30
    for (name, x), y in zip(a.teacher.field.state_dict().items(),
                            b.teacher.field.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


TOTAL = "300"


def test_a_killed_fit_resumes_to_the_same_teacher(small_dataset, tiny_config, tmp_path):
    ckpt, reference = tmp_path / "killed.pt", tmp_path / "reference.pt"
    command = [sys.executable, "-m", "distillprep.flows.cli", "teacher", "fit",
               str(small_dataset), "--scene", SCENE, "--out", str(ckpt), "--config",
               str(tiny_config), "--holdout", "0", "--steps", TOTAL,
               "--checkpoint-every", "10", "--json"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ckpt.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let it get into its next checkpoint interval
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt).step
    assert 10 <= killed_at < int(TOTAL) and killed_at % 10 == 0
    # the same command resumed: the learning-rate schedule over TOTAL steps goes on
    assert _fit(small_dataset, ckpt, tiny_config, "--steps", TOTAL) == 0
    assert _fit(small_dataset, reference, tiny_config, "--steps", TOTAL) == 0
    a, b = load_checkpoint(ckpt), load_checkpoint(reference)
    assert a.step == b.step
    for (name, x), y in zip(a.teacher.field.state_dict().items(),
                            b.teacher.field.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_checkpoints_of_another_scene_or_config_are_refused(small_dataset, tiny_config,
                                                            tmp_path, capsys):
    ckpt = tmp_path / "teacher.pt"
    assert _fit(small_dataset, ckpt, tiny_config, "--steps", "2") == 0
    other = read_nuscenes(small_dataset, scenes=["scene-0002"]).scenes[0]
    with pytest.raises(CheckpointError, match="fitted on scene 'scene-0001', not 'scene-0002'"):
        check_matches(load_checkpoint(ckpt), other.scene_id, scene_fingerprint(other))
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps({**to_dict(TINY), "learning_rate": 0.5}))
    capsys.readouterr()
    code = main(["teacher", "render", str(ckpt), "--store", str(tmp_path / "s.zarr"),
                 "--config", str(changed)])
    assert code == 1
    assert "another config (differs in ['learning_rate'])" in capsys.readouterr().err
    # a resumed fit with another config is refused the same way
    assert _fit(small_dataset, ckpt, changed, "--steps", "4") == 1
    assert "another config" in capsys.readouterr().err
    # and so is one that would change the frames it fits
    assert _fit(small_dataset, ckpt, tiny_config, "--steps", "4", "--keyframes-only") == 1
    assert "fitted with sweep frames; resume it without --keyframes-only" in (
        capsys.readouterr().err)
    assert not (tmp_path / "s.zarr").exists()


def test_bad_checkpoint_and_config_files_are_named(small_dataset, tiny_config, tmp_path,
                                                   capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert main(["teacher", "render", str(junk), "--store", str(tmp_path / "s.zarr")]) == 1
    assert f"checkpoint {junk}: not a readable torch checkpoint" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(3)}, junk)
    assert main(["teacher", "render", str(junk), "--store", str(tmp_path / "s.zarr")]) == 1
    assert "not a distillprep teacher checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"hiden": 3}}))
    assert _fit(small_dataset, tmp_path / "t.pt", bad) == 2  # a config error: bad usage
    err = capsys.readouterr().err
    assert f"config file {bad}.model: unknown field(s) ['hiden']" in err


def test_nan_loss_names_the_step_and_the_last_good_checkpoint(small_dataset, tiny_config,
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
    assert _fit(small_dataset, ckpt, tiny_config, "--steps", "30",
                "--checkpoint-every", "10") == 1
    err = capsys.readouterr().err
    assert "loss became nan at step 13" in err
    assert f"last good checkpoint: {ckpt} (step 10)" in err
    assert load_checkpoint(ckpt).step == 10
