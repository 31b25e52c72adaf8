"""Failpoints: faults a test (or an operator rehearsing a failure) injects into the
steps of `prepare_dataset` through one environment variable, in the spirit of etcd's
gofail. Off unless `DISTILLPREP_FAILPOINTS` is set; a step's real work is never changed.

    DISTILLPREP_FAILPOINTS="teacher-fit@scene-0001=transient*1;ingest@scene-0002=kill*1"

Each entry is `<step>@<scene>=<fault>*<times>`; steps are the flow's task names, and
`teacher-fit-midway` (a fit past its first checkpoint). `transient` raises a retryable error,
`bad-data` a permanent one, `kill` ends the process at once (SIGKILL: a lost worker).
The count is kept in marker files under `DISTILLPREP_FAILPOINTS_DIR` (default: the work
dir), so that it holds across processes and retries: `*1` fires once in all.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from distillprep.scenes.errors import DataError, TransientError

ENV = "DISTILLPREP_FAILPOINTS"
DIR_ENV = "DISTILLPREP_FAILPOINTS_DIR"


class InjectedTransientError(TransientError):
    """A retryable fault injected through DISTILLPREP_FAILPOINTS."""


class InjectedDataError(DataError):
    """A permanent fault injected through DISTILLPREP_FAILPOINTS."""


def _entries(spec: str) -> dict[tuple[str, str], tuple[str, int]]:
    found = {}
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        where, _, fault = item.partition("=")
        step, _, scene = where.partition("@")
        kind, _, times = fault.partition("*")
        found[(step, scene)] = (kind, int(times or 1))
    return found


def hit(step: str, scene_id: str, work_dir: str) -> None:
    """Fire the failpoint of (step, scene), if one is set and has fires left."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    entry = _entries(spec).get((step, scene_id))
    if entry is None:
        return
    kind, times = entry
    folder = Path(os.environ.get(DIR_ENV) or work_dir) / "failpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(times):
        try:  # one marker per fire, created exclusively: counts hold across processes
            (folder / f"{step}@{scene_id}.{n}").open("x").close()
        except FileExistsError:
            continue
        message = f"scene {scene_id!r}: failpoint {step}={kind} fired ({n + 1} of {times})"
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "transient":
            raise InjectedTransientError(message)
        raise InjectedDataError(message)
