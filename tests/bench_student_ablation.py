"""Student ablation bench (`make bench`): does distilling the teachers help, as DistillNeRF's
Table 1 and 2 say, on synthetic scenes the student never saw?

A synthetic nuScenes dataset is generated (exact depth beside every image); its training
scenes are prepared by `distillprep prepare` (ingest, a real fitted neural-field teacher
per scene rendering dense depth and the DistillNeRF virtual views; no feature models),
its held-out scenes only ingested. Three students are trained at equal steps and seed
(`student/ablation.py`: LiDAR only, + teacher depth, + virtual cameras) and evaluated on
the held-out scenes: depth AbsRel against the exact depth with teacher-depth distillation
off and on, novel-view PSNR (the next frame's poses) with virtual-camera distillation off
and on. One figure per line, each with its ratio.

The LiDAR has fewer beams than the HDL-32E (8 at the fast size, 16 at the full), spread over
its elevations: the students see 64x36 (114x64) images where 32 beams would cover 94 %
(79 %) of the non-sky render pixels, leaving dense depth nothing to add; 8 beams cover
36 % at 64x36, about what 32 beams cover at the paper's 228x128 (41 %), measured on these
synthetic scenes.

Sizes: `DISTILLPREP_BENCH_ABLATION=fast` (default, ~40 minutes on 2 cores) or `full`
(~1 hour: more scenes, longer teachers, more student steps, a larger input). Student seeds:
`DISTILLPREP_BENCH_ABLATION_SEEDS=0,1,...` (default 0; each seed ~15 more minutes at the
fast size) trains the three students once per seed on the same prepared scenes and prints
each seed's figures, then their means. Run alone: `python tests/bench_student_ablation.py`.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

# Prefect's local API misses its 20 s start-up deadline on 2 busy cores
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

from distillprep.flows.cli import main as cli
from distillprep.scenes.synthetic.generate import SynthConfig, generate, scene_name
from distillprep.student.ablation import PAPER_VARIANTS, ablate
from distillprep.student.losses import LossConfig
from distillprep.student.model.distillnerf import StudentConfig
from distillprep.student.model.render import RaySamplingConfig
from distillprep.student.train import TrainConfig


@dataclass(frozen=True)
class Size:
    train_scenes: int
    val_scenes: int
    frames: int
    teacher_steps: int
    student_steps: int
    resize: tuple[int, int]
    lidar_beams: int


SIZES = {"fast": Size(train_scenes=3, val_scenes=1, frames=4, teacher_steps=400,
                      student_steps=300, resize=(64, 36), lidar_beams=8),
         "full": Size(train_scenes=6, val_scenes=2, frames=6, teacher_steps=1500,
                      student_steps=800, resize=(114, 64), lidar_beams=16)}

TEACHER = {  # sweeps for the fit; a static field; half-size renders, lighter sampling
    "ingest": {"sweeps": True},
    "teacher": {"holdout": 0, "fit": {"dynamic": None}},
    "render": {"render": {"scale": 0.5, "virtual": {"resolution_scale": 0.5},
                          "sampling": {"candidates": 128, "max_samples": 32,
                                       "fine_samples": 32}}},
    "features": [],
}


def _prepare(dataroot: Path, store: Path, scenes: list[str], work: Path, steps: int) -> None:
    config = work / "prepare.yaml"
    config.write_text(yaml.safe_dump(TEACHER))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli(["prepare", str(dataroot), "--out", str(store), "--config", str(config),
                    "--teacher-steps", str(steps), "--json"]
                   + [a for s in scenes for a in ("--scene", s)])
    if code != 0:
        raise RuntimeError(f"prepare exited {code}: {out.getvalue()[-2000:]}")
    from distillprep.storage_schemas.store import open_store

    opened = open_store(str(store))
    for scene in scenes:
        record = opened.scene(scene).provenance("teacher")
        print(f"ablation.teacher {scene}: {record.steps} steps, train PSNR "
              f"{record.train_psnr_db} dB, LiDAR AbsRel {record.lidar_abs_rel}")


KEYS = ("depth_exact_abs_rel", "depth_exact_delta_1_25", "novel_view_psnr")


def _student(size: Size, seed: int) -> TrainConfig:
    return TrainConfig(steps=size.student_steps, lr=1e-3, resize=size.resize,
                       checkpoint_every=size.student_steps, seed=seed,
                       model=StudentConfig(channels=8, conv_channels=8, levels=(64, 16),
                                           decoder_hidden=16,
                                           sampling=RaySamplingConfig(jitter=True)),
                       losses=LossConfig())


def _print_comparison(reports: dict[str, dict], tag: str) -> None:
    """The paper's two comparisons, one figure per line (tag: which seed, or the mean)."""
    lidar, depth, virtual = (reports[k] for k in PAPER_VARIANTS)
    a, b = lidar["depth_exact_abs_rel"], depth["depth_exact_abs_rel"]
    print(f"student.ablation.{tag}depth_abs_rel_exact: LiDAR only {a:.4f}, + teacher depth "
          f"{b:.4f} ({b / a:.2f}x; lower is better)")
    a, b = lidar["depth_exact_delta_1_25"], depth["depth_exact_delta_1_25"]
    print(f"student.ablation.{tag}depth_delta1_exact: LiDAR only {a:.3f}, + teacher depth "
          f"{b:.3f}")
    a, b = depth["novel_view_psnr"], virtual["novel_view_psnr"]
    print(f"student.ablation.{tag}novel_view_psnr: teacher depth {a:.2f} dB, + virtual "
          f"cameras {b:.2f} dB ({b - a:+.2f} dB)")


