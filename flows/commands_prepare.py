"""`distillprep prepare`: the whole preparation of a dataset through the Prefect flow
`prepare_dataset`, in this process. Threads by default, with Prefect's local (ephemeral)
API and no server to start by hand; `--runner dask` runs the tasks on a Dask cluster,
which needs a real API: a local Prefect server on loopback is started for it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from distillprep.scenes.errors import EXIT_BAD_DATA, ConfigError, TransientError

from .cli_common import (
    add_dataset_argument,
    add_scene_argument,
    add_storage_option_argument,
    emit,
    storage_options,
)

PREFECT_HOME_DEFAULT = Path(".distillprep") / "prefect"
"""Prefect's home (database, logs) inside the working folder, never the user's home."""


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="prepare a whole dataset into a store (ingest, "
                       "teacher, features, validation) as one resumable Prefect flow")
    p.add_argument("dataroot", type=Path)
    add_dataset_argument(p)
    p.add_argument("--out", required=True, help="store path or URL")
    add_storage_option_argument(p)
    add_scene_argument(p)
    p.add_argument("--config", type=Path, default=None,
                   help="every stage's config, YAML or TOML (flows/prepare_config.py)")
    p.add_argument("--teacher-steps", type=int, default=None,
                   help="override the config's teacher fit length (quick trial runs)")
    p.add_argument("--random-init-features", action="store_true",
                   help="feature models with RANDOM weights (tests, demos)")
    p.add_argument("--runner", choices=["thread", "dask"], default="thread")
    p.add_argument("--workers", type=int, default=None,
                   help="threads (default 4) or Dask worker processes (default 2)")
    p.add_argument("--dask-address", default=None, metavar="ADDR",
                   help="join a running Dask scheduler (tcp://...) instead of a LocalCluster")
    p.add_argument("--work-dir", default=None,
                   help="teacher checkpoints (default: <store>.work beside a local store)")
    p.add_argument("--retry-quarantined", action="store_true",
                   help="try again the scenes an earlier run quarantined")
    p.add_argument("--replace-feature-runs", action="store_true",
                   help="replace a store's feature run of another config (redoes every "
                   "scene's features of that family)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_prepare)


def prefect_environment() -> None:
    """Settings Prefect reads when it is imported: a project-local home, no analytics,
    the local ephemeral API unless a server is named (PREFECT_API_URL)."""
    os.environ.setdefault("PREFECT_HOME", str(PREFECT_HOME_DEFAULT.resolve()))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "true"


def _api_ready() -> float:
    """Seconds until Prefect's API answers (starting the local one when none is named)."""
    from prefect.client.orchestration import get_client

    start = time.perf_counter()
    try:
        with get_client(sync_client=True) as client:
            client.api_healthcheck()
    except Exception as exc:  # noqa: BLE001 - the server's start-up raises anything
        raise TransientError(
            f"the Prefect API did not start ({type(exc).__name__}: {exc}); PREFECT_HOME "
            f"{os.environ.get('PREFECT_HOME')} (its server logs are there)") from None
    return time.perf_counter() - start


def run_prepare(args) -> int:
    if args.runner == "thread" and args.dask_address:
        raise ConfigError("--dask-address needs --runner dask")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be >= 1")
    from .prepare_config import PrepareConfig, load_prepare_config, with_overrides
    from .steps import check_feature_weights

    # refused before anything starts: a config that does not parse, weights not found
    check_feature_weights(with_overrides(
        load_prepare_config(args.config) if args.config else PrepareConfig(),
        args.teacher_steps, args.random_init_features))
    prefect_environment()
    from .runners import task_runner

    parameters = {"dataroot": str(args.dataroot.resolve()), "store": args.out,
                  "dataset": args.dataset, "scenes": args.scenes,
                  "config_file": str(args.config) if args.config else None,
                  "teacher_steps": args.teacher_steps,
                  "random_init_features": args.random_init_features,
                  "retry_quarantined": args.retry_quarantined,
                  "replace_feature_runs": args.replace_feature_runs,
                  "storage_options": storage_options(args) or None,
                  "work_dir": args.work_dir}
    with task_runner(args.runner, args.workers, args.dask_address) as (runner, server_s):
        startup = server_s if server_s is not None else _api_ready()
        if not args.json:
            print(f"distillprep prepare: Prefect API ready in {startup:.1f} s "
                  f"({os.environ.get('PREFECT_API_URL') or 'local ephemeral API'}, "
                  f"PREFECT_HOME {os.environ['PREFECT_HOME']})", file=sys.stderr)
        state, summary = _run_flow(runner, parameters, quiet=args.json)
    summary = {**summary, "prefect_startup_s": round(startup, 2), "state": state.name}
    emit(args, summary, _text(summary))
    return 0 if state.name == "Completed" else EXIT_BAD_DATA


def _run_flow(runner, parameters: dict, quiet: bool):
    from tqdm import tqdm

    from .prepare import prepare_dataset, set_progress

    bar = tqdm(unit="step", desc="prepare", disable=quiet, file=sys.stderr)
    def progress(result, expected: int) -> None:
        bar.total = expected
        bar.update(1)

    set_progress(progress)
    try:
        state = prepare_dataset.with_options(task_runner=runner)(**parameters,
                                                                 return_state=True)
    finally:
        set_progress(None)
        bar.close()
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):  # the flow failed before it could summarise
        raise summary if isinstance(summary, BaseException) else RuntimeError(summary)
    return state, summary


def _text(summary: dict) -> str:
    counts = summary["counts"]
    lines = [f"{summary['store']}: {counts['done']} scene(s) prepared, {counts['skipped']} "
             f"already done, {counts['quarantined']} quarantined now, "
             f"{counts['quarantined_before']} quarantined before "
             f"({summary['state']}, {summary['wall_time_s']} s)"]
    for scene in summary["scenes"]:
        if scene["error"]:
            lines.append(f"  {scene['status'].upper()} {scene['scene_id']} at "
                         f"{scene['failed_step']}: {scene['error']}")
    lines += [f"  FEATURE BASIS FAILED {model}: {error}"
              for model, error in summary["run_errors"].items()]
    return "\n".join(lines)


COMMANDS = (add_prepare,)
