"""Shared fixtures: small synthetic nuScenes datasets, generated once per test session."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from distillprep.scenes.synthetic.generate import SynthConfig, generate

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect (flows) in tests: a fresh home of the test session, never the user's, and its
# local ephemeral API; set before anything imports prefect (it reads them at import).
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="distillprep-prefect-")
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "true"
# its start-up deadline (20 s by default) is missed on 2 busy cores
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
# Prefect's local API logs its own shutdown at exit, after pytest closed its captures
logging.raiseExceptions = False

REPO = Path(__file__).resolve().parents[1]

# Small but complete: 2 scenes, sweeps between keyframes, every table and file kind.
SMALL = SynthConfig(scenes=2, frames=3, width=192, height=108, sweeps=1, seed=7,
                    supersample=1, workers=2)
# For geometry: images fine enough that pixel rounding does not dominate the error.
GEOMETRY = SynthConfig(scenes=1, frames=3, width=480, height=270, sweeps=0, seed=11,
                       supersample=1, workers=2)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A read-only synthetic nuScenes dataroot (copy it before damaging it)."""
    return generate(tmp_path_factory.mktemp("synth") / "nuscenes", "nuscenes", SMALL)


@pytest.fixture(scope="session")
def geometry_dataset(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth_geometry") / "nuscenes", "nuscenes",
                    GEOMETRY)


@pytest.fixture
def dataset_copy(small_dataset, tmp_path) -> Path:
    """A private copy of the small dataset that a test may damage."""
    return Path(shutil.copytree(small_dataset, tmp_path / "nuscenes"))


@pytest.fixture(scope="session")
def small_store(small_dataset, tmp_path_factory) -> Path:
    """The small dataset ingested into a store (read-only for tests: copy to damage)."""
    from distillprep.scenes.nuscenes import read_nuscenes
    from distillprep.storage_schemas.ingest import IngestConfig, ingest
    from distillprep.storage_schemas.store import create_store

    read = read_nuscenes(small_dataset)
    path = tmp_path_factory.mktemp("store") / "store.zarr"
    store = create_store(path, "nuscenes", read.version)
    report = ingest(store, read.scenes, IngestConfig("nuscenes", read.version))
    assert report.written == ["scene-0001", "scene-0002"]
    return path


@pytest.fixture
def store_copy(small_store, tmp_path) -> Path:
    return Path(shutil.copytree(small_store, tmp_path / "store.zarr"))


@pytest.fixture(scope="session")
def sweeps_store(small_dataset, tmp_path_factory) -> Path:
    """The small dataset ingested with its sweeps (what a teacher fits on), from a copy of
    the dataset that is deleted right after: nothing may need it later (read-only: copy
    the store to change it)."""
    from distillprep.scenes.nuscenes import read_nuscenes
    from distillprep.storage_schemas.ingest import IngestConfig, ingest
    from distillprep.storage_schemas.store import create_store

    root = tmp_path_factory.mktemp("sweeps")
    dataset = Path(shutil.copytree(small_dataset, root / "nuscenes"))
    read = read_nuscenes(dataset, sweeps=True)
    store = create_store(root / "store.zarr", "nuscenes", read.version)
    report = ingest(store, read.scenes, IngestConfig("nuscenes", read.version, sweeps=True))
    assert report.written == ["scene-0001", "scene-0002"]
    shutil.rmtree(dataset)
    return root / "store.zarr"


@pytest.fixture
def sweeps_store_copy(sweeps_store, tmp_path) -> Path:
    return Path(shutil.copytree(sweeps_store, tmp_path / "sweeps.zarr"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server on 127.0.0.1 and the storage options that reach it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing",
               "secret": "testing", "client_kwargs": {"region_name": "us-east-1"}}
    import boto3

    boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(
        Bucket="distillprep-test")
    yield options
    server.stop()


@pytest.fixture(scope="session")
def prepared(small_dataset, tmp_path_factory):
    """The small dataset prepared once by `distillprep prepare` (threads, the tiny config
    tests/data/prepare_tiny.yaml): (folder, exit code, summary); read-only: copy it."""
    from test_prepare import prepare

    root = tmp_path_factory.mktemp("prepared")
    code, summary = prepare(small_dataset, root / "store.zarr")
    return root, code, summary