def bench_student_ablation(size_name: str | None = None) -> dict[int, dict[str, dict]]:
    """seed -> variant -> `evaluate`'s report on the held-out scenes."""
    size_name = size_name or os.environ.get("DISTILLPREP_BENCH_ABLATION", "fast")
    size = SIZES[size_name]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="distillprep-ablation-") as tmp:
        root = Path(tmp)
        scenes = size.train_scenes + size.val_scenes
        dataroot = generate(root / "nuscenes", "nuscenes", SynthConfig(
            scenes=scenes, frames=size.frames, width=192, height=108, sweeps=1, seed=21,
            supersample=1, lidar_beams=size.lidar_beams))
        names = [scene_name(i) for i in range(scenes)]
        train_scenes, val_scenes = names[:size.train_scenes], names[size.train_scenes:]
        store = root / "store.zarr"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli(["ingest", str(dataroot), "--out", str(store), "--json"]
                       + [a for s in val_scenes for a in ("--scene", s)])
        assert code == 0, out.getvalue()
        _prepare(dataroot, store, train_scenes, root, size.teacher_steps)
        prepared = time.perf_counter() - start
        seeds = [int(x) for x in os.environ.get("DISTILLPREP_BENCH_ABLATION_SEEDS",
                                                "0").split(",")]
        runs = {seed: ablate([str(store)], root / f"runs-seed{seed}",
                             _student(size, seed), tuple(val_scenes), dataroot)
                for seed in seeds}
    trained = sum(r["train_seconds"] for reports in runs.values() for r in reports.values())
    print(f"ablation ({size_name}): {size.train_scenes} training scenes, {size.val_scenes} "
          f"held out, {size.frames} frames, {size.lidar_beams}-beam LiDAR, teachers "
          f"{size.teacher_steps} steps, students {size.student_steps} steps at "
          f"{size.resize[0]}x{size.resize[1]}, seeds {seeds}; prepared in "
          f"{prepared / 60:.1f} min, trained in {trained / 60:.1f} min")
    for seed, reports in runs.items():
        _print_comparison(reports, f"seed{seed}." if len(runs) > 1 else "")
        for name, report in reports.items():
            print(f"student.ablation.{name}: seed {seed}, recon {report['recon_psnr']:.2f} "
                  f"dB, novel view {report['novel_view_psnr']:.2f} dB, exact AbsRel "
                  f"{report['depth_exact_abs_rel']:.4f}, LiDAR AbsRel "
                  f"{report['depth_lidar_abs_rel']:.4f}")
    if len(runs) > 1:
        _print_comparison({name: {key: sum(r[name][key] for r in runs.values()) / len(runs)
                                  for key in KEYS} for name in PAPER_VARIANTS}, "mean.")
    return runs


if __name__ == "__main__":
    bench_student_ablation()
