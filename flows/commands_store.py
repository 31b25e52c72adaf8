"""CLI commands of the storage stage: `ingest`, `validate`, `inspect`, `migrate`."""

from __future__ import annotations

from pathlib import Path

from distillprep.scenes.errors import EXIT_BAD_DATA, EXIT_CONFLICT

from .cli_common import (
    add_dataset_argument,
    add_scene_argument,
    add_storage_option_argument,
    emit,
    storage_options,
)


def add_ingest(sub) -> None:
    p = sub.add_parser("ingest", help="write a dataset's scenes into a store (resumable); "
                       "the only command that reads the dataset")
    p.add_argument("dataroot", type=Path)
    add_dataset_argument(p)
    p.add_argument("--out", required=True, help="store path or URL (s3://..., memory://...)")
    add_storage_option_argument(p)
    p.add_argument("--version", default=None, help="dataset version (detected when only one)")
    add_scene_argument(p)
    p.add_argument("--sweeps", action="store_true",
                   help="ingest the camera and LiDAR sweeps between keyframes too (what a "
                   "teacher fits on, as EmerNeRF does)")
    p.add_argument("--sky-masks", action="store_true",
                   help="ingest every image's sky mask too, from DATAROOT/sky_masks/<the "
                   "image's path>.png (a segmentation model's, nonzero on sky); the "
                   "teacher then takes the sky from them instead of the LiDAR")
    p.add_argument("--force", action="store_true",
                   help="rewrite scenes already committed (also one of another source "
                   "under the same id)")
    p.add_argument("--replace-outputs", action="store_true",
                   help="rewrite a scene whose content changed although later stages' "
                   "outputs were made from the old version (they become stale)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_ingest)


def run_ingest(args) -> int:
    from tqdm import tqdm

    from distillprep.scenes.datasets import read_dataset
    from distillprep.storage_schemas.ingest import IngestConfig, ingest
    from distillprep.storage_schemas.store import create_store

    read = read_dataset(args.dataset, str(args.dataroot), version=args.version,
                        scenes=args.scenes, sweeps=args.sweeps, skip_bad=True)
    store = create_store(args.out, args.dataset, read.version,
                         storage_options=storage_options(args))
    config = IngestConfig(dataset=args.dataset, version=read.version, sweeps=args.sweeps,
                          sky_masks=args.sky_masks)
    result = ingest(store, read.scenes, config, force=args.force,
                    replace_outputs=args.replace_outputs,
                    progress=None if args.json else lambda it: tqdm(it, unit="scene"))
    for failure in read.failures:
        result.failed[failure.scene] = str(failure.error)
    lines = [f"{args.out}: wrote {len(result.written)} scene(s), skipped "
             f"{len(result.skipped)} already committed (use --force to rewrite)"]
    lines += [f"  {scene}: new content, so its {', '.join(stages)} outputs are stale now: "
              "run those stages again" for scene, stages in result.stale.items()]
    lines += [f"  FAILED {scene}: {why}" for scene, why in result.failed.items()]
    lines += [f"  LOST A RACE {scene}: {why}" for scene, why in result.conflicts.items()]
    emit(args, {"store": str(args.out), **result.to_json()}, "\n".join(lines))
    if result.failed:
        return EXIT_BAD_DATA
    return EXIT_CONFLICT if result.conflicts else 0


def add_validate(sub) -> None:
    p = sub.add_parser("validate", help="check a store against its schema (exit 0 valid, "
                       "1 broken rules, 2 not a store)")
    p.add_argument("store")
    add_storage_option_argument(p)
    p.add_argument("--deep", action="store_true", help="read every chunk, verify checksums")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_validate)


def run_validate(args) -> int:
    from distillprep.storage_schemas.errors import NotAStoreError
    from distillprep.storage_schemas.validate import format_report, validate_store

    try:
        result = validate_store(args.store, deep=args.deep,
                                storage_options=storage_options(args))
    except NotAStoreError as exc:
        if not args.json:
            raise
        emit(args, {"store": args.store, "deep": args.deep, "valid": False,
                    "error": str(exc), "findings": []}, "")
        return exc.exit_code
    emit(args, result.to_json(), format_report(result))
    return result.exit_code


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="sizes, compression, statistics, stages; --png previews")
    p.add_argument("store")
    add_storage_option_argument(p)
    add_scene_argument(p)
    p.add_argument("--png", type=Path, default=None,
                   help="write labelled preview PNGs here (default: of the first scene)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_inspect)


def run_inspect(args) -> int:
    from distillprep.storage_schemas.inspect import format_summary, summarize, write_previews
    from distillprep.storage_schemas.store import open_store

    store = open_store(args.store, storage_options=storage_options(args))
    summary = summarize(store, args.scenes)
    text = format_summary(summary)
    if args.png is not None:
        previews = []
        for scene_id in args.scenes or store.scenes()[:1]:
            previews += [str(p) for p in write_previews(store, scene_id, args.png)]
        summary["previews"] = previews
        text += "\n  previews:\n" + "\n".join(f"    {p}" for p in previews)
    emit(args, summary, text)
    return 0


def add_migrate(sub) -> None:
    p = sub.add_parser("migrate", help="upgrade a store of an older schema version in place")
    p.add_argument("store")
    add_storage_option_argument(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_migrate)


def run_migrate(args) -> int:
    from distillprep.storage_schemas.attrs import SCHEMA_VERSION
    from distillprep.storage_schemas.migrate import migrate_store

    report = migrate_store(args.store, storage_options=storage_options(args))
    text = (f"{args.store}: already at schema version {report.from_version}; nothing to do"
            if report.already else
            f"{args.store}: schema version {report.from_version} -> {SCHEMA_VERSION}: "
            f"{len(report.scenes)} scene(s), {report.stages} stage commit(s) rewritten. "
            "Scenes from version 2 hold no LiDAR points: re-run `distillprep ingest` on "
            "them before fitting teachers (with --replace-outputs where they have teacher or "
            "feature outputs, which are then made again)")
    emit(args, report.to_json(), text)
    return 0


COMMANDS = (add_ingest, add_validate, add_inspect, add_migrate)
