"""The store: one zarr v3 hierarchy per prepared dataset, in which every stage of every
scene is written and committed on its own.

Layout (keys relative to the store root):
    zarr.json                                         root group; attributes: StoreAttrs
    scenes/<scene_id>/<stage>/<attempt>/              one stage's zarr group and arrays
    manifest/<scene_id>/<stage>/<attempt>.parquet     that stage's manifest columns
    commits/<scene_id>/<stage>/<sequence>.json        CommitRecord, written last

A commit writes only its own stage's arrays into a fresh `<attempt>` folder that no reader
looks at, then its manifest part, then creates the commit record `<sequence>.json` with
an exclusive create (one atomic object write that fails if the name exists): the highest
sequence is the stage's current commit. So a killed writer leaves the previous commit
intact; two stages committed to one scene at once both land (they share nothing); of two
commits of the same stage started from the same state one wins and the other raises
`CommitConflictError`. Only after its commit does a writer remove data: that of commits
superseded more than `SUPERSEDED_GRACE` ago (a reader of the previous version can
finish), never an attempt that no commit names (another writer's, in progress) unless it
is older than `ABANDONED_AFTER`. This holds on a local path and on object
stores (no rename needed). A failed write (a full disk: `StoreIOError`, exit 3) removes
its own attempt before it raises; a cleanup that cannot remove something (a symbolic
link, a permission) logs a warning naming it and never fails a commit that landed.
Every shard belongs to one array of one attempt: one writer owns it, so zarr's
read-modify-write of shards can never race.

Each commit records the content fingerprint of the commits it was computed from
(`provenance.inputs`): a stage whose inputs were replaced since is stale and readers do
not show it (`scene_view.SceneView`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from zarr.core.sync import sync

from distillprep.scenes.ids import validate_scene_id

from . import codec_pipeline
from .attrs import (
    SCHEMA_VERSION,
    STORE_FORMAT,
    ArrayRecord,
    CommitRecord,
    SceneAttrs,
    StoreAttrs,
    content_fingerprint,
    parse_commit,
    parse_json,
    parse_store_attrs,
)
from .backend import TIME_FORMAT, Location, is_temp_name, started_at
from .errors import (
    CleanupError,
    CommitConflictError,
    InputsChangedError,
    NotAStoreError,
    SceneIncompleteError,
    SchemaViolationError,
    StoreError,
)
from .layout import array_sha256, write_group
from .manifest import STAGE_COLUMNS, part_schema, to_parquet_bytes
from .provenance import StageRecord
from .scene_view import SceneView, current_commits
from .spec import ARRAYS, STAGES, infer_dims, required_arrays

SUPERSEDED_GRACE = timedelta(hours=1)
"""A superseded commit's data stays this long after the commit that replaced it: a reader
(a feature run reading the teacher's views) that opened it just before can finish, and the
stage's inputs check then refuses its stale result. A later commit of the stage removes
it."""
ABANDONED_AFTER = timedelta(hours=24)
"""An attempt no commit names and older than this was left by a killed writer: no live
writer takes this long between starting an attempt and committing it."""

log = logging.getLogger(__name__)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distillprep")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def commit_key(scene_id: str, stage: str, sequence: int) -> str:
    return f"commits/{scene_id}/{stage}/{sequence:08d}.json"


def _parse_commit_key(key: str) -> tuple[str, str, int] | None:
    """(scene, stage, sequence) of a key under commits/, or None for anything else."""
    parts = key.split("/")
    if len(parts) != 3 or parts[1] not in STAGES or is_temp_name(parts[2]):
        return None
    name = parts[2]
    if not name.endswith(".json") or not name[:-5].isdigit():
        return None
    return parts[0], parts[1], int(name[:-5])


class Store:
    """An opened store. `open_store` / `create_store` make one."""

    def __init__(self, location: Location, attrs: StoreAttrs):
        self.location = location
        self.attrs = attrs

    @property
    def read_only(self) -> bool:
        return self.location.read_only

    # -- commits -----------------------------------------------------------------------
    def sequences(self, scene_id: str) -> dict[str, list[int]]:
        """Stage -> the sequence numbers of its commit records, ascending."""
        validate_scene_id(scene_id)
        found: dict[str, list[int]] = {}
        for key in self.location.find(f"commits/{scene_id}"):
            parsed = _parse_commit_key(f"{scene_id}/{key}")
            if parsed is not None:
                found.setdefault(parsed[1], []).append(parsed[2])
        return {stage: sorted(seqs) for stage, seqs in found.items()}

    def read_commit(self, scene_id: str, stage: str, sequence: int) -> CommitRecord:
        key = commit_key(scene_id, stage, sequence)
        raw = self.location.get(key)
        where = f"scene {scene_id!r}, stage {stage}: {key}"
        if raw is None:
            raise SceneIncompleteError(f"{where} does not exist")
        record = parse_commit(parse_json(raw, where), where)
        if (record.scene_id, record.stage, record.sequence) != (scene_id, stage, sequence):
            raise StoreError(f"{where}: records scene {record.scene_id!r}, stage "
                             f"{record.stage}, sequence {record.sequence}")
        return record

    def heads(self, scene_id: str) -> dict[str, CommitRecord]:
        """Stage -> its latest commit (current or stale) for every committed stage."""
        return {stage: self.read_commit(scene_id, stage, seqs[-1])
                for stage, seqs in self.sequences(scene_id).items()}

    def head(self, scene_id: str, stage: str) -> CommitRecord | None:
        """The stage's latest commit, or None."""
        seqs = self.sequences(scene_id).get(stage)
        return self.read_commit(scene_id, stage, seqs[-1]) if seqs else None

    def scenes(self) -> list[str]:
        """Ids of the scenes with a committed ingest stage, sorted."""
        found = set()
        for key in self.location.find("commits"):
            parsed = _parse_commit_key(key)
            if parsed is not None and parsed[1] == "ingest":
                found.add(parsed[0])
        return sorted(found)

    # -- reading -----------------------------------------------------------------------
    def scene(self, scene_id: str) -> SceneView:
        """The scene as committed now: its current stages and their arrays."""
        heads = self.heads(scene_id)
        if "ingest" not in heads:
            raise SceneIncompleteError(f"scene {scene_id!r} is not in store "
                                       f"{self.location.location} (absent or never committed)")
        return SceneView(self, scene_id, heads)

    def scene_attrs(self, scene_id: str) -> SceneAttrs:
        return self.scene(scene_id).attrs

    def manifest(self, scene_ids: list[str] | None = None) -> pa.Table:
        """Manifest rows of committed scenes (all, or those named), current stages only."""
        from .manifest import MANIFEST_SCHEMA

        parts = [self.scene(s).manifest() for s in
                 (self.scenes() if scene_ids is None else scene_ids)]
        return pa.concat_tables(parts) if parts else MANIFEST_SCHEMA.empty_table()

    # -- writing -----------------------------------------------------------------------
    def write_scene(self, attrs: SceneAttrs, arrays: Mapping[str, np.ndarray],
                    manifest: pa.Table, provenance: StageRecord,
                    expect_sequence: int | None = None) -> CommitRecord:
        """Commit a scene's ingest stage (a new scene, or a new version of one)."""
        return self.commit_stage(attrs.scene_id, provenance, arrays, manifest,
                                 expect_sequence=expect_sequence, scene_attrs=attrs)

    def commit_stage(self, scene_id: str, provenance: StageRecord,
                     arrays: Mapping[str, np.ndarray],
                     columns: pa.Table | Mapping[str, list] | None = None, *,
                     expect_sequence: int | None = None,
                     scene_attrs: SceneAttrs | None = None) -> CommitRecord:
        """Commit `arrays` as stage `provenance.stage` of a scene, touching nothing else.

        columns: the stage's manifest columns (a table with them, or name -> N values);
        expect_sequence: the sequence of the stage's commit the writer started from (0:
        none), so that a commit made meanwhile by another writer makes this one lose
        (default: whatever is current now); scene_attrs: for ingest, what the scene is.
        Raises CommitConflictError when another writer committed this stage first, and
        InputsChangedError when the stages it was computed from changed meanwhile.
        """
        if self.read_only:
            raise PermissionError(f"store {self.location.location} is open read-only")
        validate_scene_id(scene_id)
        stage = provenance.stage
        where = f"scene {scene_id!r}, stage {stage}"
        arrays = {name: np.asarray(data) for name, data in arrays.items()}
        wrong = sorted(n for n in arrays if n not in ARRAYS or ARRAYS[n].stage != stage)
        if wrong:
            raise SchemaViolationError(f"{where}: arrays {wrong} do not belong to this stage")
        heads = self.heads(scene_id)
        base = heads[stage].sequence if stage in heads else 0
        if expect_sequence is not None and base != expect_sequence:
            raise CommitConflictError(self._lost(where, heads.get(stage)))
        if stage == "ingest":
            if scene_attrs is None or scene_attrs.scene_id != scene_id:
                raise ValueError("an ingest commit needs the scene's attributes")
            attrs, has_views = scene_attrs, False
        else:
            if "ingest" not in heads:
                raise SceneIncompleteError(f"{where}: the scene is not in store "
                                           f"{self.location.location}: ingest it first")
            view = SceneView(self, scene_id, heads)
            attrs, has_views = view.attrs, view.has_virtual_views()
            if dict(provenance.inputs) != view.input_fingerprints(stage):
                raise InputsChangedError(f"{where}: the outputs it was computed from were "
                                         "replaced while it ran; nothing was committed: run "
                                         "it again")
        dims = self._check_arrays(where, attrs, stage, arrays, has_views)
        manifest = self._manifest_part(where, stage, columns, attrs.num_samples, scene_id,
                                       set(arrays))
        attempt = f"{datetime.now(UTC):{TIME_FORMAT}}-{secrets.token_hex(4)}"
        prefix = f"scenes/{scene_id}/{stage}/{attempt}"
        manifest_key = f"manifest/{scene_id}/{stage}/{attempt}.parquet"
        try:
            record = self._write(scene_id, stage, attempt, prefix, manifest_key, attrs,
                                 arrays, manifest, provenance, base + 1, dims)
            won = self.location.put_exclusive(commit_key(scene_id, stage, base + 1),
                                              record.model_dump_json(indent=1).encode())
        except BaseException:
            self._discard(prefix, manifest_key)
            raise
        if not won:
            self._discard(prefix, manifest_key)
            raise CommitConflictError(self._lost(where, self.head(scene_id, stage)))
        try:  # the commit landed: what its cleanup cannot do is a warning, no failure
            self.remove_superseded(scene_id, stage, record)
        except (OSError, StoreError) as exc:
            log.warning("%s: committed as sequence %d, but the superseded data could not be "
                        "looked through for removal: %s", where, record.sequence, exc)
        if stage != "ingest":
            now = SceneView(self, scene_id, self.heads(scene_id))
            if stage not in now.commits:
                raise InputsChangedError(f"{where}: committed as sequence {record.sequence}, "
                                         "but the outputs it was computed from were replaced "
                                         "meanwhile, so it is stale: run it again")
        return record

    @staticmethod
    def _lost(where: str, theirs: CommitRecord | None) -> str:
        other = (f"commit {theirs.sequence} of {theirs.committed_at:%Y-%m-%d %H:%M:%S} UTC"
                 if theirs else "a commit")
        return (f"{where}: another writer committed it first ({other}); this writer's "
                "outputs were discarded and theirs stand")

    def _check_arrays(self, where: str, attrs: SceneAttrs, stage: str,
                      arrays: dict[str, np.ndarray], has_views: bool) -> dict[str, int]:
        missing = sorted(set(required_arrays(stage, has_views)) - set(arrays))
        if missing:
            raise SchemaViolationError(f"{where}: arrays {missing} of this stage are missing")
        dims, conflicts = infer_dims({n: a.shape for n, a in arrays.items()})
        problems = [message for _, message in conflicts]
        scene = {"N": attrs.num_samples, "F": attrs.num_frames, "H": attrs.height,
                 "W": attrs.width}
        problems += [f"{d} = {dims[d]}, the scene has {d} = {v}" for d, v in scene.items()
                     if dims.get(d, v) != v]
        for name, data in arrays.items():
            spec = ARRAYS[name]
            if data.dtype != np.dtype(spec.dtype):
                problems.append(f"array {name}: dtype {data.dtype}, the schema wants "
                                f"{spec.dtype}")
        if problems:
            raise SchemaViolationError(f"{where}: {'; '.join(problems)}")
        return {**dims, **scene}

    def _manifest_part(self, where: str, stage: str, columns, rows: int, scene_id: str,
                       arrays: set[str]) -> pa.Table:
        schema = part_schema(stage)
        if isinstance(columns, pa.Table):
            table = columns
        else:
            values = dict(columns or {})
            unknown = sorted(set(values) - set(STAGE_COLUMNS[stage]))
            if unknown:
                raise SchemaViolationError(f"{where}: manifest columns {unknown} are not "
                                           "this stage's")
            values.setdefault("scene_id", [scene_id] * rows)
            values.setdefault("sample_index", list(range(rows)))
            for name in STAGE_COLUMNS[stage]:  # has_<array>: every row, when it was written
                values.setdefault(name, [name[4:] in arrays] * rows if name.startswith("has_")
                                  else [None] * rows)
            table = pa.table({n: pa.array(values[n], type=schema.field(n).type)
                              for n in schema.names})
        missing = [n for n in schema.names if n not in table.column_names]
        if missing or table.num_rows != rows:
            raise SchemaViolationError(f"{where}: manifest part needs {rows} rows with columns "
                                       f"{schema.names} (missing {missing})")
        if set(table.column("scene_id").to_pylist()) != {scene_id}:
            raise SchemaViolationError(f"{where}: manifest rows name other scenes")
        return table

    def _write(self, scene_id, stage, attempt, prefix, manifest_key, attrs: SceneAttrs,
               arrays, manifest: pa.Table, provenance, sequence: int, dims) -> CommitRecord:
        self._ensure_group("scenes")
        self._ensure_group(f"scenes/{scene_id}")
        self._ensure_group(f"scenes/{scene_id}/{stage}")
        group_attrs = (attrs.model_dump(mode="json") if stage == "ingest"
                       else {"scene_id": scene_id, "stage": stage})
        try:
            sync(write_group(self.location.sub(prefix).zarr_store(), group_attrs, arrays))
        except (OSError, RuntimeError) as exc:  # a full disk, from Python or from zarrs
            array = next((n[len("array "):] for n in getattr(exc, "__notes__", [])
                          if n.startswith("array ")), None)
            error = self.location.io_error(f"write scene {scene_id!r}, stage {stage}: array",
                                           f"{prefix}/{array}" if array else prefix, exc)
            if error is None:
                raise
            raise error from exc
        records = {name: ArrayRecord(shape=list(data.shape), dtype=str(data.dtype),
                                     sha256=array_sha256(data),
                                     stored_bytes=self.location.size_under(f"{prefix}/{name}"))
                   for name, data in arrays.items()}
        manifest_bytes = to_parquet_bytes(manifest, stage)
        self.location.put(manifest_key, manifest_bytes)
        return CommitRecord(
            scene_id=scene_id, stage=stage, sequence=sequence, attempt=attempt,
            schema_version=SCHEMA_VERSION, committed_at=datetime.now(UTC),
            num_samples=attrs.num_samples, manifest=manifest_key,
            manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(), arrays=records,
            content_sha256=content_fingerprint({n: r.sha256 for n, r in records.items()}),
            provenance=provenance)

    def _discard(self, prefix: str, manifest_key: str) -> None:
        """Remove this writer's own uncommitted attempt (best effort: never masks the
        error that got us here; what stays is removed by a later commit's cleanup once
        ABANDONED_AFTER has passed)."""
        for key in (prefix, manifest_key):
            try:
                remove_or_warn(self, key, "this writer's failed attempt")
            except Exception as exc:  # noqa: BLE001 - never masks the error being raised
                log.warning("store %s: could not remove this writer's failed attempt %s: "
                            "%s: %s", self.location.location, key, type(exc).__name__, exc)

    def commit_records(self, scene_id: str, stage: str, head: CommitRecord,
                       ) -> dict[int, CommitRecord]:
        """Sequence -> record of the stage's commits up to `head` that can be read (an
        unreadable old record names nothing that can be proved)."""
        records = {head.sequence: head}
        for sequence in self.sequences(scene_id).get(stage, []):
            if sequence < head.sequence:
                try:
                    records[sequence] = self.read_commit(scene_id, stage, sequence)
                except StoreError:
                    continue
        return records

    def remove_superseded(self, scene_id: str, stage: str, head: CommitRecord) -> list[str]:
        """Delete the data of the stage's commits that were superseded more than
        SUPERSEDED_GRACE ago (readers that opened them just before have that long to
        finish), and attempts and temporary files no commit names that are older than
        ABANDONED_AFTER; never what another writer may still be writing. Returns what was
        removed."""
        removed = []
        commits = f"commits/{scene_id}/{stage}"
        for name in self.location.children(commits):  # a commit killed mid-write
            if (is_temp_name(name) and _abandoned(name)
                    and remove_or_warn(self, f"{commits}/{name}", "an abandoned commit")):
                removed.append(f"{commits}/{name}")
        folder = f"scenes/{scene_id}/{stage}"
        others = [a for a in self.location.children(folder) if a not in (head.attempt,
                                                                         "zarr.json")]
        if not others:
            return removed
        records = self.commit_records(scene_id, stage, head)
        now, superseded = datetime.now(UTC), set()
        for sequence, record in records.items():
            after = records.get(sequence + 1)
            if after is not None and now - after.committed_at > SUPERSEDED_GRACE:
                superseded.add(record.attempt)
        named = {record.attempt for record in records.values()}
        for name in others:
            if name in superseded or (name not in named and _abandoned(name)):
                keys = [f"{folder}/{name}"]
                if not is_temp_name(name):
                    keys.append(f"manifest/{scene_id}/{stage}/{name}.parquet")
                what = "a superseded attempt" if name in superseded else "an abandoned attempt"
                removed += [key for key in keys if remove_or_warn(self, key, what)]
        return removed

    def delete_scene(self, scene_id: str) -> None:
        """Uncommit a scene (its ingest commits first, so it vanishes at once), then
        remove its data."""
        validate_scene_id(scene_id)
        self.location.delete(f"commits/{scene_id}/ingest")
        self.location.delete(f"commits/{scene_id}")
        self.location.delete(f"scenes/{scene_id}")
        self.location.delete(f"manifest/{scene_id}")

    def _ensure_group(self, path: str) -> None:
        # Written whole and atomically by us, so that concurrent writers of other scenes
        # never see or leave a half-written parent.
        if not self.location.exists(f"{path}/zarr.json"):
            meta = {"zarr_format": 3, "node_type": "group", "attributes": {}}
            self.location.put(f"{path}/zarr.json", json.dumps(meta).encode())


def remove_or_warn(store: Store, key: str, what: str) -> bool:
    """Delete `key` (an object or a prefix) as cleanup: True when it is gone; when it
    cannot be removed (a symbolic link, a permission, an I/O error) a warning naming it
    is logged and it stays (False)."""
    try:
        store.location.delete(key)
    except CleanupError as exc:  # its message names the store and the key
        log.warning("%s (%s, left in place)", exc, what)
        return False
    except (OSError, StoreError) as exc:
        log.warning("store %s: could not remove %s %s (left in place): %s",
                    store.location.location, what, key, exc)
        return False
    return True


def _abandoned(name: str) -> bool:
    """Whether an attempt or temporary file was started longer ago than any live writer
    takes (names that carry no start time are never taken for abandoned)."""
    started = started_at(name)
    return started is not None and datetime.now(UTC) - started > ABANDONED_AFTER


def _root_attributes(loc: Location, location: str | Path) -> dict[str, Any]:
    raw = loc.get("zarr.json")
    if raw is None:
        raise NotAStoreError(f"{location} is not a distillprep store (no zarr.json)")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise NotAStoreError(f"{location}: zarr.json is not valid JSON") from None
    attributes = meta.get("attributes", {}) if isinstance(meta, dict) else {}
    if not isinstance(attributes, dict) or attributes.get("format") != STORE_FORMAT:
        raise NotAStoreError(f"{location} is a zarr hierarchy but not a distillprep store "
                             f"(root attribute format != {STORE_FORMAT!r})")
    return attributes


def open_store(location: str | Path, mode: str = "r",
               storage_options: dict[str, Any] | None = None) -> Store:
    """Open an existing store; read-only unless mode is "a". A store of an older schema
    is refused with the `distillprep migrate` command that upgrades it."""
    codec_pipeline.use()
    loc = Location(location, read_only=mode == "r", storage_options=storage_options)
    attributes = _root_attributes(loc, location)
    return Store(loc, parse_store_attrs(attributes, f"{location}: root attributes",
                                        str(location)))


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
    with loc.io_errors("create", "zarr.json"):  # a full disk: StoreIOError, not a traceback
        group = loc.open_group("", mode="a")
        group.attrs.update(attrs.model_dump(mode="json"))
    return Store(loc, attrs)


def scene_stages(store: Store, scene_id: str) -> dict[str, CommitRecord]:
    """The scene's current (not stale) stage commits."""
    return current_commits(store.heads(scene_id))[0]
