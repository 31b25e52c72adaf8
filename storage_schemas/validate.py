"""`distillprep validate`: checks a store against its schema and reports every broken rule.

Exit codes: 0 valid (warnings allowed), 1 broken rules (each finding names the scene, the
array and the rule), 2 not a store at all. Without `deep` the check reads metadata, the
small tables and the manifest; `deep` reads every chunk and compares each array's
checksum with the one recorded at commit. Every stage's latest commit is checked, a stale
one too (it is then also reported, with the command that brings it up to date); a
failure to read one object is a finding and the rest is still checked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillprep.scenes.errors import InvalidSceneIdError
from distillprep.scenes.ids import validate_scene_id

from .attrs import CommitRecord
from .backend import is_temp_name
from .errors import NotAStoreError, StoreError
from .layout import chunk_layout
from .manifest import part_from_parquet_bytes
from .scene_view import SceneView
from .spec import ARRAYS, STAGE_COMMANDS, infer_dims, optional_arrays, stage_arrays
from .store import Store, open_store
from .value_rules import check_block, check_tables

SMALL_TABLES = ("intrinsics", "cam_to_world", "ego_to_world", "timestamp_us",
                "frame_timestamp_us", "frame_is_keyframe", "camera_index", "frame_index",
                "rgb_jpeg_nbytes", "virtual_intrinsics", "virtual_cam_to_world",
                "virtual_source_sample", "lidar_sweep_points", "lidar_sensor_to_world",
                "lidar_timestamp_us", "lidar_frame_index", "lidar_is_keyframe",
                "lidar_sensor_index")


@dataclass
class Finding:
    severity: str
    """`error` (the store is invalid) or `warning`."""
    rule: str
    """Short name of the broken rule, e.g. `dtype`, `pose-orthonormal`."""
    message: str
    scene: str | None = None
    array: str | None = None

    def __str__(self) -> str:
        where = ", ".join(x for x in (f"scene {self.scene!r}" if self.scene else "",
                                      f"array {self.array}" if self.array else "") if x)
        lead = f"{self.severity.upper()} [{self.rule}]"
        return f"{lead} {where}: {self.message}" if where else f"{lead} {self.message}"


@dataclass
class ValidationReport:
    store: str
    deep: bool
    scenes: int = 0
    samples: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store, "deep": self.deep, "valid": self.ok,
                "scenes": self.scenes, "samples": self.samples,
                "findings": [asdict(f) for f in self.findings]}


class _Checker:
    def __init__(self, store: Store, report: ValidationReport):
        self.store, self.report = store, report

    def error(self, rule, message, scene=None, array=None):
        self.report.findings.append(Finding("error", rule, message, scene, array))

    def warn(self, rule, message, scene=None, array=None):
        self.report.findings.append(Finding("warning", rule, message, scene, array))

    def run(self) -> None:
        committed = set()
        for scene_id in self.store.location.children("commits"):
            if is_temp_name(scene_id):
                self.warn("temp-file", f"commits/{scene_id} is a temporary file left by an "
                          "interrupted write; safe to delete")
                continue
            try:
                validate_scene_id(scene_id)
            except InvalidSceneIdError as exc:
                self.error("scene-id", f"commits/{scene_id}: {exc}", scene=scene_id)
                continue
            committed.add(scene_id)
            self.scene(scene_id)
        for scene_id in self.store.location.children("scenes"):
            if scene_id != "zarr.json" and scene_id not in committed and not is_temp_name(
                    scene_id) and scene_id != ".":
                self.warn("uncommitted-scene", "data without a commit record (an interrupted "
                          "write); readers ignore it", scene=scene_id)

    def scene(self, scene_id: str) -> None:
        """Check one scene; whatever fails to read becomes a finding naming it."""
        try:
            self._scene(scene_id)
        except StoreError as exc:
            self.error("commit-record", str(exc), scene=scene_id)
        except Exception as exc:  # noqa: BLE001 - damaged bytes raise anything in zarr
            self.error("unreadable", f"{type(exc).__name__}: {exc}", scene=scene_id)

    def _heads(self, scene_id: str) -> dict:
        """The latest commit of every stage that reads; each one that does not is a
        finding naming its file (the other stages are still checked)."""
        heads = {}
        for stage, sequences in self.store.sequences(scene_id).items():
            try:
                heads[stage] = self.store.read_commit(scene_id, stage, sequences[-1])
            except StoreError as exc:
                self.error("commit-record", str(exc), scene=scene_id)
        return heads

    def _scene(self, scene_id: str) -> None:
        for key in self.store.location.find(f"commits/{scene_id}"):
            if is_temp_name(key.rsplit("/", 1)[-1]):
                self.warn("temp-file", f"commits/{scene_id}/{key} is a temporary file left by "
                          "an interrupted commit; safe to delete", scene=scene_id)
        if not self.store.sequences(scene_id):
            self.warn("uncommitted-scene", "no commit record (a first write that was "
                      "interrupted): readers ignore the scene", scene=scene_id)
            return
        heads = self._heads(scene_id)
        if "ingest" not in heads:
            if heads:
                self.error("provenance", f"stages {sorted(heads)} are committed but the scene "
                           "has no readable ingest commit", scene=scene_id)
            return
        view = SceneView(self.store, scene_id, heads)
        for stage, why in view.stale.items():  # outputs that do not match their inputs
            self.error("stale-stage", f"stage {stage} is stale ({why}): readers do not see "
                       f"it; run `{STAGE_COMMANDS[stage]}` again", scene=scene_id)
        for stage, record in heads.items():
            prefix = view.group_path(stage)
            if not self.store.location.exists(f"{prefix}/zarr.json"):
                self.error("missing-data", f"stage {stage}: commit {record.sequence} points "
                           f"to {prefix}, which does not exist", scene=scene_id)
            self.orphans(scene_id, stage, record)
        try:
            attrs = view.attrs
        except StoreError as exc:
            self.error("scene-attributes", str(exc), scene=scene_id)
            return
        self.report.scenes += 1
        self.report.samples += attrs.num_samples
        dims = {"N": attrs.num_samples, "F": attrs.num_frames, "H": attrs.height,
                "W": attrs.width}
        shapes = {name: tuple(rec.shape) for stage, record in heads.items()
                  for name, rec in record.arrays.items() if name in ARRAYS}
        implied, conflicts = infer_dims(shapes)
        for name, message in conflicts:
            self.error("shape", message, scene_id, name)
        dims = {**implied, **dims}
        tables: dict[str, np.ndarray] = {}
        for stage, record in heads.items():
            self.stage(scene_id, view, stage, record, dims, tables, attrs.num_samples)
        for found in check_tables(tables, dims, len(attrs.cameras), len(attrs.lidars)):
            self.error(found.rule, found.message, scene_id, found.array)

    def stage(self, scene_id, view, stage, record, dims, tables, num_samples) -> None:
        """Check one stage's group, arrays and manifest part; its small tables go into
        `tables` for the value checks. Every object that fails to read is a finding."""
        prefix = view.group_path(stage)
        if not self.store.location.exists(f"{prefix}/zarr.json"):
            return
        if getattr(record.provenance, "random_init", False):
            self.warn("random-weights", f"stage {stage}: features of RANDOMLY INITIALISED "
                      f"{record.provenance.model} weights (--random-init), not of a pretrained "
                      "model: for tests and demos only", scene=scene_id)
        try:
            group = view.group(stage)
        except StoreError as exc:
            self.error("unreadable", str(exc), scene_id)
            return
        present = {name for name in self.store.location.children(prefix)
                   if name != "zarr.json" and not is_temp_name(name)}
        needed = set(stage_arrays(stage)) - set(
            optional_arrays(stage, "teacher" in record.provenance.inputs))
        for name in sorted(needed - present):
            self.error("missing-array", f"stage {stage} is committed but its array is "
                       "missing", scene_id, name)
        opened = {}
        for name in sorted(present):
            if name not in ARRAYS or ARRAYS[name].stage != stage:
                self.warn("unknown-array", f"{prefix}/{name} is not one of stage {stage}'s "
                          "arrays in the schema", scene_id, name)
                continue
            try:
                array = opened[name] = group[name]  # each array's metadata read once
                if self.array_layout(scene_id, array, name, record, dims, view) and (
                        name in SMALL_TABLES):
                    tables[name] = np.asarray(array[...])
            except Exception as exc:  # noqa: BLE001 - damaged bytes raise anything in zarr
                self.error("unreadable", f"{prefix}/{name}: cannot read its metadata or "
                           f"values: {type(exc).__name__}: {exc}", scene_id, name)
                opened.pop(name, None)
        self.manifest(scene_id, stage, record, num_samples)
        if self.report.deep:
            for name in sorted(set(opened) & set(record.arrays)):
                self.deep_array(scene_id, opened[name], name, record, prefix)

    def orphans(self, scene_id: str, stage: str, head: CommitRecord) -> None:
        # a superseded commit's attempt stays a while for its readers (SUPERSEDED_GRACE)
        named = {r.attempt for r in self.store.commit_records(scene_id, stage, head).values()}
        for attempt in self.store.location.children(f"scenes/{scene_id}/{stage}"):
            if is_temp_name(attempt):
                self.warn("temp-file", f"scenes/{scene_id}/{stage}/{attempt} is a temporary "
                          "file left by an interrupted write", scene=scene_id)
            elif attempt not in named and attempt != "zarr.json":
                self.warn("orphan-attempt", f"scenes/{scene_id}/{stage}/{attempt} is not the "
                          "committed attempt (a superseded commit's or an interrupted write's; "
                          "another writer's while one runs)", scene=scene_id)

    def array_layout(self, scene_id, array, name, record, dims, view) -> bool:
        """Check an array's metadata against the schema and its commit; True when its
        shape and dtype are the schema's (so its values can be checked)."""
        spec = ARRAYS[name]
        ok = True
        if array.dtype != np.dtype(spec.dtype):
            self.error("dtype", f"dtype {array.dtype}, the schema says {spec.dtype}", scene_id,
                       name)
            ok = False
        expected = tuple(dims.get(d, -1) if isinstance(d, str) else d for d in spec.shape)
        if len(expected) != len(array.shape) or (all(e >= 0 for e in expected)
                                                 and array.shape != expected):
            self.error("shape", f"shape {array.shape}, the schema says {expected} "
                       f"({'x'.join(map(str, spec.shape))})", scene_id, name)
            ok = False
        chunks, shards = chunk_layout(spec, array.shape)
        if tuple(array.chunks) != tuple(chunks) or (shards and array.shards is None):
            self.error("chunk-layout", f"chunks {array.chunks} shards {array.shards}; expected "
                       f"chunks {chunks} in shards along axis 0", scene_id, name)
        written = record.arrays.get(name)
        if written is None:
            self.error("commit-mismatch", "array is not in the commit record", scene_id, name)
            return False
        if list(array.shape) != written.shape or str(array.dtype) != written.dtype:
            self.error("commit-mismatch", f"{array.dtype} {array.shape} but the commit recorded "
                       f"{written.dtype} {tuple(written.shape)}", scene_id, name)
            ok = False
        size = self.store.location.size_under(f"{view.group_path(record.stage)}/{name}")
        if size != written.stored_bytes:
            self.error("stored-bytes", f"its files hold {size} bytes, the commit recorded "
                       f"{written.stored_bytes}: a shard was truncated or replaced", scene_id,
                       name)
        return ok

    def manifest(self, scene_id: str, stage: str, record, num_samples: int) -> None:
        data = self.store.location.get(record.manifest)
        if data is None:
            self.error("manifest-missing", f"stage {stage}: manifest part {record.manifest} is "
                       "missing", scene_id)
            return
        if hashlib.sha256(data).hexdigest() != record.manifest_sha256:
            self.error("manifest-checksum", f"{record.manifest} differs from what was committed",
                       scene_id)
        try:
            table = part_from_parquet_bytes(data, stage, record.manifest)
        except StoreError as exc:
            self.error("manifest-unreadable", str(exc), scene_id)
            return
        index = np.asarray(table.column("sample_index").to_numpy(zero_copy_only=False))
        values, counts = np.unique(index, return_counts=True)
        if np.any(counts > 1):
            self.error("duplicate-sample", f"{record.manifest}: rows repeat samples "
                       f"{values[counts > 1][:5].tolist()}", scene_id)
        orphan = values[(values < 0) | (values >= num_samples)]
        if len(orphan):
            self.error("manifest-row-without-data", f"{record.manifest}: rows for samples "
                       f"{orphan[:5].tolist()}, but the scene has {num_samples}", scene_id)
        missing = np.setdiff1d(np.arange(num_samples), values)
        if len(missing):
            self.error("data-without-manifest-row", f"{record.manifest}: samples "
                       f"{missing[:5].tolist()} have no row", scene_id)
        ids = set(table.column("scene_id").to_pylist())
        if ids != {scene_id}:
            self.error("manifest-scene", f"{record.manifest}: rows name scenes {sorted(ids)}",
                       scene_id)

    def deep_array(self, scene_id, array, name, record, prefix) -> None:
        spec = ARRAYS[name]
        digest = hashlib.sha256()
        step = (int((array.shards or array.chunks)[0]) if spec.per_sample or spec.chunk_rows
                else max(1, array.shape[0]))
        try:
            for start in range(0, max(1, array.shape[0]), max(1, step)):
                block = np.ascontiguousarray(array[start: start + step])
                digest.update(block.tobytes())
                for found in check_block(name, block, start):
                    self.error(found.rule, found.message, scene_id, name)
        except Exception as exc:  # noqa: BLE001 - codec and shard-index errors from zarr
            self.error("unreadable-chunk", f"{prefix}/{name}: cannot read: "
                       f"{type(exc).__name__}: {exc}", scene_id, name)
            return
        written = record.arrays.get(name)
        if written is not None and digest.hexdigest() != written.sha256:
            self.error("checksum", "content differs from what was committed", scene_id, name)


