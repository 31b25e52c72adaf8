"""Prefect API servers in subprocesses: a real local server, for tests and for runners whose
workers live in other processes (Dask, process pools, deployment workers), and Prefect's
local (ephemeral) API of `distillprep prepare`, started with a deadline and a log file.

The in-process ephemeral server is not exported to child processes, so each of them would
start its own on the same database; a real server, reached through `PREFECT_API_URL`
(`server_env`), is shared by all. The server's state (its sqlite database, `server.log`)
lives under a project-local `home`, never the user's `~/.prefect`.

    with local_server(Path("work/prefect")) as url:
        subprocess.run([...], env={**os.environ, **server_env(url)}, check=True)

Prefect stops its ephemeral server at interpreter exit (atexit), which a signal's default
action skips: `stop_ephemeral_api` and `kill_servers` let the CLI stop both kinds itself.
"""

from __future__ import annotations

import contextlib
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

from distillprep.scenes.errors import TransientError

STARTUP_TIMEOUT_S = 120.0
"""Seconds a server gets to answer by default: its first start on an empty home migrates
its database (measured 10-26 s on a busy 2-core machine; a third party saw 75 s)."""
POLL_S = 0.25
"""Seconds between two health checks while the server starts."""
STOP_TIMEOUT_S = 20.0
"""Seconds the server gets to stop after SIGTERM before it is killed."""
LOG_TAIL_LINES = 40
"""Lines of `server.log` quoted when the server does not come up."""
DRAIN_S = 5.0
"""Seconds Prefect's log and event workers get to deliver what they hold before the
ephemeral server stops."""
EPHEMERAL_LOG = "ephemeral-api.log"
"""The ephemeral API server's output, under PREFECT_HOME (left to itself, Prefect's server
writes to the terminal of the process that started it, and keeps no log)."""

_LOCAL_SERVERS: set[subprocess.Popen[bytes]] = set()
"""The `local_server` processes running now (`kill_servers`)."""


class ServerStartError(TransientError, RuntimeError):
    """A Prefect API server that did not come up: what happened, where its output is, and
    that output's last lines (`if_silent` said instead when there are none)."""

    def __init__(self, problem: str, log: Path, tail: str, if_silent: str = ""):
        self.problem = problem
        self.log = Path(log)
        self.tail = tail
        self.if_silent = if_silent
        said = (f", its last lines:\n{tail}" if tail.strip()
                else f" (it wrote nothing{'; ' + if_silent if if_silent else ''})")
        super().__init__(f"{problem}; the server's output is in {log}{said}")


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


def _log_tail(log: Path, lines: int = LOG_TAIL_LINES, start: int = 0) -> str:
    """The last `lines` lines of the server's log from byte `start` on (empty when there is
    none)."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
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
def local_server(home: Path, port: int | None = None, timeout_s: float = STARTUP_TIMEOUT_S,
                 *, extra_env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Runs `prefect server start` (with its services, without the UI) on 127.0.0.1:`port`
    (a free port when None) with `PREFECT_HOME=home`, and yields its API URL
    ("http://127.0.0.1:PORT/api") once `/health` answers.

    The server's output goes to `home/server.log`; its sqlite database is Prefect's default
    under `home` (reused by a later start with the same home, which then skips the
    migrations). `extra_env` adds server settings. Raises ServerStartError (a
    RuntimeError), quoting the log's last lines, when the server exits or does not answer
    within `timeout_s` seconds. On exit the server's process group is terminated, then
    killed if it lingers.
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
    _LOCAL_SERVERS.add(process)
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(url):
            if process.poll() is not None:
                raise ServerStartError(f"the Prefect server exited with code "
                                       f"{process.returncode} before answering at {url}",
                                       log, _log_tail(log))
            if time.monotonic() > deadline:
                raise ServerStartError(f"the Prefect server did not answer at {url}/health "
                                       f"within {timeout_s:g} s", log, _log_tail(log))
            time.sleep(POLL_S)
        yield url
    finally:
        _stop(process)
        _LOCAL_SERVERS.discard(process)


@contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """File descriptors 1 and 2 of this process appended to `log` for the duration: the
    subprocesses started meanwhile keep writing there."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def start_ephemeral_api(home: Path, timeout_s: float) -> Path:
    """Starts Prefect's local (ephemeral) API of this process, unless it runs already: its
    uvicorn subprocess, its output appended to `home/EPHEMERAL_LOG` (returned).

    ServerStartError, quoting what the server wrote, when it does not answer within
    `timeout_s` seconds; the server is stopped then. (Prefect counts the seconds it sleeps
    between health checks, not the checks themselves: more wall time may pass.)
    """
    from prefect.server.api.server import SubprocessASGIServer

    log = Path(home) / EPHEMERAL_LOG
    server = SubprocessASGIServer()
    if server.running:
        return log
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"--- pid {os.getpid()} starts Prefect's local API, "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
        start = f.tell()  # what the server writes comes after
    began = time.perf_counter()
    try:
        with _output_to(log):
            server.start(timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - Prefect's start-up raises anything
        server.stop()
        raise ServerStartError(
            f"Prefect's local API did not answer within {timeout_s:g} s (waited "
            f"{time.perf_counter() - began:.1f} s: {type(exc).__name__}: {exc})",
            log, _log_tail(log, start=start),
            "PREFECT_SERVER_LOGGING_LEVEL=DEBUG makes it say more") from None
    return log


def stop_ephemeral_api(drain_s: float = DRAIN_S) -> None:
    """Stops the ephemeral API server of this process, if one runs (Prefect does so only at
    interpreter exit), once Prefect's log and event workers have had `drain_s` seconds to
    deliver what they hold: against a stopped server they retry for more than a minute."""
    module = sys.modules.get("prefect.server.api.server")
    if module is None:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=drain_s)
    module.SubprocessASGIServer().stop()


def kill_servers() -> None:
    """Kills every server this process started, at once (SIGKILL): the last resort of a
    process that must exit now."""
    for process in list(_LOCAL_SERVERS):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    module = sys.modules.get("prefect.server.api.server")
    process = module and module.SubprocessASGIServer().server_process
    if process is not None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
