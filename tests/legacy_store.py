"""Stores in the layout of schema version 2 (one folder per scene holding every stage's
arrays, one commit record per scene, provenance in the scene group's attributes), written
from a current store by hand, exactly as version 2 wrote them: what `migrate` upgrades."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import zarr

from distillprep.storage_schemas.layout import array_sha256, chunk_layout
from distillprep.storage_schemas.manifest import MANIFEST_SCHEMA
from distillprep.storage_schemas.spec import ARRAYS
from distillprep.storage_schemas.store import open_store

V3_ONLY = ("frame_is_keyframe", "lidar_points", "lidar_intensity", "lidar_sweep_points",
           "lidar_sensor_to_world", "lidar_timestamp_us", "lidar_frame_index",
           "lidar_is_keyframe", "lidar_sensor_index")


def _stage_record(provenance) -> dict:
    """A version-2 StageRecord: the common fields, the rest in a free `extra` dict."""
    data = provenance.model_dump(mode="json")
    common = {k: data.pop(k) for k in ("stage", "config", "config_hash", "package_version",
                                       "finished_at", "wall_time_s")}
    for k in ("code_version", "inputs", "migrated_from"):
        data.pop(k, None)
    return {**common, "extra": data}


def write_v2_store(source: Path, target: Path) -> None:
    """Write the current store at `source` as a version-2 store at `target`."""
    store = open_store(source)
    target.mkdir(parents=True)
    root = json.loads((source / "zarr.json").read_text())
    root["attributes"]["schema_version"] = 2
    (target / "zarr.json").write_text(json.dumps(root))
    for scene_id in store.scenes():
        view = store.scene(scene_id)
        attempt = "20260101T000000-0000abcd"
        attrs = view.attrs.model_dump(mode="json")
        attrs.pop("lidars")
        attrs["stages"] = {s: _stage_record(p) for s, p in view.stages().items()}
        group = zarr.open_group(str(target / "scenes" / scene_id / attempt), mode="w",
                                zarr_format=3, attributes=attrs)
        records = {}
        for name in view.array_names():
            if name in V3_ONLY:
                continue
            data = np.asarray(view[name][...])
            chunks, shards = chunk_layout(ARRAYS[name], data.shape)
            array = group.create_array(name, shape=data.shape, dtype=data.dtype,
                                       chunks=chunks, shards=shards, fill_value=0)
            array[...] = data
            stored = sum(p.stat().st_size for p in (target / "scenes" / scene_id / attempt /
                                                    name).rglob("*") if p.is_file())
            records[name] = {"shape": list(data.shape), "dtype": str(data.dtype),
                             "sha256": array_sha256(data), "stored_bytes": stored}
        table = view.manifest().cast(MANIFEST_SCHEMA)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        manifest = f"manifest/{scene_id}/{attempt}.parquet"
        (target / manifest).parent.mkdir(parents=True, exist_ok=True)
        (target / manifest).write_bytes(sink.getvalue())
        commit = {"scene_id": scene_id, "attempt": attempt, "schema_version": 2,
                  "committed_at": datetime.now(UTC).isoformat(),
                  "num_samples": view.attrs.num_samples, "manifest": manifest,
                  "manifest_sha256": hashlib.sha256(sink.getvalue()).hexdigest(),
                  "arrays": records}
        (target / "commits").mkdir(exist_ok=True)
        (target / "commits" / f"{scene_id}.json").write_text(json.dumps(commit))
