"""A real local Prefect server in a subprocess, for tests and for runners whose workers live
in other processes (Dask, process pools, deployment workers).

The in-process ephemeral server is not exported to child processes, so each of them would
start its own on the same database; a real server, reached through `PREFECT_API_URL`
(`server_env`), is shared by all. The server's state (its sqlite database, `server.log`)
lives under a project-local `home`, never the user's `~/.prefect`.

    with local_server(Path("work/prefect")) as url:
        subprocess.run([...], env={**os.environ, **server_env(url)}, check=True)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

POLL_S = 0.25
"""Seconds between two health checks while the server starts."""
STOP_TIMEOUT_S = 20.0
"""Seconds the server gets to stop after SIGTERM before it is killed."""
LOG_TAIL_LINES = 40
"""Lines of `server.log` quoted when the server does not come up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (free until someone binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(url: str) -> dict[str, str]:
    """The environment variables a client, worker or Dask worker needs to use the server at
    `url` (merge them into its environment)."""
    return {"PREFECT_API_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _child_env(home: Path, extra_env: Mapping[str, str] | None) -> dict[str, str]:
    """The server's environment: ours without any PREFECT_* setting (no inherited API URL,
    database URL or profile can point it elsewhere), then its home and `extra_env`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_UI_ENABLED="false")
    env.update(extra_env or {})
    return env


def _healthy(url: str) -> bool:
    """True when GET {url}/health answers 200 (proxies bypassed: the server is local)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of the server's log (empty when there is none)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminates the server's process group; kills it when it does not stop in time."""
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def local_server(home: Path, port: int | None = None, timeout_s: float = 120,
                 *, extra_env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Runs `prefect server start` (with its services, without the UI) on 127.0.0.1:`port`
    (a free port when None) with `PREFECT_HOME=home`, and yields its API URL
    ("http://127.0.0.1:PORT/api") once `/health` answers.

    The server's output goes to `home/server.log`; its sqlite database is Prefect's default
    under `home` (reused by a later start with the same home, which then skips the
    migrations). `extra_env` adds server settings. Raises RuntimeError, quoting the log's
    last lines, when the server exits or does not answer within `timeout_s` seconds. On
    exit the server's process group is terminated, then killed if it lingers.
    """
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
               "--port", str(port), "--no-ui", "--analytics-off"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=_child_env(home, extra_env), cwd=home,
                                   stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(url):
            if process.poll() is not None:
                raise RuntimeError(f"the Prefect server exited with code {process.returncode}"
                                   f" before answering at {url}; {log}:\n{_log_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not answer at {url}/health within"
                                   f" {timeout_s:g} s; {log}:\n{_log_tail(log)}")
            time.sleep(POLL_S)
        yield url
    finally:
        _stop(process)
