"""`distillprep prepare`: the whole preparation of a dataset through the Prefect flow
`prepare_dataset`, in this process. Threads by default, with Prefect's local (ephemeral)
API and no server to start by hand; `--runner dask` runs the tasks on a Dask cluster,
which needs a real API: a local Prefect server on loopback is started for it.

The API gets a start-up deadline (`api_startup_deadline`), and the ephemeral server's
output goes to a log under PREFECT_HOME that a failure names. SIGTERM and SIGINT end a
run cleanly (`_signals_unwind`): the servers stop, and the exit code is 128 + the
signal's number (143, 130)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
PREFECT_STARTUP_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
"""Prefect's own setting of its local API's start-up deadline (20 s by default)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT received by `prepare`, raised in its main thread so that every
    `finally` runs and its servers stop."""

    def __init__(self, signum: int):
        super().__init__(signum)  # args that re-create it (pickling)
        self.signum = signum

    def __str__(self) -> str:
        return signal.Signals(self.signum).name


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
    p.add_argument("--api-startup-timeout", type=float, default=None, metavar="SECONDS",
                   help="how long Prefect's API may take to start (default: the config's "
                   f"api_startup_timeout_s, else {PREFECT_STARTUP_ENV}, else 120)")
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


def api_startup_deadline(option: float | None, configured: float | None,
                         environ=os.environ) -> tuple[float, str]:
    """(seconds, where they come from) of the Prefect API's start-up deadline: the
    `--api-startup-timeout` option, else the config's `api_startup_timeout_s`, else
    Prefect's own setting when it is set, else `server.STARTUP_TIMEOUT_S`."""
    from .server import STARTUP_TIMEOUT_S

    if option is not None:
        if not option > 0:
            raise ConfigError(f"--api-startup-timeout {option:g}: must be > 0")
        return option, "--api-startup-timeout"
    if configured is not None:
        return configured, "the config's api_startup_timeout_s"
    if environ.get(PREFECT_STARTUP_ENV):
        try:
            seconds = float(environ[PREFECT_STARTUP_ENV])
        except ValueError:
            seconds = float("nan")
        if not seconds > 0:
            raise ConfigError(f"{PREFECT_STARTUP_ENV}={environ[PREFECT_STARTUP_ENV]!r}: "
                              "expected seconds > 0")
        return seconds, PREFECT_STARTUP_ENV
    return STARTUP_TIMEOUT_S, "the default"


def _raise_hint(source: str) -> str:
    return (f"that start-up deadline comes from {source}: on a busy machine raise it with "
            f"--api-startup-timeout SECONDS, the config's api_startup_timeout_s or "
            f"{PREFECT_STARTUP_ENV}")


def _api_ready(timeout_s: float) -> float:
    """Seconds until Prefect's API answers (starting the local one, with its deadline and
    its log, when none is named)."""
    from .server import start_ephemeral_api

    start = time.perf_counter()
    if not os.environ.get("PREFECT_API_URL"):
        start_ephemeral_api(Path(os.environ["PREFECT_HOME"]), timeout_s)
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.api_healthcheck()
    except Exception as exc:  # noqa: BLE001 - the client raises anything
        raise TransientError(
            f"the Prefect API at {os.environ.get('PREFECT_API_URL') or 'the local API'} "
            f"does not answer ({type(exc).__name__}: {exc})") from None
    return time.perf_counter() - start


@contextmanager
def _signals_unwind() -> Iterator[None]:
    """Within the block SIGTERM and SIGINT raise `Interrupted` in the main thread.

    SIGTERM's default action ends the process at once: no `finally`, no atexit, and
    Prefect's ephemeral server (stopped only at exit) is left running, orphaned. A second
    signal while the first unwinds kills the servers and exits at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    from .server import kill_servers

    received: list[int] = []

    def handler(signum: int, frame) -> None:
        if received:
            kill_servers()
            os._exit(128 + signum)
        received.append(signum)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)


def run_prepare(args) -> int:
    if args.runner == "thread" and args.dask_address:
        raise ConfigError("--dask-address needs --runner dask")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be >= 1")
    from .prepare_config import PrepareConfig, load_prepare_config, with_overrides
    from .steps import check_feature_weights

    # refused before anything starts: a config that does not parse, weights not found
    config = load_prepare_config(args.config) if args.config else PrepareConfig()
    check_feature_weights(with_overrides(config, args.teacher_steps,
                                         args.random_init_features))
    deadline = api_startup_deadline(args.api_startup_timeout, config.api_startup_timeout_s)
    from .server import ServerStartError

    with _signals_unwind():
        try:
            return _prepare(args, deadline)
        except ServerStartError as exc:
            raise ServerStartError(f"{exc.problem}; {_raise_hint(deadline[1])}", exc.log,
                                   exc.tail, exc.if_silent) from None
        except Interrupted as exc:
            return _stopped(exc)


def _stopped(exc: Interrupted) -> int:
    """Ends a run that a signal interrupted: the exit code, once the servers have stopped.

    The flow's unwinding waits for the steps running then, unless Prefect's own SIGTERM
    handler saw a second signal: their threads run on and would start a new local API as
    soon as the old one stops, so the process exits at once (the store keeps only whole
    commits)."""
    from .server import kill_servers, stop_ephemeral_api

    code = 128 + exc.signum
    steps = [t for t in threading.enumerate()
             if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    print(f"distillprep prepare: stopped by {exc} (exit {code}"
          f"{', steps cut short' if steps else ''}); the store keeps every commit that "
          "landed, a later run resumes from there", file=sys.stderr)
    if steps:
        kill_servers()
        sys.stderr.flush()
        os._exit(code)
    stop_ephemeral_api()  # the dask runner's server stopped as the run unwound
    return code


def _prepare(args, deadline: tuple[float, str]) -> int:
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
    with task_runner(args.runner, args.workers, args.dask_address,
                     deadline[0]) as (runner, server_s):
        startup = server_s if server_s is not None else _api_ready(deadline[0])
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
