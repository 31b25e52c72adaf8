"""Task runners of `distillprep prepare`: threads in this process (Prefect's local API,
no server), or a Dask cluster (a `LocalCluster` of worker processes, or one at an
address). Dask workers run Prefect's task engine themselves and so need a real API: when
none is named (PREFECT_API_URL), a local Prefect server is started on loopback for the
run, and the workers inherit its URL through the environment."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .server import STARTUP_TIMEOUT_S
from .slots import RESOURCE

THREADS_DEFAULT = 4
"""Threads of the default runner (steps mostly wait on the store or a device slot)."""
DASK_WORKERS_DEFAULT = 2


@contextlib.contextmanager
def task_runner(kind: str, workers: int | None = None, address: str | None = None,
                server_timeout_s: float = STARTUP_TIMEOUT_S,
                ) -> Iterator[tuple[Any, float | None]]:
    """(runner, seconds a Prefect server took to start, or None when none was started);
    a server started here that does not answer within `server_timeout_s` seconds is a
    `server.ServerStartError`."""
    if kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        yield ThreadPoolTaskRunner(max_workers=workers or THREADS_DEFAULT), None
        return
    with _real_api(server_timeout_s) as started_s:
        from prefect_dask import DaskTaskRunner

        if address:
            runner = DaskTaskRunner(address=address)
        else:
            runner = DaskTaskRunner(cluster_kwargs={
                "n_workers": workers or DASK_WORKERS_DEFAULT, "threads_per_worker": 1,
                "processes": True, "dashboard_address": None,
                "resources": {RESOURCE: 1}})  # one device step per worker at a time
        yield runner, started_s


@contextlib.contextmanager
def _real_api(timeout_s: float) -> Iterator[float | None]:
    """A Prefect API every process can reach: the one PREFECT_API_URL names, else a local
    server started here for the duration (its URL exported to child processes)."""
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from .server import local_server

    start = time.perf_counter()
    home = Path(os.environ.get("PREFECT_HOME", ".distillprep/prefect"))
    with local_server(home / "server", timeout_s=timeout_s) as url:
        started_s = time.perf_counter() - start
        os.environ["PREFECT_API_URL"] = url  # Dask workers inherit it
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                yield started_s
        finally:
            os.environ.pop("PREFECT_API_URL", None)
