"""CLI commands that write a store's outputs in other projects' layouts:
`export distillnerf`."""

from __future__ import annotations

from pathlib import Path

from .cli_common import add_scene_argument, add_storage_option_argument, emit, storage_options


def register(sub) -> None:
    """Add `export` and its formats to the top-level subparsers."""
    p = sub.add_parser("export", help="write a store's outputs in another code base's layout")
    formats = p.add_subparsers(dest="format", required=True)
    d = formats.add_parser(
        "distillnerf", help="teacher depth and virtual views in the official DistillNeRF "
        "layout (nuScenes stores: OUT is its nuscenes_emernerf/ folder; Waymo stores: its "
        "data/waymo/kitti_format/, with waymo_infos_train.pkl)")
    d.add_argument("store", help="store path or URL")
    d.add_argument("out", type=Path, help="export root (DistillNeRF's nuscenes_emernerf/, "
                   "or for Waymo its kitti_format/)")
    add_storage_option_argument(d)
    add_scene_argument(d)
    d.add_argument("--include-moved", action="store_true",
                   help="also write virtual views moved out of solid geometry or jittered "
                   "(DistillNeRF would take them at the pose their folder names)")
    d.add_argument("--waymo-set", choices=["train", "val"], default="train",
                   help="Waymo stores: the info file the scenes go to (waymo_infos_<set>.pkl; "
                   "both sets can share one OUT)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(run=run_export_distillnerf)


def run_export_distillnerf(args) -> int:
    from distillprep.storage_schemas.export_distillnerf import export_distillnerf
    from distillprep.storage_schemas.store import open_store

    store = open_store(args.store, storage_options=storage_options(args))
    report = export_distillnerf(store, args.out, scene_ids=args.scenes,
                                include_moved=args.include_moved, waymo_set=args.waymo_set)
    lines = [f"{args.out}: wrote {len(report.files)} file(s) for {len(report.scenes)} "
             f"scene(s): {report.real_views} real view(s), {report.virtual_views} virtual "
             "view(s)"]
    by_reason = report.skipped_by_reason()
    if by_reason:
        hint = " (use --include-moved to write moved views)" if {"moved", "off-pose"} & set(
            by_reason) else ""
        lines.append("  skipped " + ", ".join(f"{n} {reason}" for reason, n in
                                               sorted(by_reason.items())) + hint)
    lines += [f"  warning: {w}" for w in report.warnings]
    emit(args, report.to_json(), "\n".join(lines))
    return 0

