"""`distillprep migrate STORE`: upgrade a store of schema version 1 or 2 to version 3 in
place.

Versions 1 and 2 kept a scene as one folder holding every stage's arrays, committed by one
record (`commits/<scene>.json`); version 3 gives every stage its own group and commit
(`store.py`). Each scene's stages are copied into their own groups and committed in
pipeline order with typed provenance converted from the old free-form records; then the
root's `schema_version` becomes 3, and only then are the old folders removed. A killed
migration resumes: stages already committed in the new layout are not copied again.

Version 2 stores hold no LiDAR points (their teacher read the dataset): a migrated scene
gets empty LiDAR tables and `code_version` 0 for its ingest, so that `distillprep ingest`
rewrites it from the dataset (`--replace-outputs` where it has later stages' outputs,
which the new content makes stale) and a teacher fit refuses it until then, saying so.

Chunk checksums (crc32c inside every shard, `layout.py`) are not a schema version: the
stages a migration commits are written anew and carry them, but the arrays of a store
already at version 3 keep the codecs they were written with and read as before,
unchecked, until their stage is committed again (`ingest --force`, a teacher render, a
`features --force`). Migrate does not rewrite them: that would be a new commit of every
stage of every scene, the whole store read and written again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from distillprep.scenes.ids import validate_scene_id

from .attrs import (
    MIGRATABLE_VERSIONS,
    SCHEMA_VERSION,
    STORE_FORMAT,
    StoreAttrs,
    config_hash,
    parse_json,
    parse_scene_attrs,
)
from .backend import Location
from .errors import MetadataError, NotAStoreError, SchemaVersionError
from .feature_runs import FeatureRun, parse_basis, run_prefix
from .manifest import legacy_from_parquet_bytes
from .provenance import (
    FeatureProvenance,
    IngestProvenance,
    TeacherProvenance,
    VirtualViewCounts,
)
from .spec import FEATURE_FAMILIES, STAGES, stage_arrays
from .store import Store

CODE_VERSIONS = {"ingest": 0, "teacher": 1, "dino_features": 1, "clip_features": 1}
"""What migrated stages record: ingest 0 (no LiDAR points: `ingest` redoes it), the others
1 (their outputs mean what they meant)."""


@dataclass
class MigrationReport:
    """What `migrate_store` did."""

    store: str
    from_version: int
    scenes: list[str] = field(default_factory=list)
    stages: int = 0
    """Stage commits written in the new layout."""
    already: bool = False
    """The store was at the current version already: nothing done."""

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store, "from_version": self.from_version,
                "to_version": SCHEMA_VERSION, "scenes": self.scenes, "stages": self.stages,
                "already_current": self.already}


def _root(loc: Location) -> dict[str, Any]:
    raw = loc.get("zarr.json")
    if raw is None:
        raise NotAStoreError(f"{loc.location} is not a distillprep store (no zarr.json)")
    meta = parse_json(raw, f"{loc.location}/zarr.json")
    attributes = meta.get("attributes", {}) if isinstance(meta, dict) else {}
    if not isinstance(attributes, dict) or attributes.get("format") != STORE_FORMAT:
        raise NotAStoreError(f"{loc.location} is not a distillprep store")
    return meta


def migrate_store(location: str | Path, storage_options: dict | None = None,
                  ) -> MigrationReport:
    """Upgrade the store at `location` to the current schema, in place."""
    loc = Location(location, read_only=False, storage_options=storage_options)
    meta = _root(loc)
    version = meta["attributes"].get("schema_version")
    report = MigrationReport(str(location), version)
    if version == SCHEMA_VERSION:
        report.already = True
        return report
    if version not in MIGRATABLE_VERSIONS:
        raise SchemaVersionError(f"{location}: schema version {version!r} cannot be migrated "
                                 f"(known: {list(MIGRATABLE_VERSIONS)})")
    attrs = StoreAttrs.model_validate({**meta["attributes"], "schema_version": SCHEMA_VERSION})
    store = Store(loc, attrs)
    for name in loc.children("commits"):
        if name.endswith(".json") and not name.startswith("."):
            scene_id = validate_scene_id(name[: -len(".json")])
            report.stages += _migrate_scene(store, scene_id, version)
            report.scenes.append(scene_id)
    for family in FEATURE_FAMILIES:
        _migrate_run(store, family)
    meta["attributes"]["schema_version"] = SCHEMA_VERSION
    loc.put("zarr.json", json.dumps(meta).encode())
    for scene_id in report.scenes:  # the old layout goes only once the new one is in force
        old = json.loads(loc.get(f"commits/{scene_id}.json") or b"{}")
        for key in (f"scenes/{scene_id}/{old.get('attempt', '')}", old.get("manifest", ""),
                    f"commits/{scene_id}.json"):
            if key and key.strip("/") != f"scenes/{scene_id}":
                loc.delete(key)
    return report


def _migrate_scene(store: Store, scene_id: str, version: int) -> int:
    loc = store.location
    where = f"scene {scene_id!r}: commits/{scene_id}.json"
    old = parse_json(loc.get(f"commits/{scene_id}.json"), where)
    if not isinstance(old, dict) or "attempt" not in old or "manifest" not in old:
        raise MetadataError(f"{where}: not a version-{version} commit record")
    group = loc.open_group(f"scenes/{scene_id}/{old['attempt']}", mode="r")
    raw_attrs = dict(group.attrs)
    stages = raw_attrs.pop("stages", {})
    attrs = parse_scene_attrs(raw_attrs, f"scene {scene_id!r} attributes")
    manifest = legacy_from_parquet_bytes(loc.get(old["manifest"]))
    present = set(group.array_keys())
    heads = store.heads(scene_id)
    written = 0
    for stage in STAGES:
        if stage not in stages or stage in heads:
            continue
        arrays = {n: np.asarray(group[n][...]) for n in stage_arrays(stage) if n in present}
        inputs = store.scene(scene_id).input_fingerprints(stage) if stage != "ingest" else {}
        provenance = _provenance(stage, stages[stage], version, inputs, attrs.num_samples)
        if stage == "ingest":
            arrays.update(_new_ingest_arrays(manifest, attrs.num_frames))
            store.write_scene(attrs, arrays, manifest, provenance)
        else:
            store.commit_stage(scene_id, provenance, arrays, manifest)
        heads = store.heads(scene_id)
        written += 1
    return written


def _new_ingest_arrays(manifest: pa.Table, frames: int) -> dict[str, np.ndarray]:
    """Ingest arrays version 3 added: keyframe flags from the manifest, empty LiDAR."""
    index = np.asarray(manifest.column("frame_index").to_pylist())
    key = np.asarray(manifest.column("is_keyframe").to_pylist(), dtype=bool)
    flags = np.array([bool(key[index == f].all()) if (index == f).any() else True
                      for f in range(frames)], dtype=np.uint8)
    return {"frame_is_keyframe": flags, "lidar_points": np.zeros((0, 3), np.float32),
            "lidar_intensity": np.zeros(0, np.float32),
            "lidar_sweep_points": np.zeros(0, np.int64),
            "lidar_sensor_to_world": np.zeros((0, 4, 4)),
            "lidar_timestamp_us": np.zeros(0, np.int64),
            "lidar_frame_index": np.zeros(0, np.int32),
            "lidar_is_keyframe": np.zeros(0, np.uint8),
            "lidar_sensor_index": np.zeros(0, np.int16)}


def _provenance(stage: str, old: dict, version: int, inputs: dict[str, str], samples: int):
    extra = old.get("extra", {}) or {}
    common = dict(config=old.get("config", {}), config_hash=old.get("config_hash")
                  or config_hash(old.get("config", {})), code_version=CODE_VERSIONS[stage],
                  package_version=old.get("package_version", "unknown"),
                  finished_at=old.get("finished_at", datetime.now(UTC)),
                  wall_time_s=old.get("wall_time_s", 0.0), inputs=inputs)
    if stage == "ingest":
        config = common["config"]
        return IngestProvenance(stage="ingest", reader=config.get("dataset", "nuscenes"),
                                dataroot=extra.get("dataroot", ""),
                                sweeps=bool(config.get("sweeps", False)),
                                migrated_from=version, **common)
    if stage == "teacher":
        views = extra.get("virtual_views") or {}
        return TeacherProvenance(
            stage="teacher", backend=extra.get("backend", "unknown"), device="cpu",
            steps=extra.get("steps", 0), fit_wall_time_s=extra.get("fit_wall_time_s", 0.0),
            render_time_s=extra.get("render_time_s", 0.0),
            checkpoint_sha256=extra.get("checkpoint_sha256"),
            fitted_frames=extra.get("fitted_frames", []),
            heldout_frames=extra.get("heldout_frames", []),
            rendered_samples=list(range(samples)), final_losses=extra.get("final_losses", {}),
            heldout_psnr_db=extra.get("heldout_psnr_db"),
            train_psnr_db=extra.get("train_psnr_db"), lidar_abs_rel=extra.get("lidar_abs_rel"),
            lidar_abs_rel_heldout=extra.get("lidar_abs_rel_heldout"),
            virtual_views=VirtualViewCounts(
                kept=views.get("kept", 0), moved=views.get("moved", 0),
                dropped=views.get("dropped", 0), dropped_views=views.get("dropped_views", [])),
            **common)
    return FeatureProvenance(
        stage=stage, run_id=common["config_hash"],
        **{k: extra.get(k) for k in ("model", "library", "architecture", "weights",
                                     "weights_sha256", "random_init", "device", "batch_size",
                                     "precision", "stride", "pca_channels",
                                     "pca_explained_ratio", "pca_samples", "pca_sha256",
                                     "position_pattern_sha256", "grid", "images")},
        **common)


def _migrate_run(store: Store, family: str) -> None:
    """Give a family's saved run a typed `run.json` (the identity it held is kept as the
    run's config); kept batches of the old layout are not keyed to content: dropped."""
    loc, prefix = store.location, run_prefix(family)
    loc.delete(f"{prefix}/partial")
    raw, data = loc.get(f"{prefix}/run.json"), loc.get(f"{prefix}/pca.npz")
    if raw is None or data is None:
        return
    identity = parse_json(raw, f"{prefix}/run.json")
    if "run_id" in identity:
        return  # already migrated
    parse_basis(data, f"{prefix}/pca.npz")
    run = FeatureRun(family=family, run_id=config_hash(identity),
                     model=identity.get("config", {}).get("model", "unknown"),
                     config=identity.get("config", {}),
                     weights_sha256=identity.get("weights_sha256"), created=datetime.now(UTC),
                     basis_sha256=hashlib.sha256(data).hexdigest())
    loc.put(f"{prefix}/run.json", run.model_dump_json(indent=1).encode())