def validate_store(location: str | Path, deep: bool = False,
                   storage_options: dict | None = None) -> ValidationReport:
    """Validate a store. Raises NotAStoreError when `location` is not a store at all."""
    report = ValidationReport(str(location), deep)
    try:
        store = open_store(location, storage_options=storage_options)
    except NotAStoreError:
        raise
    except StoreError as exc:
        report.findings.append(Finding("error", "store-attributes", str(exc)))
        return report
    _Checker(store, report).run()
    return report


def validate_scene(store: Store, scene_id: str, deep: bool = False) -> ValidationReport:
    """Validate one scene of an opened store (the stage job a flow runs per scene)."""
    report = ValidationReport(store.location.location, deep)
    validate_scene_id(scene_id)
    _Checker(store, report).scene(scene_id)
    return report


def format_report(report: ValidationReport) -> str:
    head = (f"{report.store}: {'VALID' if report.ok else 'INVALID'} "
            f"({report.scenes} scenes, {report.samples} samples, "
            f"{'deep' if report.deep else 'metadata and tables'}; "
            f"{len(report.errors)} errors, {len(report.findings) - len(report.errors)} warnings)")
    return "\n".join([head] + [f"  {f}" for f in report.findings])


def report_json(report: ValidationReport) -> str:
    return json.dumps(report.to_json(), indent=2)

