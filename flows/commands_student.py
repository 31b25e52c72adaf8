"""CLI commands of the student: `train` (a resumable run from stores) and `eval` (the
paper's metrics of a run or checkpoint on held-out scenes)."""

from __future__ import annotations

import sys
from pathlib import Path

from .cli_common import add_scene_argument, add_storage_option_argument, emit, storage_options


def _add_stores(p) -> None:
    """`--store STORE` (repeatable) and the store options, as train and eval take them."""
    p.add_argument("--store", action="append", required=True, dest="stores",
                   metavar="STORE", help="store path or URL (repeat for several)")
    add_storage_option_argument(p)


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train the student from stores into a run folder "
                       "(started again on the same folder, it resumes exactly)")
    _add_stores(p)
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--steps", type=int, default=None, help="total steps (default: config)")
    p.add_argument("--config", type=Path, default=None,
                   help="TrainConfig as YAML, TOML or JSON (omitted fields: defaults)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_train)


def _train_config(args):
    from dataclasses import replace

    from distillprep.student.train import TrainConfig
    from distillprep.teachers.nerf.config_io import from_dict, read_config_data

    config = TrainConfig()
    if args.config is not None:
        config = from_dict(TrainConfig, read_config_data(args.config),
                           f"config file {args.config}")
    elif (args.out / "config.json").exists():  # resuming: the run's own config
        config = from_dict(TrainConfig, read_config_data(args.out / "config.json"),
                           f"{args.out / 'config.json'}")
    if args.steps is not None:
        config = replace(config, steps=args.steps)
    if args.workers is not None:
        config = replace(config, workers=args.workers)
    return config


def run_train(args) -> int:
    from tqdm import tqdm

    from distillprep.student.train import train

    config = _train_config(args)
    bar = None

    def progress(steps):
        nonlocal bar
        bar = tqdm(steps, unit="step", disable=args.json)
        return bar

    def report(step: int, losses: dict[str, float]) -> None:
        if bar is not None:
            bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()})

    result = train(args.stores, args.out, config, storage_options(args), progress=progress,
                   report=report, device=args.device)
    data = {"run": str(args.out), "steps": result.steps, "resumed_from": result.resumed_from,
            "checkpoint": str(result.checkpoint), "last_losses": result.last_losses}
    emit(args, data, f"{args.out}: {result.steps} steps (resumed from "
                     f"{result.resumed_from}); checkpoint {result.checkpoint}; losses "
                     + ", ".join(f"{k} {v:.4g}" for k, v in result.last_losses.items()))
    return 0


def _add_checkpoint(p) -> None:
    p.add_argument("--ckpt", required=True, type=Path,
                   help="a checkpoint, or a run folder (its latest checkpoint)")


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="the paper's metrics of a student run or checkpoint "
                       "on a store's held-out scenes")
    _add_stores(p)
    _add_checkpoint(p)
    add_scene_argument(p)
    p.add_argument("--truth", type=Path, default=None, metavar="DATAROOT",
                   help="the synthetic dataset the store was ingested from: also score "
                   "depth against its exact ground truth")
    p.add_argument("--query", default=None, metavar="TEXT",
                   help="a text asked of the student's rendered CLIP features (a run "
                   "distilling CLIP): agreement with the CLIP teacher's answer")
    p.add_argument("--clip-weights", type=Path, default=None,
                   help="the CLIP checkpoint the store's features were made with (default: "
                   "<model>.pth in $DISTILLPREP_WEIGHTS_DIR; not needed for random-init)")
    p.add_argument("--png", type=Path, default=None,
                   help="folder for the query's overlays (student above teacher)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_eval)


def run_eval(args) -> int:
    from distillprep.student.evaluate import evaluate

    report = evaluate(args.stores, args.ckpt, tuple(args.scenes) if args.scenes else None,
                      storage_options(args), truth=args.truth, query=args.query,
                      clip_weights=args.clip_weights, png=args.png, device=args.device)
    lines = [f"{report['checkpoint']}: {report['frames']} frame(s) of "
             f"{len(report['scenes'])} scene(s)"]
    lines += [f"  {k}: {v:.4g}" for k, v in report.items()
              if isinstance(v, float) and k != "seconds_per_frame"]
    if report.get("query", {}).get("random_init"):
        print("distillprep eval: WARNING: the store's CLIP features come from RANDOM "
              "weights: the query's maps show nothing meaningful", file=sys.stderr)
    emit(args, report, "\n".join(lines + report.get("query", {}).get("pngs", [])))
    return 0


def add_infer(sub) -> None:
    p = sub.add_parser("infer", help="render one frame with a trained student: time per "
                       "frame, RGB / depth PNGs and .npy outputs")
    _add_stores(p)
    _add_checkpoint(p)
    p.add_argument("--scene", required=True, help="scene id")
    p.add_argument("--frame", type=int, default=0, help="frame index in the scene")
    p.add_argument("--out", type=Path, default=None, help="folder for the outputs")
    p.add_argument("--repeat", type=int, default=1,
                   help="timed passes after a warm-up (their mean is reported)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_infer)


def run_infer(args) -> int:
    from distillprep.student.infer import infer

    report = infer(args.stores, args.ckpt, args.scene, args.frame, args.out,
                   storage_options(args), repeat=args.repeat, device=args.device)
    emit(args, report, f"{args.scene} frame {args.frame}: {len(report['cameras'])} cameras "
                       f"in {report['seconds_per_frame']:.3f} s per frame "
                       f"(render {report['render_size'][1]}x{report['render_size'][0]}, "
                       f"RGB {report['rgb_size'][1]}x{report['rgb_size'][0]})"
                       + "".join(f"\n  {f}" for f in report["files"]))
    return 0


COMMANDS = (add_train, add_eval, add_infer)
