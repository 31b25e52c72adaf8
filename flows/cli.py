"""`distillprep` command line: parses arguments, calls the stages' plain functions, reports.

Every command that reports takes `--json`. Exit codes: 0 success; 1 bad data or a step
that cannot go on (the message names the scene, the file and what is wrong); 2 bad usage,
a bad config or, for `validate` and `inspect`, a path that is not a store; 3 a transient
failure (I/O: running the command again may succeed); 4 another writer committed the same
thing first; 70 an unexpected error, a bug: its traceback is printed.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from distillprep.scenes.errors import EXIT_BUG, DistillprepError

from . import (
    commands_export,
    commands_features,
    commands_loader,
    commands_prepare,
    commands_scenes,
    commands_store,
    commands_student,
    commands_teacher,
    commands_weights,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillprep",
        description="Data preparation and teacher distillation for DistillNeRF-style models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (commands_scenes.COMMANDS + commands_store.COMMANDS
                + commands_teacher.COMMANDS + commands_features.COMMANDS
                + commands_prepare.COMMANDS + commands_loader.COMMANDS
                + commands_student.COMMANDS + commands_weights.COMMANDS):
        add(sub)
    commands_export.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except DistillprepError as exc:
        hint = " (retrying may help)" if exc.retryable else ""
        print(f"distillprep {args.command}: error: {exc}{hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"distillprep {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug: show everything, with its own exit code
        traceback.print_exc()
        print(f"distillprep {args.command}: internal error (a bug in distillprep; the "
              "traceback above says where)", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
