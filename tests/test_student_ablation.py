"""The paper's distillation ablations run from config alone (`student/ablation.py`): on a
tiny synthetic dataset whose teacher stage is the exact truth (`oracle_teacher.py`), each
variant trains with only its loss weights changed, on the training scenes only, and is
scored on the held-out scene against the exact depth. The dataset's LiDAR has 2 beams, so
that it leaves almost every pixel without depth, as a 32-beam LiDAR leaves most of the
paper's (its share of the pixels is what the dense teacher depth adds): on this tiny
setting teacher depth's direction is robust in every seed. Virtual cameras' novel-view
gain is not: single seeds flip its sign, so its test (slow) asserts the mean over four
seeds; `tests/bench_student_ablation.py` measures both at a larger size."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from oracle_teacher import write_oracle_teacher
from test_student_train import CONFIG

from distillprep.scenes.synthetic.generate import SynthConfig, generate
from distillprep.scenes.synthetic.truth import load_ground_truth_depth
from distillprep.student.ablation import PAPER_VARIANTS, ablate
from distillprep.student.train import TrainConfig


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    from distillprep.scenes.nuscenes import read_nuscenes
    from distillprep.storage_schemas.ingest import IngestConfig, ingest
    from distillprep.storage_schemas.store import create_store

    root = tmp_path_factory.mktemp("oracle")
    data = generate(root / "nuscenes", "nuscenes", SynthConfig(
        scenes=2, frames=2, width=96, height=54, sweeps=0, seed=5, supersample=1, workers=1,
        lidar_beams=2))
    read = read_nuscenes(data)
    store = create_store(root / "store.zarr", "nuscenes", read.version)
    ingest(store, read.scenes, IngestConfig("nuscenes", read.version))
    for scene in store.scenes():
        write_oracle_teacher(store, data, scene, scale=1.0)
    return data, store


def test_the_oracle_teachers_depth_is_the_exact_depth(oracle):
    data, store = oracle
    view = store.scene("scene-0001")
    source = view.manifest().column("source_file").to_pylist()[0]
    exact = load_ground_truth_depth(data, source)
    stored = np.asarray(view["teacher_depth"][0]).astype(np.float32)
    opacity = np.asarray(view["teacher_opacity"][0])
    np.testing.assert_allclose(stored, exact, rtol=1e-3)  # float16
    assert np.array_equal(opacity == 0, exact == 0) and (exact == 0).any()  # the sky


def test_each_variant_changes_only_its_loss_weights(oracle, tmp_path):
    data, store = oracle
    base = replace(CONFIG, steps=1, resize=(32, 18), model=replace(CONFIG.model, cameras=6))
    heard = []
    reports = ablate([str(store.location.location)], tmp_path, base, ("scene-0002",), data,
                     progress=lambda name, report: heard.append(name))
    assert heard == list(PAPER_VARIANTS) == list(reports)
    configs = {name: json.loads((tmp_path / name / "config.json").read_text())
               for name in reports}
    weights = {name: (c["losses"]["teacher_depth"], c["losses"]["virtual"])
               for name, c in configs.items()}
    assert weights == {"lidar_only": (0.0, 0.0), "teacher_depth": (10.0, 0.0),
                       "teacher_depth_virtual": (10.0, 1.0)}
    for c in configs.values():
        assert c["val_scenes"] == ["scene-0002"] and c["split"] == "train"
        c.pop("losses")
    assert all(c == configs["lidar_only"] for c in configs.values())
    for report in reports.values():
        assert report["scenes"] == ["scene-0002"] and report["frames"] == 1
        for key in ("depth_exact_abs_rel", "novel_view_psnr", "depth_teacher_abs_rel",
                    "virtual_view_psnr", "depth_virtual_abs_rel"):
            assert math.isfinite(report[key]), key


def _tiny(seed: int) -> TrainConfig:
    """One training scene, 40 steps at a high learning rate, 32x18 input, 6 cameras."""
    return replace(CONFIG, steps=40, lr=5e-3, resize=(32, 18), checkpoint_every=40, seed=seed,
                   model=replace(CONFIG.model, cameras=6))


def test_teacher_depth_helps_a_student_on_the_held_out_scene(oracle, tmp_path):
    """The paper's Table 1 direction on a tiny setting (one training scene, 40 steps at a
    high learning rate): with LiDAR alone a student has almost no depth to learn from and
    renders the held-out scene several times too far; the same student with the teacher's
    dense depth does far better. Single seeds depend on the machine's float kernels (seeds
    0 / 1, AbsRel LiDAR only vs teacher depth: 3.71 / 4.21 vs 1.08 / 0.72 on an AMD CPU,
    1.68 / 6.46 vs 1.32 / 1.18 on an Intel one; seeds 2-3 there 3.46 / 1.05 vs 0.78 /
    0.88), so each seed must only go the paper's way and the 0.6x margin holds for the
    mean of two."""
    data, store = oracle
    means = {"lidar_only": 0.0, "teacher_depth": 0.0}
    for seed in (0, 1):
        reports = ablate([str(store.location.location)], tmp_path / f"seed{seed}", _tiny(seed),
                         ("scene-0002",), data, variants=("lidar_only", "teacher_depth"))
        lidar, teacher = reports["lidar_only"], reports["teacher_depth"]
        assert teacher["depth_exact_abs_rel"] < lidar["depth_exact_abs_rel"], (seed, reports)
        assert teacher["depth_exact_delta_1_25"] > lidar["depth_exact_delta_1_25"], (seed,
                                                                                     reports)
        for name in means:
            means[name] += reports[name]["depth_exact_abs_rel"] / 2
    assert means["teacher_depth"] < 0.6 * means["lidar_only"], means


@pytest.mark.slow
def test_virtual_cameras_help_novel_views_of_the_held_out_scene_on_average(oracle, tmp_path):
    """Table 1's "+Virt" direction on the same tiny setting: the held-out scene's novel
    views (the next frame's poses) are rendered better, on average over seeds 0-3, by the
    student that also learnt from the teacher's virtual views. Single seeds flip: gains of
    -0.25, +0.46, +0.80, +1.48 dB over seeds 0-3 and +1.12, +0.21, +0.03, -0.52 over seeds
    4-7 (scratch runs), so one seed cannot carry the assertion; about 100 s."""
    data, store = oracle
    gains = []
    for seed in range(4):
        reports = ablate([str(store.location.location)], tmp_path / f"seed{seed}",
                         _tiny(seed), ("scene-0002",), data,
                         variants=("teacher_depth", "teacher_depth_virtual"))
        gains.append(reports["teacher_depth_virtual"]["novel_view_psnr"]
                     - reports["teacher_depth"]["novel_view_psnr"])
    assert np.mean(gains) > 0.2, gains
