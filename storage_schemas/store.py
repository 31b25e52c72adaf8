"""The store: one zarr v3 hierarchy per prepared dataset, written scene by scene with an
atomic commit per scene.

Layout (keys relative to the store root):
    zarr.json                                 root group; attributes: StoreAttrs
    scenes/<scene_id>/<attempt>/              one scene's group (SceneAttrs) and arrays
    manifest/<scene_id>/<attempt>.parquet     the scene's manifest part
    commits/<scene_id>.json                   CommitRecord: written last

A write goes to a fresh `<attempt>` folder that no reader looks at; the commit record,
one atomic object write, is what makes it visible, and only then is the previous attempt
removed. A killed writer thus leaves the previous commit intact and at most an orphan
attempt, which nothing reads and the next write of that scene removes. This holds on a
local path and on object stores (no rename needed). Every shard belongs to one array of
one attempt of one scene, so one writer owns it: no read-modify-write races.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import zarr
import zarr.api.asynchronous
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.core.sync import sync

from distillprep.scenes.ids import validate_scene_id

from . import codec_pipeline
from .attrs import (
    SCHEMA_VERSION,
    STORE_FORMAT,
    ArrayRecord,
    CommitRecord,
    SceneAttrs,
    StageRecord,
    StoreAttrs,
    parse_commit,
    parse_scene_attrs,
    parse_store_attrs,
)
from .backend import Location, is_temp_name
from .errors import NotAStoreError, SceneIncompleteError, SchemaViolationError, StoreError
from .manifest import MANIFEST_SCHEMA, SAMPLE_ARRAYS, from_parquet_bytes, to_parquet_bytes
from .spec import ARRAYS, ArraySpec, infer_dims

SHARD_TARGET_BYTES = 32 * 2**20
"""Uncompressed bytes a shard aims for: tens of MB, so a million images are few files."""
SHARD_MAX_CHUNKS = 64
"""At most this many samples a shard: reading larger shards got slower here (README)."""


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distillprep")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def compressors_for(spec: ArraySpec):
    if spec.codec.startswith("zstd-"):
        return [ZstdCodec(level=int(spec.codec[5:]))]
    if spec.codec == "blosc-lz4-shuffle":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle",
                           typesize=np.dtype(spec.dtype).itemsize)]
    return None


def chunk_layout(spec: ArraySpec, shape: tuple[int, ...]) -> tuple[tuple, tuple | None]:
    """(chunks, shards) of an array: one sample per chunk, shards of ~SHARD_TARGET_BYTES;
    small tables are a single chunk."""
    if not spec.per_sample:
        return tuple(max(1, s) for s in shape), None
    chunk = (1, *shape[1:])
    chunk_bytes = max(1, int(np.prod(chunk)) * np.dtype(spec.dtype).itemsize)
    per_shard = int(min(max(1, shape[0]), SHARD_MAX_CHUNKS,
                        max(1, SHARD_TARGET_BYTES // chunk_bytes)))
    return chunk, (per_shard, *shape[1:])


def array_sha256(data: np.ndarray) -> str:
    """SHA-256 of an array's C-order bytes (hashed in place, no copy)."""
    data = np.ascontiguousarray(data)
    return hashlib.sha256(memoryview(data).cast("B") if data.size else b"").hexdigest()


