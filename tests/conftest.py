"""Shared fixtures: small synthetic nuScenes datasets, generated once per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from distillprep.scenes.synthetic.generate import SynthConfig, generate

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

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
