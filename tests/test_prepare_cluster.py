"""`distillprep prepare` beyond one thread pool: on a Dask LocalCluster of 2 worker
processes (with a local Prefect server, as Dask workers need a real API), with a worker
killed mid-run; and the whole flow process SIGKILLed mid-run, then run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_prepare import CONFIG, SCENES, prepare, statuses, steps_of

from distillprep.flows.failpoints import ENV as FAILPOINTS
from distillprep.storage_schemas.store import open_store
from distillprep.storage_schemas.validate import validate_store


def _contents(store: Path) -> dict[tuple[str, str], str]:
    """(scene, stage) -> the content fingerprint of its current commit."""
    opened = open_store(store)
    return {(s, stage): record.content_sha256 for s in opened.scenes()
            for stage, record in opened.heads(s).items()}


@pytest.mark.slow  # about 100 s on 2 cores: worker processes import torch, a server starts
def test_a_dask_cluster_gives_the_threads_store_even_when_a_worker_dies(small_dataset,
                                                                         prepared, tmp_path,
                                                                         monkeypatch):
    # the tiny config runs torch on 1 thread, as Dask's workers do: equal float sums
    assert yaml.safe_load(CONFIG.read_text())["threads"] == 1
    # the worker fitting scene-0001's teacher dies (SIGKILL) past its first checkpoint
    monkeypatch.setenv(FAILPOINTS, "teacher-fit-midway@scene-0001=kill*1")
    code, dask = prepare(small_dataset, tmp_path / "dask.zarr", "--runner", "dask",
                         "--workers", "2")
    assert code == 0 and statuses(dask) == dict.fromkeys(SCENES, "done"), dask
    assert (tmp_path / "dask.zarr.work" / "failpoints" /
            "teacher-fit-midway@scene-0001.0").exists()
    fit = steps_of(dask, "scene-0001")["teacher-fit"]  # the other worker resumed it
    assert fit["fit"] == "resumed" and fit["steps_now"] == 10, fit
    store = open_store(tmp_path / "dask.zarr")
    assert store.sequences("scene-0001")["ingest"] == [1]  # committed once, never redone
    assert _contents(tmp_path / "dask.zarr") == _contents(prepared[0] / "store.zarr")
    assert validate_store(tmp_path / "dask.zarr").ok


def _commits(store: Path, stage: str) -> list[str]:
    root = store / "commits"
    return sorted(p.parent.parent.name for p in root.glob(f"*/{stage}/*.json"))


# ~2 min on 2 cores (two whole flows in subprocesses, each with its local API): slow set.
# The default suite kills and resumes each stage's own job (test_stage_jobs.py,
# test_teacher_cli.py, test_features_job.py, test_store_crash.py).
@pytest.mark.slow
def test_a_killed_flow_reruns_only_what_was_unfinished(small_dataset, tmp_path):
    store = tmp_path / "store.zarr"
    command = [sys.executable, "-m", "distillprep.flows.cli", "prepare", str(small_dataset),
               "--out", str(store), "--config", str(CONFIG), "--json"]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not _commits(store, "teacher") and time.monotonic() < deadline:
        assert run.poll() is None, "the flow ended before it could be killed"
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)  # the flow and its local API, as a lost machine
    run.wait()
    finished = _commits(store, "teacher")
    assert len(finished) == 1, finished
    assert not (store / "commits" / finished[0] / "dino_features").exists()

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    fits = {s: steps_of(summary, s)["teacher-fit"] for s in SCENES}
    assert fits[finished[0]]["status"] == "skipped"  # its teacher was committed
    (other,) = set(SCENES) - set(finished)
    # the other fit resumes its checkpoint, or finds it complete: it never starts over
    assert fits[other]["fit"] in ("resumed", "done") and fits[other]["steps_now"] < 20, fits
    assert steps_of(summary, other)["teacher-render"]["status"] == "done"
    assert all(steps_of(summary, s)["ingest"]["status"] == "skipped" for s in SCENES)
    assert {s: len(open_store(store).sequences(s)["teacher"]) for s in SCENES} == dict.fromkeys(
        SCENES, 1)
    assert validate_store(store).ok


DEPLOY = """
import sys
from distillprep.flows.prepare import prepare_dataset
prepare_dataset.from_source(source=sys.argv[1], entrypoint="flows/prepare.py:prepare_dataset"
                            ).deploy(name="test", work_pool_name="test-process-pool",
                                     parameters={"dataroot": sys.argv[2], "store": sys.argv[3],
                                                 "config_file": sys.argv[4]})
"""
TRIGGER = """
from prefect.deployments import run_deployment
run = run_deployment("prepare-dataset/test", timeout=600)
print(run.state.type.value, run.state.name)
"""


@pytest.mark.slow  # about 90 s on 2 cores: a server, a worker and a flow-run process start
def test_a_deployment_runs_on_a_process_worker_of_a_real_server(small_dataset, tmp_path):
    from distillprep.flows.server import local_server, server_env

    repo = Path(__file__).resolve().parents[1]
    store = tmp_path / "store.zarr"
    with local_server(tmp_path / "server") as url:
        env = {**os.environ, **server_env(url), "PREFECT_HOME": str(tmp_path / "client"),
               "PREFECT_WORKER_QUERY_SECONDS": "1"}

        def prefect(*args: str) -> subprocess.CompletedProcess:
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            return done

        prefect(sys.executable, "-m", "prefect", "work-pool", "create", "test-process-pool",
                "--type", "process")
        prefect(sys.executable, "-c", DEPLOY, str(repo), str(small_dataset), str(store),
                str(CONFIG))
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "test-process-pool"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        try:
            state = prefect(sys.executable, "-c", TRIGGER).stdout.split()
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=60)
    assert state == ["COMPLETED", "Completed"], state
    opened = open_store(store)
    assert opened.scenes() == SCENES
    assert all(set(opened.scene(s).stages()) == {"ingest", "teacher", "dino_features",
                                                 "clip_features"} for s in SCENES)
    assert validate_store(store).ok
