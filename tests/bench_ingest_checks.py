"""What ingest's value rules cost, for `make bench`: the checks of a scene's payload
(`ingest.check_scene_payload`, every rule validate --deep applies) against the whole
ingest of that scene (read, project, encode, commit), both timed in this process on the
bench's synthetic scenes (the goal is <= 5 %)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench_timing import best_of

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.storage_schemas.ingest import (
    IngestConfig,
    check_scene_payload,
    ingest_scene,
    scene_payload,
)
from distillprep.storage_schemas.store import create_store


def bench_ingest_checks(dataset: Path) -> None:
    read = read_nuscenes(dataset)
    config = IngestConfig("nuscenes", read.version)
    with tempfile.TemporaryDirectory() as tmp:
        store = create_store(Path(tmp) / "store.zarr", "nuscenes", read.version)
        ingest_s = checks_s = 0.0
        for scene in read.scenes:
            ingest_s += best_of(lambda scene=scene: ingest_scene(store, scene, config,
                                                                 force=True))
            arrays, dims, _, _, lidars = scene_payload(scene)
            checks_s += best_of(lambda scene=scene, arrays=arrays, dims=dims, lidars=lidars:
                                check_scene_payload(scene, arrays, dims, lidars), 5)
    print(f"ingest.seconds_per_scene: {ingest_s / len(read.scenes):.3f}")
    print(f"ingest.value_checks_seconds_per_scene: {checks_s / len(read.scenes):.4f}")
    print(f"ingest.value_checks_share: {checks_s / ingest_s:.3f}")
