"""The dataset readers by name: adding a dataset format is one more entry here."""

from __future__ import annotations

from collections.abc import Callable

from .errors import ConfigError
from .nuscenes import NuScenesRead, read_nuscenes

READERS: dict[str, Callable[..., NuScenesRead]] = {"nuscenes": read_nuscenes}


def read_dataset(dataset: str, dataroot: str, **options) -> NuScenesRead:
    """Scenes of `dataroot` through the reader of `dataset` (options go to that reader)."""
    if dataset not in READERS:
        raise ConfigError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(READERS))}")
    return READERS[dataset](dataroot, **options)
