"""Training runs: an interrupted run resumed from its checkpoint ends bit for bit where
an uninterrupted one does; a checkpoint of another config is refused; a store without
teacher depth fails at the start when depth distillation is on; scalars and previews are
written."""

from __future__ import annotations

import zipfile
from dataclasses import replace

import pytest
import torch
from loader_store import build_loader_store

from distillprep.scenes.errors import ConfigError
from distillprep.student.data import LoaderError
from distillprep.student.losses import LossConfig
from distillprep.student.model.distillnerf import StudentConfig
from distillprep.student.model.render import RaySamplingConfig
from distillprep.student.train import TrainConfig, checkpoints, load_checkpoint, train
from distillprep.teachers.tensor_files import is_safetensors

CONFIG = TrainConfig(steps=6, lr=1e-3, resize=(16, 12), split="all", checkpoint_every=3,
                     model=StudentConfig(channels=8, conv_channels=8, levels=(64, 16),
                                         decoder_hidden=8, cameras=2,
                                         sampling=RaySamplingConfig(jitter=True)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(build_loader_store(tmp_path_factory.mktemp("train") / "s.zarr",
                                  {"scene-a": 3, "scene-b": 2}))


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(store, tmp_path):
    whole = train([store], tmp_path / "whole", CONFIG)
    assert whole.resumed_from == 0 and whole.checkpoint.name == "step_0000006.pt"
    # 5 frames an epoch: the 6 steps cross into the second epoch
    first = train([store], tmp_path / "cut", replace(CONFIG, steps=4))
    assert [p.name for p in checkpoints(tmp_path / "cut")] == ["step_0000003.pt",
                                                                "step_0000004.pt"]
    third = checkpoints(tmp_path / "cut")[0]
    assert is_safetensors(third) and not zipfile.is_zipfile(third)  # nothing pickled
    saved = load_checkpoint(third)
    torch.save(saved, third)  # as distillprep wrote it before: one torch.save file
    old = load_checkpoint(third)
    assert old["loader"] == saved["loader"] and old["step"] == 3 and old["config"] == \
        saved["config"] and torch.equal(old["rng"], saved["rng"])
    assert all(torch.equal(v, saved["model"][k]) for k, v in old["model"].items())
    rest = train([store], tmp_path / "cut", CONFIG)
    assert first.resumed_from == 0 and rest.resumed_from == 4
    a = load_checkpoint(whole.checkpoint)
    b = load_checkpoint(rest.checkpoint)
    assert a["loader"] == b["loader"] and a["loader"]["epoch"] == 1
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert rest.last_losses == whole.last_losses and set(rest.last_losses) >= {
        "rgb_l1", "lidar_depth", "teacher_depth", "entropy", "opacity"}
    assert list((tmp_path / "whole" / "tensorboard").glob("events.out.tfevents.*"))


def test_a_checkpoint_of_another_config_is_refused(store, tmp_path):
    train([store], tmp_path / "run", replace(CONFIG, steps=3))
    with pytest.raises(ConfigError, match="another config"):
        train([store], tmp_path / "run", replace(CONFIG, lr=5e-4))


def test_depth_distillation_needs_teacher_depth(tmp_path):
    bare = build_loader_store(tmp_path / "bare.zarr", {"scene-x": 3}, teacher=False)
    with pytest.raises(LoaderError, match="teacher_depth.*stage teacher has not run"):
        train([str(bare)], tmp_path / "run", CONFIG)
    with pytest.raises(LoaderError, match="teacher_opacity.*stage teacher has not run"):
        train([str(bare)], tmp_path / "run", replace(CONFIG, losses=LossConfig(
            teacher_depth=0.0, virtual=0.0)))  # the LiDAR target's sky comes from it
    off = replace(CONFIG, steps=2, preview_every=2,
                  losses=LossConfig(teacher_depth=0.0, virtual=0.0, lidar_sky=False))
    result = train([str(bare)], tmp_path / "run", off)
    assert "teacher_depth" not in result.last_losses
    assert (tmp_path / "run" / "previews" / "step_0000002.png").exists()


def test_evaluate_a_run_on_named_scenes(store, tmp_path):
    import math

    from distillprep.student.evaluate import evaluate, resolve_checkpoint

    train([store], tmp_path / "run", replace(CONFIG, steps=2))
    assert resolve_checkpoint(tmp_path / "run").name == "step_0000002.pt"
    report = evaluate([store], tmp_path / "run", scenes=("scene-a",))
    assert report["frames"] == 2 and report["scenes"] == ["scene-a"]  # the last has no next
    for key in ("recon_psnr", "recon_ssim", "novel_view_psnr", "depth_lidar_abs_rel",
                "depth_teacher_abs_rel", "depth_teacher_delta_1_25_3"):
        assert math.isfinite(report[key]), key
    with pytest.raises(ConfigError, match="has no checkpoint"):
        resolve_checkpoint(tmp_path)


def test_train_and_eval_from_the_command_line(store, tmp_path, capsys):
    import json

    from distillprep.flows.cli import main

    config = tmp_path / "tiny.json"
    data = {"steps": 2, "resize": [16, 12], "split": "all", "checkpoint_every": 1,
            "model": {"channels": 8, "conv_channels": 8, "levels": [64, 16],
                      "decoder_hidden": 8, "cameras": 2}}
    config.write_text(json.dumps(data))
    run = tmp_path / "run"
    assert main(["train", "--store", store, "--out", str(run), "--config", str(config),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    # resumed with the run's own config: only the steps added run
    assert main(["train", "--store", store, "--out", str(run), "--steps", "3",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resumed_from"] == 2
    assert main(["eval", "--store", store, "--ckpt", str(run), "--scene", "scene-b",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checkpoint"].endswith("step_0000003.pt") and report["frames"] == 1
    if not torch.cuda.is_available():  # refused, naming the device
        assert main(["train", "--store", store, "--out", str(run), "--device", "cuda"]) == 2
        assert "sees no CUDA device" in capsys.readouterr().err


def test_eval_against_the_exact_depth_of_a_synthetic_dataset(small_dataset, small_store,
                                                             tmp_path):
    import math

    from distillprep.student.evaluate import evaluate

    config = replace(CONFIG, steps=1, resize=(64, 36),
                     losses=LossConfig(teacher_depth=0.0, virtual=0.0, lidar_sky=False))
    with pytest.raises(ConfigError, match="6 cameras .* 2 slots"):
        train([str(small_store)], tmp_path / "run", config)
    config = replace(config, model=replace(config.model, cameras=6))
    train([str(small_store)], tmp_path / "run", config)
    report = evaluate([str(small_store)], tmp_path / "run", scenes=("scene-0002",),
                      truth=small_dataset)
    assert report["frames"] == 2
    assert math.isfinite(report["depth_exact_abs_rel"]) and 0 < report["depth_exact_abs_rel"]
    assert "depth_teacher_abs_rel" not in report
    with pytest.raises(ConfigError, match="no ground-truth depth"):
        evaluate([str(small_store)], tmp_path / "run", scenes=("scene-0002",),
                 truth=tmp_path)


def test_a_feature_head_is_trained_and_scored_on_the_dino_features(store, tmp_path):
    import math

    from distillprep.student.evaluate import evaluate

    config = replace(CONFIG, steps=2, model=replace(CONFIG.model, foundation_channels=2))
    assert "dino_features" in config.fields()
    result = train([store], tmp_path / "run", config)
    assert "dino_features" in result.last_losses
    report = evaluate([store], tmp_path / "run", scenes=("scene-a",))
    assert -1 <= report["features_dino_cosine"] <= 1
    assert math.isfinite(report["features_dino_psnr"])
