"""`distillprep validate`: checks a store against its schema and reports every broken rule.

Exit codes: 0 valid (warnings allowed), 1 broken rules (each finding names the scene, the
array and the rule), 2 not a store at all. Without `deep` the check reads metadata, the
small per-sample tables and the manifest; `deep` reads every chunk and compares each
array's checksum with the one recorded at commit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillprep.scenes.errors import InvalidSceneIdError
from distillprep.scenes.geometry import is_rotation
from distillprep.scenes.ids import validate_scene_id

from .attrs import CommitRecord, SceneAttrs, parse_scene_attrs
from .backend import is_temp_name
from .errors import NotAStoreError, StoreError
from .manifest import from_parquet_bytes
from .spec import ARRAYS, FEATURE_FAMILIES, INGEST_ARRAYS, infer_dims
from .store import Store, chunk_layout, open_store


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
        committed = []
        for folder in ("commits", "scenes"):
            for name in self.store.location.children(folder):
                if is_temp_name(name):
                    self.warn("temp-file", f"{folder}/{name} is a temporary file left by an "
                              "interrupted write; safe to delete")
        for name in self.store.location.children("commits"):
            if is_temp_name(name):
                continue
            scene_id = name[:-5] if name.endswith(".json") else name
            try:
                validate_scene_id(scene_id)
            except InvalidSceneIdError as exc:
                self.error("scene-id", f"commits/{name}: {exc}", scene=scene_id)
                continue
            committed.append(scene_id)
            try:
                self.scene(scene_id)
            except StoreError as exc:
                self.error("commit-record", str(exc), scene=scene_id)
        for scene_id in self.store.location.children("scenes"):
            if scene_id != "zarr.json" and scene_id not in committed and not is_temp_name(
                    scene_id):
                self.warn("uncommitted-scene", "data without a commit record (an interrupted "
                          "write); readers ignore it, the next write removes it", scene=scene_id)

    def scene(self, scene_id: str) -> None:
        record = self.store.commit(scene_id)
        prefix = f"scenes/{scene_id}/{record.attempt}"
        if not self.store.location.exists(f"{prefix}/zarr.json"):
            self.error("missing-data", f"commit points to {prefix}, which does not exist",
                       scene=scene_id)
            return
        for attempt in self.store.location.children(f"scenes/{scene_id}"):
            if attempt not in (record.attempt, "zarr.json"):
                self.warn("orphan-attempt", f"scenes/{scene_id}/{attempt} is not the committed "
                          "attempt (left by an interrupted write)", scene=scene_id)
        group = self.store.location.open_group(prefix, mode="r")
        try:
            attrs = parse_scene_attrs(dict(group.attrs), f"{prefix} attributes")
        except StoreError as exc:
            self.error("scene-attributes", str(exc), scene=scene_id)
            return
        if attrs.scene_id != scene_id:
            self.error("scene-attributes", f"attributes name scene {attrs.scene_id!r}",
                       scene=scene_id)
        if "ingest" not in attrs.stages:
            self.error("provenance", "no provenance record for the ingest stage (stages has "
                       f"{sorted(attrs.stages)})", scene=scene_id)
        self.report.scenes += 1
        self.report.samples += attrs.num_samples
        dims = {"N": attrs.num_samples, "F": attrs.num_frames, "H": attrs.height,
                "W": attrs.width}
        if "rgb_jpeg" in record.arrays:
            dims["J"] = record.arrays["rgb_jpeg"].shape[1]
        present = set(group.array_keys())
        for name in INGEST_ARRAYS:
            if name not in present:
                self.error("missing-array", "required array is missing", scene_id, name)
        # dimensions of the later stages (Ht, V, ...) from their arrays; those of the scene
        # itself come from its attributes and are checked per array below
        implied, conflicts = infer_dims({n: group[n].shape for n in present
                                         if n in ARRAYS and ARRAYS[n].stage != "ingest"})
        for name, message in conflicts:
            self.error("shape", message, scene_id, name)
        dims = {**implied, **dims}
        self.stages(scene_id, attrs, present)
        for name in sorted(present):
            if name not in ARRAYS:
                self.warn("unknown-array", "array not in the schema", scene_id, name)
            else:
                self.array_layout(scene_id, group, name, record, dims, prefix)
        tables = {n: group[n][...] for n in ("intrinsics", "cam_to_world", "ego_to_world",
                  "timestamp_us", "frame_timestamp_us", "camera_index", "frame_index",
                  "rgb_jpeg_nbytes", "virtual_intrinsics", "virtual_cam_to_world",
                  "virtual_source_sample") if n in present and self._shape_ok(group, n, dims)}
        self.values(scene_id, attrs, tables, dims)
        self.manifest(scene_id, record, attrs)
        if self.report.deep:
            for name in sorted(present & set(ARRAYS)):
                if self._shape_ok(group, name, dims):
                    self.deep_array(scene_id, group, name, record)

    def stages(self, scene_id: str, attrs: SceneAttrs, present: set[str]) -> None:
        """A stage's arrays come all together and with its provenance record."""
        for stage in ("teacher", *(f"{f}_features" for f in FEATURE_FAMILIES)):
            mine = {n for n, spec in ARRAYS.items() if spec.stage == stage}
            if stage != "teacher" and "virtual_rgb" not in present:  # no views to describe
                mine.discard(stage.replace("_features", "_virtual_features"))
            have = mine & present
            record = attrs.stages.get(stage)
            if record is not None and record.extra.get("random_init"):
                self.warn("random-weights", f"stage {stage}: features of RANDOMLY "
                          f"INITIALISED {record.extra.get('model')} weights (--random-init), "
                          "not of a pretrained model: for tests and demos only", scene=scene_id)
            if have and stage not in attrs.stages:
                self.error("provenance", f"arrays {sorted(have)} of stage {stage} but no "
                           f"provenance record for it", scene=scene_id)
            if stage in attrs.stages and have != mine:
                self.error("missing-array", f"stage {stage} is recorded but arrays "
                           f"{sorted(mine - have)} are missing", scene=scene_id)

    def _shape_ok(self, group, name, dims) -> bool:
        spec = ARRAYS[name]
        try:
            expected = tuple(dims[d] if isinstance(d, str) else d for d in spec.shape)
        except KeyError:
            return True
        array = group[name]
        return array.shape == expected and array.dtype == np.dtype(spec.dtype)

    def array_layout(self, scene_id, group, name, record: CommitRecord, dims, prefix) -> None:
        spec, array = ARRAYS[name], group[name]
        if array.dtype != np.dtype(spec.dtype):
            self.error("dtype", f"dtype {array.dtype}, the schema says {spec.dtype}", scene_id,
                       name)
        expected = tuple(dims.get(d, -1) if isinstance(d, str) else d for d in spec.shape)
        if all(e >= 0 for e in expected) and array.shape != expected:
            self.error("shape", f"shape {array.shape}, the schema says {expected} "
                       f"({'x'.join(map(str, spec.shape))})", scene_id, name)
        chunks, shards = chunk_layout(spec, array.shape)
        if tuple(array.chunks) != tuple(chunks) or (shards and array.shards is None):
            self.error("chunk-layout", f"chunks {array.chunks} shards {array.shards}; expected "
                       f"chunks {chunks} in shards along axis 0", scene_id, name)
        written = record.arrays.get(name)
        if written is None:
            self.error("commit-mismatch", "array is not in the commit record", scene_id, name)
            return
        if list(array.shape) != written.shape or str(array.dtype) != written.dtype:
            self.error("commit-mismatch", f"{array.dtype} {array.shape} but the commit recorded "
                       f"{written.dtype} {tuple(written.shape)}", scene_id, name)
        size = self.store.location.size_under(f"{prefix}/{name}")
        if size != written.stored_bytes:
            self.error("stored-bytes", f"its files hold {size} bytes, the commit recorded "
                       f"{written.stored_bytes}: a shard was truncated or replaced", scene_id,
                       name)

    def values(self, scene_id: str, attrs: SceneAttrs, t: dict[str, np.ndarray], dims) -> None:
        poses = ("cam_to_world", "ego_to_world", "virtual_cam_to_world")
        for name in ("intrinsics", "virtual_intrinsics", *poses):
            if name in t and not np.all(np.isfinite(t[name])):
                self.error("finite", "NaN or infinite values", scene_id, name)
        for name in ("intrinsics", "virtual_intrinsics"):
            k = t.get(name)
            if k is None or not len(k):
                continue
            bad = np.flatnonzero((k[:, 0, 0] <= 0) | (k[:, 1, 1] <= 0) | np.any(
                k[:, 2] != [0, 0, 1], axis=1))
            if len(bad):
                self.error("intrinsics", f"entries {bad[:5].tolist()} are not pinhole matrices",
                           scene_id, name)
        source = t.get("virtual_source_sample")
        if source is not None and len(source) and (source.min() < 0 or
                                                   source.max() >= attrs.num_samples):
            self.error("value-range", "virtual views name source samples outside the scene's "
                       f"{attrs.num_samples}", scene_id, "virtual_source_sample")
        for name in poses:
            if name in t:
                bad = [i for i, pose in enumerate(t[name]) if not is_rotation(pose[:3, :3], 1e-5)
                       or np.any(pose[3] != [0, 0, 0, 1])]
                if bad:
                    self.error("pose-orthonormal", f"entries {bad[:5]} are not rigid poses "
                               "(rotation not orthonormal with det +1, or last row not 0 0 0 1)",
                               scene_id, name)
        if "frame_timestamp_us" in t and np.any(np.diff(t["frame_timestamp_us"]) <= 0):
            self.error("timestamps-increasing", "frame timestamps are not strictly increasing",
                       scene_id, "frame_timestamp_us")
        if {"timestamp_us", "camera_index", "frame_index"} <= set(t):
            for cam in np.unique(t["camera_index"]):
                mine = t["camera_index"] == cam
                order = np.argsort(t["frame_index"][mine], kind="stable")
                if np.any(np.diff(t["timestamp_us"][mine][order]) <= 0):
                    self.error("timestamps-increasing", f"camera {int(cam)}'s timestamps do not "
                               "increase from frame to frame", scene_id, "timestamp_us")
        if "camera_index" in t and (t["camera_index"].min() < 0 or
                                    t["camera_index"].max() >= len(attrs.cameras)):
            self.error("value-range", "camera_index outside the scene's cameras", scene_id,
                       "camera_index")
        if "frame_index" in t and (t["frame_index"].min() < 0 or
                                   t["frame_index"].max() >= dims["F"]):
            self.error("value-range", "frame_index outside the scene's frames", scene_id,
                       "frame_index")
        if "rgb_jpeg_nbytes" in t and "J" in dims:
            n = t["rgb_jpeg_nbytes"]
            if n.min() < 4 or n.max() > dims["J"]:
                self.error("value-range", f"JPEG lengths must lie in [4, {dims['J']}]",
                           scene_id, "rgb_jpeg_nbytes")

    def manifest(self, scene_id: str, record: CommitRecord, attrs: SceneAttrs) -> None:
        data = self.store.location.get(record.manifest)
        if data is None:
            self.error("manifest-missing", f"manifest part {record.manifest} is missing",
                       scene_id)
            return
        if hashlib.sha256(data).hexdigest() != record.manifest_sha256:
            self.error("manifest-checksum", f"{record.manifest} differs from what was committed",
                       scene_id)
        try:
            table = from_parquet_bytes(data)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            self.error("manifest-unreadable", f"{record.manifest}: {exc}", scene_id)
            return
        index = np.asarray(table.column("sample_index").to_numpy(zero_copy_only=False))
        values, counts = np.unique(index, return_counts=True)
        if np.any(counts > 1):
            self.error("duplicate-sample", f"manifest rows repeat samples "
                       f"{values[counts > 1][:5].tolist()}", scene_id)
        orphan = values[(values < 0) | (values >= attrs.num_samples)]
        if len(orphan):
            self.error("manifest-row-without-data", f"manifest rows for samples "
                       f"{orphan[:5].tolist()}, but the scene has {attrs.num_samples}", scene_id)
        missing = np.setdiff1d(np.arange(attrs.num_samples), values)
        if len(missing):
            self.error("data-without-manifest-row", f"samples {missing[:5].tolist()} have no "
                       "manifest row", scene_id)
        ids = set(table.column("scene_id").to_pylist())
        if ids != {scene_id}:
            self.error("manifest-scene", f"manifest rows name scenes {sorted(ids)}", scene_id)

    def deep_array(self, scene_id, group, name, record: CommitRecord) -> None:
        spec, array = ARRAYS[name], group[name]
        digest = hashlib.sha256()
        step = int((array.shards or array.chunks)[0]) if spec.per_sample else array.shape[0]
        try:
            for start in range(0, max(1, array.shape[0]), max(1, step)):
                block = np.ascontiguousarray(array[start: start + step])
                digest.update(block.tobytes())
                if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
                    self.error("finite", f"NaN or infinite values in samples "
                               f"{start}..{start + len(block) - 1}", scene_id, name)
                if spec.value_range and block.size:
                    lo, hi = spec.value_range
                    if block.min() < lo or block.max() > hi:
                        self.error("value-range", f"values outside [{lo}, {hi}] in samples "
                                   f"{start}..{start + len(block) - 1}", scene_id, name)
        except Exception as exc:  # codec and shard-index errors from zarr
            self.error("unreadable-chunk", f"cannot read: {type(exc).__name__}: {exc}",
                       scene_id, name)
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


def format_report(report: ValidationReport) -> str:
    head = (f"{report.store}: {'VALID' if report.ok else 'INVALID'} "
            f"({report.scenes} scenes, {report.samples} samples, "
            f"{'deep' if report.deep else 'metadata and tables'}; "
            f"{len(report.errors)} errors, {len(report.findings) - len(report.errors)} warnings)")
    return "\n".join([head] + [f"  {f}" for f in report.findings])


def report_json(report: ValidationReport) -> str:
    return json.dumps(report.to_json(), indent=2)
