"""CLI commands of the teacher stage: `teacher fit` (resumable, checkpointed) and
`teacher render` (dense depth and virtual views into a store)."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from datetime import UTC, datetime
from pathlib import Path

from .cli_common import emit
from .cli_common import add_storage_option_argument as _storage_option_argument
from .cli_common import storage_options as _storage_options

CHECKPOINT_EVERY = 500


def add_teacher(sub) -> None:
    p = sub.add_parser("teacher", help="fit a scene's neural-field teacher and render it")
    tsub = p.add_subparsers(dest="teacher_command", required=True)
    f = tsub.add_parser("fit", help="fit (or resume fitting) one scene's teacher")
    f.add_argument("dataroot", type=Path)
    f.add_argument("--dataset", default="nuscenes", choices=["nuscenes"])
    f.add_argument("--version", default=None, help="dataset version (detected when only one)")
    f.add_argument("--scene", required=True, help="scene id")
    f.add_argument("--out", required=True, type=Path,
                   help="checkpoint file; when it exists the fit resumes from it")
    f.add_argument("--steps", type=int, default=None, help="total steps (default: config's)")
    f.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    f.add_argument("--config", type=Path, default=None,
                   help="teacher config, JSON or TOML (fields of FitConfig; omitted ones "
                   "keep their defaults)")
    f.add_argument("--holdout", type=int, default=2,
                   help="keyframes held out of the fit to measure the teacher (0: none)")
    f.add_argument("--keyframes-only", action="store_true",
                   help="fit on keyframes alone (default: keyframes and every camera and "
                   "LiDAR sweep between them, as EmerNeRF does)")
    f.add_argument("--static", action="store_true",
                   help="no dynamic field (a scene without moving objects; steps are about "
                   "1.3x faster); the same as \"dynamic\": null in --config")
    f.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY, metavar="STEPS")
    f.add_argument("--json", action="store_true")
    f.set_defaults(run=run_fit)
    r = tsub.add_parser("render", help="render a fitted teacher's dense depth and virtual "
                        "views into a store (ingesting the scene first if needed)")
    r.add_argument("checkpoint", type=Path)
    r.add_argument("--store", required=True, help="store path or URL")
    _storage_option_argument(r)
    r.add_argument("--dataroot", type=Path, default=None,
                   help="dataset root (default: the one the checkpoint was fitted from)")
    r.add_argument("--config", type=Path, default=None,
                   help="teacher config the checkpoint must have been fitted with")
    r.add_argument("--render-config", type=Path, default=None,
                   help="render config, JSON or TOML (fields of RenderConfig)")
    r.add_argument("--scale", type=float, default=None,
                   help="render size relative to the camera images, for dense depth and "
                   "virtual views alike (overrides the render config's)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(run=run_render)


def _device(name: str) -> None:
    import torch

    if name == "cuda":
        seen = "" if torch.cuda.is_available() else " (and torch sees no CUDA device here)"
        raise ValueError(f"--device cuda: the teacher runs on the CPU only in this version{seen}")


def run_fit(args) -> int:
    from tqdm import tqdm

    from distillprep.scenes.datasets import read_dataset
    from distillprep.teachers.errors import TeacherDivergedError
    from distillprep.teachers.nerf.checkpoint import (
        check_matches,
        load_checkpoint,
        save_checkpoint,
        scene_fingerprint,
    )
    from distillprep.teachers.nerf.config import FitConfig
    from distillprep.teachers.nerf.config_io import load_config_file
    from distillprep.teachers.nerf.fit import TrainingRays, resume_state, start_fit, train
    from distillprep.teachers.nerf.rays import check_scene_for_fit, holdout_frames

    _device(args.device)
    config = load_config_file(FitConfig, args.config) if args.config else None
    if args.static:
        config = dataclasses.replace(config or FitConfig(), dynamic=None)
    resumed = args.out.exists()
    checkpoint = load_checkpoint(args.out) if resumed else None
    sweeps = not args.keyframes_only
    fitted_sweeps = checkpoint.source.get("sweeps", False) if checkpoint else sweeps
    if fitted_sweeps != sweeps:
        was, resume = ("with", "without") if fitted_sweeps else ("without", "with")
        raise ValueError(f"checkpoint {args.out} was fitted {was} sweep frames; resume it "
                         f"{resume} --keyframes-only")
    read = read_dataset(args.dataset, str(args.dataroot), version=args.version,
                        scenes=[args.scene], sweeps=sweeps)
    scene = read.scenes[0]
    check_scene_for_fit(scene)
    if checkpoint is not None:
        check_matches(checkpoint, scene.scene_id, scene_fingerprint(scene), config)
        state, frames = resume_state(checkpoint), checkpoint.frames
        config = state.teacher.config
    else:
        config = config or FitConfig()
        frames = holdout_frames(scene, args.holdout)[0] if args.holdout else list(
            range(len(scene.frames)))
    steps = args.steps if args.steps is not None else config.steps
    config = dataclasses.replace(config, steps=steps, log_every=min(config.log_every, 10))
    if resumed:
        rays = TrainingRays.of(scene, frames, config)
    else:
        state, rays = start_fit(scene, frames, config)
    state.teacher.config = config
    source = {"dataset": args.dataset, "dataroot": str(args.dataroot.resolve()),
              "version": read.version, "sweeps": sweeps}
    saved = {"step": state.step if resumed else None}

    def save():
        save_checkpoint(args.out, state, scene.scene_id, scene_fingerprint(scene), frames,
                        source)
        saved["step"] = state.step

    bar = tqdm(total=steps, initial=state.step, unit="step", disable=args.json,
               file=sys.stderr)
    last = {"step": state.step, "seconds": state.wall_time_s}

    def callback(step, record, teacher):
        rate = (step - last["step"]) * config.camera_rays / max(
            record["seconds"] - last["seconds"], 1e-9)
        last.update(step=step, seconds=record["seconds"])
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{record['rgb_loss']:.4f}", psnr=f"{record['psnr']:.1f}",
                        rays_s=f"{rate:.0f}")
        if step - (saved["step"] or 0) >= args.checkpoint_every:
            save()
        return False

    try:
        train(state, rays, steps, callback)
    except TeacherDivergedError as exc:
        bar.close()
        good = (f"last good checkpoint: {args.out} (step {saved['step']})"
                if saved["step"] is not None else "no checkpoint was written before it")
        raise ValueError(f"scene {scene.scene_id!r}: fit stopped, {exc}; {good}") from None
    except KeyboardInterrupt:
        bar.close()
        save()
        print(f"interrupted: checkpoint {args.out} at step {state.step}; run the same "
              "command to resume", file=sys.stderr)
        return 130
    bar.close()
    save()
    final = state.teacher.history[-1] if state.teacher.history else {}
    report = {"scene_id": scene.scene_id, "checkpoint": str(args.out), "step": state.step,
              "resumed": resumed, "wall_time_s": round(state.wall_time_s, 1),
              "backend": state.teacher.field.grid.backend, "frames": frames,
              "final": final}
    emit(args, report, f"scene {scene.scene_id}: {state.step} steps in "
         f"{state.wall_time_s / 60:.1f} min, last PSNR {final.get('psnr', float('nan')):.2f} dB "
         f"(train rays); checkpoint {args.out}")
    return 0


def run_render(args) -> int:
    from tqdm import tqdm

    from distillprep.scenes.datasets import read_dataset
    from distillprep.storage_schemas.attrs import StageRecord, config_hash
    from distillprep.storage_schemas.ingest import ingest_scene
    from distillprep.storage_schemas.store import create_store, package_version
    from distillprep.teachers.nerf.checkpoint import (
        check_matches,
        load_checkpoint,
        scene_fingerprint,
    )
    from distillprep.teachers.nerf.config import FitConfig
    from distillprep.teachers.nerf.config_io import load_config_file, to_dict
    from distillprep.teachers.nerf.outputs import RenderConfig, render_outputs

    checkpoint = load_checkpoint(args.checkpoint)
    source = checkpoint.source
    dataroot = args.dataroot or source.get("dataroot")
    if not dataroot:
        raise ValueError(f"checkpoint {args.checkpoint} does not say where its dataset is: "
                         "pass --dataroot")
    read = read_dataset(source.get("dataset", "nuscenes"), str(dataroot),
                        version=source.get("version"), scenes=[checkpoint.scene_id],
                        sweeps=bool(source.get("sweeps", False)))
    fitted_on = read.scenes[0]
    expected = load_config_file(FitConfig, args.config) if args.config else None
    check_matches(checkpoint, fitted_on.scene_id, scene_fingerprint(fitted_on), expected)
    # the store holds keyframes: render those; a keyframe the fit did not see is held out
    scene = fitted_on.keyframes_only()
    fitted_times = {fitted_on.frames[i].timestamp_us for i in checkpoint.frames}
    fitted_keyframes = [f.index for f in scene.frames if f.timestamp_us in fitted_times]
    render_config = (load_config_file(RenderConfig, args.render_config)
                     if args.render_config else RenderConfig())
    if args.scale is not None:
        if not args.scale > 0:
            raise ValueError(f"--scale {args.scale}: must be > 0")
        render_config = dataclasses.replace(
            render_config, scale=args.scale,
            virtual=dataclasses.replace(render_config.virtual, resolution_scale=args.scale))
    store = create_store(args.store, scene.dataset, read.version,
                         storage_options=_storage_options(args))
    ingested = scene.scene_id not in store.scenes()
    if ingested:
        ingest_scene(store, scene, {"dataset": scene.dataset, "version": read.version,
                                    "sweeps": False})
    _check_store_scene(store, scene)
    teacher = checkpoint.teacher
    outputs = render_outputs(teacher, scene, fitted_keyframes, render_config,
                             progress=None if args.json else lambda it: tqdm(
                                 it, unit="image", file=sys.stderr))
    config = {"fit": to_dict(teacher.config), "render": to_dict(render_config)}
    history = teacher.history[-1] if teacher.history else {}
    record = StageRecord(
        stage="teacher", config=config, config_hash=config_hash(config),
        package_version=package_version(), finished_at=datetime.now(UTC),
        wall_time_s=checkpoint.wall_time_s + outputs.figures["render_time_s"],
        extra={"backend": checkpoint.backend, "steps": checkpoint.step,
               "fit_wall_time_s": round(checkpoint.wall_time_s, 1),
               "final_losses": {k: history.get(k) for k in ("rgb_loss", "depth_loss")},
               "fitted_frames": fitted_keyframes,
               "fitted_sweep_frames": len(checkpoint.frames) - len(fitted_keyframes),
               "checkpoint_sha256": hashlib.sha256(args.checkpoint.read_bytes()).hexdigest(),
               **outputs.figures})
    store.replace_stage(scene.scene_id, record, outputs.arrays, outputs.columns)
    figures = outputs.figures
    report = {"scene_id": scene.scene_id, "store": str(args.store), "ingested": ingested,
              **figures}
    emit(args, report, f"scene {scene.scene_id}: teacher outputs committed to {args.store} "
         f"(held-out PSNR {figures['heldout_psnr_db']} dB, LiDAR AbsRel "
         f"{figures['lidar_abs_rel']}, virtual views {figures['virtual_views']})")
    return 0


def _check_store_scene(store, scene) -> None:
    """The store's version of the scene must hold the same images as the dataset's."""
    stored = [Path(p).name for p in store.manifest([scene.scene_id]).column(
        "source_file").to_pylist()]
    ours = [Path(s.source_file).name for s in scene.camera_samples]
    if stored != ours:
        raise ValueError(f"scene {scene.scene_id!r}: store {store.location.location} holds "
                         f"other images than the dataset ({len(stored)} vs {len(ours)} "
                         "samples, or other files); re-ingest it with `distillprep ingest "
                         "--force`")


COMMANDS = (add_teacher,)
