"""`distillprep` command line: parses arguments, calls plain functions, reports.

Every command that reports takes `--json`. Exit codes: 0 success, 1 bad data or a failed
step (the message names the scene, the file and what is wrong), 2 bad usage or, for
`validate` and `inspect`, a path that is not a store.
"""

from __future__ import annotations

import argparse
import sys

from distillprep.scenes.errors import SceneError
from distillprep.storage_schemas.errors import NotAStoreError, StoreError

from . import (
    commands_export,
    commands_features,
    commands_scenes,
    commands_store,
    commands_teacher,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillprep",
        description="Data preparation and teacher distillation for DistillNeRF-style models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (commands_scenes.COMMANDS + commands_store.COMMANDS
                + commands_teacher.COMMANDS + commands_features.COMMANDS):
        add(sub)
    commands_export.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except NotAStoreError as exc:
        print(f"distillprep {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (SceneError, StoreError, FileExistsError, ValueError) as exc:
        print(f"distillprep {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
