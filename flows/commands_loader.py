"""CLI command of the student's data: `loader-check` streams one epoch of stores through
the training loader and prints what a researcher checks first."""

from __future__ import annotations

from .cli_common import add_scene_argument, add_storage_option_argument, emit, storage_options


def add_loader_check(sub) -> None:
    p = sub.add_parser("loader-check", help="stream one epoch of stores through the "
                       "student's loader: frames, scenes, fields, frames/s")
    p.add_argument("stores", nargs="+", metavar="STORE", help="store paths or URLs")
    add_storage_option_argument(p)
    p.add_argument("--arrays", nargs="+", default=None, metavar="FIELD",
                   help="fields to read (default: every field all scenes have, but the "
                   "next frame's)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--resize", default=None, metavar="WxH",
                   help="resample images in the workers, e.g. 228x128 (DistillNeRF's)")
    add_scene_argument(p)
    p.add_argument("--split", default="all", choices=["all", "train", "val"])
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--keyframes-only", action="store_true")
    p.add_argument("--min-teacher-psnr", type=float, default=None, metavar="DB")
    p.add_argument("--max-teacher-abs-rel", type=float, default=None)
    p.add_argument("--min-lidar-fraction", type=float, default=None)
    p.add_argument("--exclude-teacher-heldout", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_loader_check)


def _size(text: str | None) -> tuple[int, int] | None:
    from distillprep.scenes.errors import ConfigError

    if text is None:
        return None
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise ConfigError(f"--resize {text!r} is not WIDTHxHEIGHT (e.g. 228x128)")
    return int(w), int(h)


def run_loader_check(args) -> int:
    import time

    from distillprep.storage_schemas.store import open_store
    from distillprep.student.data import LoaderConfig, StoreDataset, StoreLoader
    from distillprep.student.data.config import NEXT_FIELDS
    from distillprep.student.data.plan import available_fields

    options = storage_options(args)
    first = open_store(args.stores[0], storage_options=options)
    scenes = args.scenes or first.scenes()
    have = available_fields(first, [s for s in scenes if s in first.scenes()])
    fields = tuple(args.arrays or [f for f in have if f not in NEXT_FIELDS])
    config = LoaderConfig(
        fields=fields, scenes=tuple(args.scenes) if args.scenes else None, split=args.split,
        val_fraction=args.val_fraction, keyframes_only=args.keyframes_only,
        min_teacher_psnr=args.min_teacher_psnr, max_teacher_abs_rel=args.max_teacher_abs_rel,
        min_lidar_fraction=args.min_lidar_fraction,
        exclude_teacher_heldout=args.exclude_teacher_heldout, resize=_size(args.resize),
        batch_size=args.batch_size, seed=args.seed)
    start = time.perf_counter()
    dataset = StoreDataset(args.stores, config, storage_options=options)
    planned = time.perf_counter() - start
    loader = StoreLoader(dataset, num_workers=args.workers)
    shapes: dict[str, str] = {}
    frames, scenes_seen, first_batch = 0, set(), None
    start = time.perf_counter()
    for batch in loader:
        if first_batch is None:
            first_batch = time.perf_counter() - start
            shapes = {k: f"{tuple(v.shape[1:])} {str(v.dtype).replace('torch.', '')}"
                      for k, v in batch.items() if hasattr(v, "shape") and v.ndim > 1}
        frames += len(batch["scene_id"])
        scenes_seen.update(batch["scene_id"])
    seconds = time.perf_counter() - start
    report = {
        "stores": args.stores, "frames": frames, "planned_frames": len(dataset),
        "scenes": len(scenes_seen), "cameras": list(dataset.plan.cameras),
        "batches": len(loader), "fields": list(fields), "fields_available": have,
        "shapes": shapes, "excluded": dataset.plan.excluded, "workers": args.workers,
        "seconds_to_plan": round(planned, 3),
        "seconds_to_first_batch": round(first_batch or 0.0, 3),
        "frames_per_second": round(frames / seconds, 2) if seconds > 0 else None}
    lines = [f"{', '.join(args.stores)}: {frames} frames of {len(scenes_seen)} scene(s), "
             f"{len(dataset.plan.cameras)} cameras each, in {len(loader)} batch(es)",
             f"  fields available: {', '.join(have)}",
             *(f"  {k}: {v}" for k, v in shapes.items()),
             *(f"  left out: {n} frame(s): {why}" for why, n in dataset.plan.excluded.items()
               if n),
             f"  {report['frames_per_second']} frames/s with {args.workers} worker(s); "
             f"plan {planned:.2f} s, first batch after {report['seconds_to_first_batch']} s"]
    emit(args, report, "\n".join(lines))
    return 0 if frames == len(dataset) else 1


COMMANDS = (add_loader_check,)
