"""CLI commands of the storage stage: `ingest`, `validate`, `inspect`."""

from __future__ import annotations

from pathlib import Path

from .cli_common import emit


def _storage_option_argument(parser) -> None:
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec option for a store URL, e.g. endpoint_url=http://... "
                        "(repeatable; credentials also come from the usual environment)")


def _storage_options(args) -> dict[str, str]:
    options = {}
    for item in args.storage_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--storage-option {item!r} is not KEY=VALUE")
        options[key] = value
    return options


def add_ingest(sub) -> None:
    p = sub.add_parser("ingest", help="write a dataset's scenes into a store (resumable)")
    p.add_argument("dataroot", type=Path)
    p.add_argument("--dataset", default="nuscenes", choices=["nuscenes"])
    p.add_argument("--out", required=True, help="store path or URL (s3://..., memory://...)")
    _storage_option_argument(p)
    p.add_argument("--version", default=None, help="dataset version (detected when only one)")
    p.add_argument("--scenes", nargs="+", default=None, help="scene ids (default: all)")
    p.add_argument("--sweeps", action="store_true", help="ingest sweep images too")
    p.add_argument("--force", action="store_true", help="rewrite scenes already committed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_ingest)


def run_ingest(args) -> int:
    from tqdm import tqdm

    from distillprep.scenes.datasets import read_dataset
    from distillprep.storage_schemas.ingest import ingest
    from distillprep.storage_schemas.store import create_store

    read = read_dataset(args.dataset, str(args.dataroot), version=args.version,
                        scenes=args.scenes, sweeps=args.sweeps, skip_bad=True)
    store = create_store(args.out, args.dataset, read.version,
                         storage_options=_storage_options(args))
    config = {"dataset": args.dataset, "version": read.version, "sweeps": args.sweeps}
    result = ingest(store, read.scenes, config, force=args.force,
                    progress=None if args.json else lambda it: tqdm(it, unit="scene"))
    for failure in read.failures:
        result.failed[failure.scene] = str(failure.error)
    lines = [f"{args.out}: wrote {len(result.written)} scene(s), skipped "
             f"{len(result.skipped)} already committed (use --force to rewrite)"]
    lines += [f"  FAILED {scene}: {why}" for scene, why in result.failed.items()]
    emit(args, {"store": str(args.out), **result.to_json()}, "\n".join(lines))
    return 1 if result.failed else 0


def add_validate(sub) -> None:
    p = sub.add_parser("validate", help="check a store against its schema (exit 0 valid, "
                       "1 broken rules, 2 not a store)")
    p.add_argument("store")
    _storage_option_argument(p)
    p.add_argument("--deep", action="store_true", help="read every chunk, verify checksums")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_validate)


def run_validate(args) -> int:
    from distillprep.storage_schemas.validate import format_report, validate_store

    result = validate_store(args.store, deep=args.deep, storage_options=_storage_options(args))
    emit(args, result.to_json(), format_report(result))
    return result.exit_code


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="sizes, compression, statistics, stages; --png previews")
    p.add_argument("store")
    _storage_option_argument(p)
    p.add_argument("--scene", default=None, help="one scene (default: all)")
    p.add_argument("--png", type=Path, default=None, help="write preview PNGs here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_inspect)


def run_inspect(args) -> int:
    from distillprep.storage_schemas.inspect import format_summary, summarize, write_previews
    from distillprep.storage_schemas.store import open_store

    store = open_store(args.store, storage_options=_storage_options(args))
    scenes = None if args.scene is None else [args.scene]
    summary = summarize(store, scenes)
    text = format_summary(summary)
    if args.png is not None:
        previews = []
        for scene_id in scenes or store.scenes()[:1]:
            previews += [str(p) for p in write_previews(store, scene_id, args.png)]
        summary["previews"] = previews
        text += "\n  previews:\n" + "\n".join(f"    {p}" for p in previews)
    emit(args, summary, text)
    return 0


COMMANDS = (add_ingest, add_validate, add_inspect)