class Store:
    """An opened store. `open_store` / `create_store` make one."""

    def __init__(self, location: Location, attrs: StoreAttrs):
        self.location = location
        self.attrs = attrs

    @property
    def read_only(self) -> bool:
        return self.location.read_only

    # -- reading ---------------------------------------------------------------------
    def scenes(self) -> list[str]:
        """Ids of the committed scenes, sorted."""
        return sorted(name[: -len(".json")] for name in self.location.children("commits")
                      if name.endswith(".json") and not name.startswith("."))

    def commit(self, scene_id: str) -> CommitRecord | None:
        """The scene's commit record, or None when the scene is not committed."""
        validate_scene_id(scene_id)
        raw = self.location.get(f"commits/{scene_id}.json")
        if raw is None:
            return None
        where = f"scene {scene_id!r}: commits/{scene_id}.json"
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{where}: not valid JSON: {exc}") from None
        record = parse_commit(data, where)
        if record.scene_id != scene_id:
            raise StoreError(f"{where}: records scene {record.scene_id!r}, not {scene_id!r}")
        return record

    def _committed(self, scene_id: str) -> CommitRecord:
        record = self.commit(scene_id)
        if record is None:
            raise SceneIncompleteError(f"scene {scene_id!r} is not in store "
                                       f"{self.location.location} (absent or never committed)")
        return record

    def group_path(self, scene_id: str) -> str:
        """Key prefix of the committed scene's zarr group."""
        return f"scenes/{scene_id}/{self._committed(scene_id).attempt}"

    def group(self, scene_id: str) -> zarr.Group:
        """The committed scene's zarr group."""
        return self.location.open_group(self.group_path(scene_id), mode="r")

    def scene_attrs(self, scene_id: str) -> SceneAttrs:
        return parse_scene_attrs(dict(self.group(scene_id).attrs),
                                 f"scene {scene_id!r} attributes")

    def manifest(self, scene_ids: list[str] | None = None) -> pa.Table:
        """Manifest rows of committed scenes (all, or those named)."""
        parts = []
        for scene_id in self.scenes() if scene_ids is None else scene_ids:
            record = self._committed(scene_id)
            data = self.location.get(record.manifest)
            if data is None:
                raise StoreError(f"scene {scene_id!r}: manifest part {record.manifest} missing")
            parts.append(from_parquet_bytes(data))
        return pa.concat_tables(parts) if parts else MANIFEST_SCHEMA.empty_table()

    # -- writing ---------------------------------------------------------------------
    def write_scene(self, attrs: SceneAttrs, arrays: Mapping[str, np.ndarray],
                    manifest: pa.Table, dims: Mapping[str, int]) -> CommitRecord:
        """Write a whole scene and commit it atomically, replacing an earlier commit.

        arrays: name -> data, checked against the spec (dtype, shape from `dims`).
        """
        if self.read_only:
            raise PermissionError(f"store {self.location.location} is open read-only")
        scene_id = validate_scene_id(attrs.scene_id)
        attempt = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
        prefix = f"scenes/{scene_id}/{attempt}"
        self._ensure_group("scenes")
        self._ensure_group(f"scenes/{scene_id}")
        arrays = {name: np.asarray(data) for name, data in arrays.items()}
        for name, data in arrays.items():  # all checked before anything is written
            spec = ARRAYS[name]
            expected = tuple(dims[d] if isinstance(d, str) else d for d in spec.shape)
            if data.dtype != np.dtype(spec.dtype) or data.shape != expected:
                raise SchemaViolationError(
                    f"scene {scene_id!r}, array {name}: got {data.dtype} {data.shape}, "
                    f"the schema wants {spec.dtype} {expected}")
        sync(_write_group(self.location.sub(prefix).zarr_store(),
                          attrs.model_dump(mode="json"), arrays))
        records = {name: ArrayRecord(shape=list(data.shape), dtype=str(data.dtype),
                                     sha256=array_sha256(data),
                                     stored_bytes=self.location.size_under(f"{prefix}/{name}"))
                   for name, data in arrays.items()}
        manifest_key = f"manifest/{scene_id}/{attempt}.parquet"
        manifest_bytes = to_parquet_bytes(manifest)
        self.location.put(manifest_key, manifest_bytes)
        record = CommitRecord(
            scene_id=scene_id, attempt=attempt, schema_version=SCHEMA_VERSION,
            committed_at=datetime.now(UTC), num_samples=manifest.num_rows,
            manifest=manifest_key, manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
            arrays=records)
        self.location.put(f"commits/{scene_id}.json",
                          record.model_dump_json(indent=1).encode())
        self.remove_stale_attempts(scene_id)
        return record

    def replace_stage(self, scene_id: str, record: StageRecord,
                      arrays: Mapping[str, np.ndarray],
                      columns: Mapping[str, list] | None = None) -> CommitRecord:
        """Commit a new version of a committed scene in which stage `record.stage` holds
        `arrays` (its earlier arrays dropped; other stages' arrays carried over unchanged)
        with provenance `record`; `columns` replace manifest columns (name -> N values).

        The new version is written beside the old one and committed atomically like any
        scene write; one writer per scene at a time (the later commit wins).
        """
        attrs = self.scene_attrs(scene_id)
        where = f"scene {scene_id!r}, stage {record.stage}"
        wrong = sorted(n for n in arrays if n not in ARRAYS or ARRAYS[n].stage != record.stage)
        if wrong:
            raise SchemaViolationError(f"{where}: arrays {wrong} do not belong to this stage")
        group = self.group(scene_id)
        merged = {n: group[n][...] for n in group.array_keys()
                  if n in ARRAYS and ARRAYS[n].stage != record.stage}
        merged.update({n: np.asarray(a) for n, a in arrays.items()})
        dims, conflicts = infer_dims({n: a.shape for n, a in merged.items()})
        problems = [message for _, message in conflicts]
        if dims.get("N", attrs.num_samples) != attrs.num_samples:
            problems.append(f"N = {dims['N']}, the scene has {attrs.num_samples} samples")
        if problems:
            raise SchemaViolationError(f"{where}: {'; '.join(problems)}")
        manifest = self.manifest([scene_id])
        updates = {f"has_{n}": [n in merged] * manifest.num_rows for n in SAMPLE_ARRAYS}
        updates.update(columns or {})
        for name, values in updates.items():
            if name not in MANIFEST_SCHEMA.names or len(values) != manifest.num_rows:
                raise SchemaViolationError(f"{where}: manifest column {name!r} is not in the "
                                           f"schema or has not {manifest.num_rows} values")
            column = pa.array(values, type=MANIFEST_SCHEMA.field(name).type)
            if name in manifest.column_names:
                manifest = manifest.set_column(manifest.column_names.index(name), name, column)
            else:
                manifest = manifest.append_column(name, column)
        new = attrs.model_copy(update={"stages": {**attrs.stages, record.stage: record},
                                       "created": datetime.now(UTC)})
        return self.write_scene(new, merged, manifest, dims)

    def remove_stale_attempts(self, scene_id: str) -> list[str]:
        """Delete data and manifest parts of a scene that its commit does not point to
        (left by a replaced commit or a killed writer), and its commit's temporary files.
        Only this scene's keys are touched: writers of other scenes may be at work.
        Returns what was removed."""
        record = self.commit(scene_id)
        keep = record.attempt if record else None
        removed = []
        for name in self.location.children("commits"):
            if is_temp_name(name) and name.startswith(f".{scene_id}.json."):
                self.location.delete(f"commits/{name}")
                removed.append(f"commits/{name}")
        for attempt in self.location.children(f"scenes/{scene_id}"):
            if attempt != keep and attempt != "zarr.json":
                self.location.delete(f"scenes/{scene_id}/{attempt}")
                removed.append(f"scenes/{scene_id}/{attempt}")
        for part in self.location.children(f"manifest/{scene_id}"):
            if part != f"{keep}.parquet":
                self.location.delete(f"manifest/{scene_id}/{part}")
                removed.append(f"manifest/{scene_id}/{part}")
        return removed

    def delete_scene(self, scene_id: str) -> None:
        """Uncommit a scene (commit record first), then remove its data."""
        validate_scene_id(scene_id)
        self.location.delete(f"commits/{scene_id}.json")
        self.location.delete(f"scenes/{scene_id}")
        self.location.delete(f"manifest/{scene_id}")

    def _ensure_group(self, path: str) -> None:
        # Written whole and atomically by us, so that concurrent writers of other scenes
        # never see or leave a half-written parent.
        if not self.location.exists(f"{path}/zarr.json"):
            meta = {"zarr_format": 3, "node_type": "group", "attributes": {}}
            self.location.put(f"{path}/zarr.json", json.dumps(meta).encode())


