"""The dataset readers by name: adding a dataset format is one more entry here."""

from __future__ import annotations

from collections.abc import Callable

from .errors import ConfigError
from .model import DatasetRead
from .nuscenes import list_nuscenes, read_nuscenes
from .waymo.reader import list_waymo, read_waymo

READERS: dict[str, Callable[..., DatasetRead]] = {"nuscenes": read_nuscenes,
                                                  "waymo": read_waymo}
LISTERS: dict[str, Callable[..., tuple[str, list[str]]]] = {"nuscenes": list_nuscenes,
                                                            "waymo": list_waymo}
"""Per reader: (dataroot, version) -> (version, scene ids), cheaply (no scene is read)."""


def read_dataset(dataset: str, dataroot: str, **options) -> DatasetRead:
    """Scenes of `dataroot` through the reader of `dataset` (options go to that reader)."""
    if dataset not in READERS:
        raise ConfigError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(READERS))}")
    return READERS[dataset](dataroot, **options)


def list_scenes(dataset: str, dataroot: str, version: str | None = None,
                ) -> tuple[str, list[str]]:
    """The dataset's version and scene ids, without reading any scene."""
    if dataset not in LISTERS:
        raise ConfigError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(LISTERS))}")
    return LISTERS[dataset](dataroot, version)
