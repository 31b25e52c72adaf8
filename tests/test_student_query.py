"""The student's CLIP text query and one-frame inference, on a store prepared end to end
(`distillprep prepare`: ingest, teacher, DINOv2 and CLIP features with random weights)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from test_student_train import CONFIG

from distillprep.scenes.errors import ConfigError
from distillprep.student.data import LoaderError
from distillprep.student.evaluate import evaluate
from distillprep.student.train import TrainConfig, train

CLIP = replace(CONFIG, steps=1, resize=(32, 18), features="clip", split="all",
               model=replace(CONFIG.model, cameras=6, foundation_channels=4))


@pytest.fixture(scope="module")
def clip_run(prepared, tmp_path_factory):
    root, code, _ = prepared
    assert code == 0
    store = str(root / "store.zarr")
    run = tmp_path_factory.mktemp("clip_run") / "run"
    result = train([store], run, CLIP)
    assert "clip_features" in result.last_losses
    return store, run


def test_a_text_query_of_the_rendered_clip_features(clip_run, tmp_path):
    store, run = clip_run
    report = evaluate([store], run, scenes=("scene-0002",), query="a car",
                      png=tmp_path / "maps")
    assert report["query"]["random_init"] is True and report["query"]["text"] == "a car"
    assert -1.0 <= report["query_agreement"] <= 1.0
    assert math.isfinite(report["features_clip_cosine"])
    pngs = report["query"]["pngs"]
    assert len(pngs) == 6 * report["frames"]  # one per camera of each frame
    # student above teacher: twice the RGB render height, its width
    assert Image.open(pngs[0]).size == (32, 36)


def test_a_query_needs_a_run_distilling_clip(prepared, tmp_path):
    store = str(prepared[0] / "store.zarr")
    dino = replace(CLIP, features="dino")
    train([store], tmp_path / "run", dino)
    with pytest.raises(ConfigError, match="distils CLIP.*this run distils dino"):
        evaluate([store], tmp_path / "run", scenes=("scene-0002",), query="a car")


def test_a_feature_loss_without_its_features_fails_at_the_start(tmp_path):
    from loader_store import build_loader_store

    store = build_loader_store(tmp_path / "s.zarr", {"scene-x": 3})  # DINOv2 features only
    config = replace(CONFIG, features="clip", model=replace(CONFIG.model,
                                                            foundation_channels=2))
    with pytest.raises(LoaderError, match="clip_features.*clip_features"):
        train([str(store)], tmp_path / "run", config)
    with pytest.raises(ConfigError, match="use dino or clip"):
        TrainConfig(features="sam")


def test_infer_renders_any_frame_and_writes_its_outputs(clip_run, tmp_path, capsys):
    from distillprep.flows.cli import main

    store, run = clip_run
    out = tmp_path / "frame"
    assert main(["infer", "--store", store, "--ckpt", str(run), "--scene", "scene-0001",
                 "--frame", "2", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frame"] == 2 and report["seconds_per_frame"] > 0
    depth = np.load(out / "depth.npy")
    assert depth.shape == (6, 9, 16) and np.all(depth > 0)
    assert np.load(out / "features.npy").shape == (6, 4, 9, 16)
    assert Image.open(out / "rgb_CAM_FRONT.png").size == (32, 18)
    assert main(["infer", "--store", store, "--ckpt", str(run), "--scene", "scene-0001",
                 "--frame", "9"]) == 2
    assert "no frame 9" in capsys.readouterr().err