async def _write_group(zarr_store, attributes: dict, arrays: dict[str, np.ndarray]) -> None:
    """Create a group and write its arrays concurrently (metadata writes and codec work of
    different arrays overlap)."""
    group = await zarr.api.asynchronous.open_group(store=zarr_store, mode="w", zarr_format=3,
                                                   attributes=attributes)

    async def write(name: str, data: np.ndarray) -> None:
        spec = ARRAYS[name]
        chunks, shards = chunk_layout(spec, data.shape)
        array = await group.create_array(
            name, shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards,
            compressors=compressors_for(spec), fill_value=0,
            dimension_names=[str(d) if isinstance(d, str) else f"{name}_{i}"
                             for i, d in enumerate(spec.shape)],
            attributes={"units": spec.units, "stage": spec.stage})
        await array.setitem(Ellipsis, data)

    await asyncio.gather(*(write(name, data) for name, data in arrays.items()))


def open_store(location: str | Path, mode: str = "r",
               storage_options: dict[str, Any] | None = None) -> Store:
    """Open an existing store; read-only unless mode is "a"."""
    codec_pipeline.use()
    loc = Location(location, read_only=mode == "r", storage_options=storage_options)
    raw = loc.get("zarr.json")
    if raw is None:
        raise NotAStoreError(f"{location} is not a distillprep store (no zarr.json)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise NotAStoreError(f"{location}: zarr.json is not valid JSON") from None
    attributes = meta.get("attributes", {}) if isinstance(meta, dict) else {}
    if not isinstance(attributes, dict) or attributes.get("format") != STORE_FORMAT:
        raise NotAStoreError(f"{location} is a zarr hierarchy but not a distillprep store "
                             f"(root attribute format != {STORE_FORMAT!r})")
    return Store(loc, parse_store_attrs(attributes, f"{location}: root attributes"))


def create_store(location: str | Path, dataset: str, dataset_version: str,
                 storage_options: dict[str, Any] | None = None) -> Store:
    """Open a store for writing, creating it when it does not exist yet."""
    codec_pipeline.use()
    loc = Location(location, read_only=False, storage_options=storage_options)
    if loc.exists("zarr.json"):
        store = open_store(location, mode="a", storage_options=storage_options)
        if (store.attrs.dataset, store.attrs.dataset_version) != (dataset, dataset_version):
            raise StoreError(f"store {location} holds {store.attrs.dataset} "
                             f"{store.attrs.dataset_version}, not {dataset} {dataset_version}")
        return store
    attrs = StoreAttrs(format=STORE_FORMAT, schema_version=SCHEMA_VERSION, dataset=dataset,
                       dataset_version=dataset_version, package_version=package_version(),
                       created=datetime.now(UTC))
    group = loc.open_group("", mode="a")
    group.attrs.update(attrs.model_dump(mode="json"))
    return Store(loc, attrs)

