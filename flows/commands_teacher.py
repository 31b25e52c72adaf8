"""CLI commands of the teacher stage: `teacher fit` (resumable, checkpointed) and
`teacher render` (dense depth and virtual views into the store). Both read the scene from
the store alone: parse -> typed job config -> the stage's job -> report."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from .cli_common import (
    add_scene_argument,
    add_storage_option_argument,
    check_device,
    emit,
    storage_options,
)


def add_teacher(sub) -> None:
    p = sub.add_parser("teacher", help="fit a scene's neural-field teacher and render it")
    tsub = p.add_subparsers(dest="teacher_command", required=True)
    f = tsub.add_parser("fit", help="fit (or resume fitting) one scene's teacher from the "
                        "store")
    f.add_argument("store", help="store path or URL holding the ingested scene")
    add_storage_option_argument(f)
    add_scene_argument(f, many=False, required=True)
    f.add_argument("--out", required=True, type=Path,
                   help="checkpoint file; when it exists the fit resumes from it")
    f.add_argument("--steps", type=int, default=None, help="total steps (default: config's)")
    f.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    f.add_argument("--config", type=Path, default=None,
                   help="teacher config, JSON or TOML (fields of FitConfig; omitted ones "
                   "keep their defaults; when resuming without it, the checkpoint's)")
    # None: the job's own default (TeacherFitJob), read only when a fit runs, so that the
    # parser of every command is built without importing torch
    f.add_argument("--holdout", type=int, default=None,
                   help="keyframes held out of the fit to measure the teacher (0: none; "
                   "default: 2)")
    f.add_argument("--keyframes-only", action="store_true",
                   help="fit on keyframes alone (default: every frame the store holds: "
                   "keyframes and, when ingested with --sweeps, the sweeps between them)")
    f.add_argument("--static", action="store_true",
                   help="no dynamic field (a scene without moving objects; steps are about "
                   "1.3x faster); the same as \"dynamic\": null in --config")
    f.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                   help="steps between checkpoints (default: 500)")
    f.add_argument("--json", action="store_true")
    f.set_defaults(run=run_fit)
    r = tsub.add_parser("render", help="render a fitted teacher's dense depth and virtual "
                        "views into the store")
    r.add_argument("store", help="store path or URL")
    add_storage_option_argument(r)
    r.add_argument("--checkpoint", required=True, type=Path, help="the fitted teacher")
    r.add_argument("--config", type=Path, default=None,
                   help="teacher config the checkpoint must have been fitted with")
    r.add_argument("--render-config", type=Path, default=None,
                   help="render config, JSON or TOML (fields of RenderConfig)")
    r.add_argument("--scale", type=float, default=None,
                   help="render size relative to the camera images, for dense depth and "
                   "virtual views alike (overrides the render config's)")
    r.add_argument("--all-samples", action="store_true",
                   help="render the sweep images the store holds too (default: keyframes)")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    r.add_argument("--json", action="store_true")
    r.set_defaults(run=run_render)


def _fit_config(args):
    from distillprep.teachers.nerf.config import FitConfig
    from distillprep.teachers.nerf.config_io import load_config_file

    config = load_config_file(FitConfig, args.config) if args.config else None
    if getattr(args, "static", False):
        config = dataclasses.replace(config or FitConfig(), dynamic=None)
    return config


def run_fit(args) -> int:
    from tqdm import tqdm

    from distillprep.storage_schemas.store import open_store
    from distillprep.teachers.nerf.job import TeacherFitJob, fit_teacher

    check_device(args.device)
    store = open_store(args.store, storage_options=storage_options(args))
    given = {"holdout": args.holdout, "checkpoint_every": args.checkpoint_every}
    job = TeacherFitJob(fit=_fit_config(args), steps=args.steps, device=args.device,
                        keyframes_only=args.keyframes_only,
                        **{k: v for k, v in given.items() if v is not None})
    bar = tqdm(unit="step", disable=args.json, file=sys.stderr)
    last = {"step": None, "seconds": None}

    def progress(step, total, record):
        bar.total = total
        if last["step"] is not None and step > last["step"]:
            elapsed = max(record["seconds"] - last["seconds"], 1e-9)
            bar.set_postfix(loss=f"{record['rgb_loss']:.4f}", psnr=f"{record['psnr']:.1f}",
                            steps_s=f"{(step - last['step']) / elapsed:.1f}")
        last.update(step=step, seconds=record["seconds"])
        bar.update(step - bar.n)

    try:
        result = fit_teacher(store, args.scene, args.out, job, progress)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: checkpoint {args.out} saved; run the same command to resume",
              file=sys.stderr)
        return 130
    finally:
        bar.close()
    final = result.last
    report = {"scene_id": result.scene_id, "checkpoint": str(result.checkpoint),
              "status": result.status, "step": result.step, "steps_now": result.steps_now,
              "resumed": result.status != "fitted", "wall_time_s": round(result.wall_time_s, 1),
              "backend": result.backend, "frames": result.frames, "final": final}
    done = " (already there: nothing to do)" if result.status == "done" else ""
    emit(args, report, f"scene {result.scene_id}: {result.step} steps in "
         f"{result.wall_time_s / 60:.1f} min{done}, last PSNR "
         f"{final.get('psnr', float('nan')):.2f} dB (train rays); checkpoint {args.out}")
    return 0


def run_render(args) -> int:
    from tqdm import tqdm

    from distillprep.storage_schemas.store import open_store
    from distillprep.teachers.errors import TeacherConfigError
    from distillprep.teachers.nerf.checkpoint import load_checkpoint
    from distillprep.teachers.nerf.config_io import load_config_file
    from distillprep.teachers.nerf.job import TeacherRenderJob, render_teacher
    from distillprep.teachers.nerf.outputs import RenderConfig

    check_device(args.device)
    render = (load_config_file(RenderConfig, args.render_config) if args.render_config
              else RenderConfig())
    if args.scale is not None:
        if not args.scale > 0:
            raise TeacherConfigError(f"--scale {args.scale}: must be > 0")
        render = dataclasses.replace(
            render, scale=args.scale,
            virtual=dataclasses.replace(render.virtual, resolution_scale=args.scale))
    job = TeacherRenderJob(render=render, samples="all" if args.all_samples else "keyframes",
                           fit=_fit_config(args) if args.config else None, device=args.device)
    store = open_store(args.store, mode="a", storage_options=storage_options(args))
    scene_id = load_checkpoint(args.checkpoint).scene_id
    result = render_teacher(store, scene_id, args.checkpoint, job,
                            progress=None if args.json else lambda it: tqdm(
                                it, unit="image", file=sys.stderr))
    record = result.commit.provenance
    report = {"scene_id": scene_id, "store": str(args.store), "status": result.status,
              "heldout_psnr_db": record.heldout_psnr_db, "train_psnr_db": record.train_psnr_db,
              "lidar_abs_rel": record.lidar_abs_rel,
              "virtual_views": record.virtual_views.model_dump(),
              "rendered_samples": len(record.rendered_samples),
              "render_time_s": record.render_time_s}
    done = " (already committed: nothing to do)" if result.status == "skipped" else ""
    emit(args, report, f"scene {scene_id}: teacher outputs committed to {args.store}{done} "
         f"(held-out PSNR {record.heldout_psnr_db} dB, LiDAR AbsRel {record.lidar_abs_rel}, "
         f"virtual views kept {record.virtual_views.kept}, moved {record.virtual_views.moved}, "
         f"dropped {record.virtual_views.dropped})")
    return 0


COMMANDS = (add_teacher,)
