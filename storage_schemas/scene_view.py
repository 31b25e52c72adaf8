"""One scene as committed now: its current stages, their arrays, provenance and manifest.

A stage's latest commit is *current* when every stage it was computed from
(`spec.STAGE_INPUTS`) is current and is the very commit it records in
`provenance.inputs`; otherwise it is *stale* (the scene was re-ingested, or the teacher
rendered again, since) and a reader does not see it: its arrays and manifest columns are
absent, as if the stage had not run, until its job runs again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import zarr

from .attrs import CommitRecord, SceneAttrs, parse_scene_attrs
from .errors import (
    ChunkChecksumError,
    MetadataError,
    ReplacedWhileReadingError,
    SceneIncompleteError,
    StoreError,
    StoreReadError,
)
from .manifest import join_parts, part_from_parquet_bytes
from .provenance import StageRecord
from .spec import ARRAYS, STAGE_INPUTS, STAGES

if TYPE_CHECKING:
    from .store import Store


def current_commits(heads: dict[str, CommitRecord],
                    ) -> tuple[dict[str, CommitRecord], dict[str, str]]:
    """(current commits, stale stage -> why) of a scene's latest commits per stage."""
    current: dict[str, CommitRecord] = {}
    stale: dict[str, str] = {}
    for stage in STAGES:
        record = heads.get(stage)
        if record is None:
            continue
        reasons = []
        for source in STAGE_INPUTS[stage]:
            used = record.provenance.inputs.get(source)
            now = current[source].content_sha256 if source in current else None
            if used == now:
                continue
            if used is None:
                reasons.append(f"made without {source} outputs, which the scene has now")
            elif now is None:
                reasons.append(f"made from {source} outputs the scene no longer has")
            else:
                reasons.append(f"made from {source} {used[:12]}, the scene now holds "
                               f"{source} {now[:12]}")
        if reasons:
            stale[stage] = "; ".join(reasons)
        else:
            current[stage] = record
    return current, stale


def read_error(exc: Exception, where: str) -> StoreReadError:
    """The named error for stored bytes that did not read or decode, its message `where`
    then the cause: a checksum mismatch stays a ChunkChecksumError (its cause names the
    chunk), anything else is a StoreReadError."""
    if isinstance(exc, ChunkChecksumError):
        return ChunkChecksumError(f"{where}: {exc}", exc.key, exc.chunk)
    return StoreReadError(f"{where}: {type(exc).__name__}: {exc}")


class CheckedArray:
    """A stored array whose reads turn any failure to read or decode its bytes into a
    StoreReadError naming the scene, the array and its files; everything else (shape,
    dtype, chunks, ...) is the zarr array's. A block that comes back all zeros (zarr's
    answer for chunks that are not there) is only trusted once the version it was read
    from is checked to still exist (ReplacedWhileReadingError otherwise)."""

    def __init__(self, array: zarr.Array, view: SceneView, stage: str, name: str,
                 where: str):
        self._array, self.view, self.stage = array, view, stage
        self.scene_id, self.name, self.where = view.scene_id, name, where

    def __getattr__(self, attribute: str):
        return getattr(self._array, attribute)

    def __len__(self) -> int:
        return len(self._array)

    def __getitem__(self, selection):
        try:
            data = self._array[selection]
        except (IndexError, TypeError):
            raise  # a selection the array does not have: the caller's mistake
        except Exception as exc:  # noqa: BLE001 - codecs and shard indexes raise anything
            raise read_error(exc, f"scene {self.scene_id!r}, array {self.name} "
                                  f"({self.where}): cannot read the stored bytes") from None
        if np.size(data) and not np.any(data):
            self.view.check_still_there(self.stage)
        return data


class SceneView:
    """A committed scene: `view[name]` is a zarr array of a current stage."""

    def __init__(self, store: Store, scene_id: str, heads: dict[str, CommitRecord]):
        if "ingest" not in heads:
            raise SceneIncompleteError(f"scene {scene_id!r} has no ingest commit")
        self.store, self.scene_id, self.heads = store, scene_id, heads
        self.commits, self.stale = current_commits(heads)
        self._groups: dict[str, zarr.Group] = {}
        self._attrs: SceneAttrs | None = None

    # -- what the scene holds ------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Content fingerprint of the scene's ingested data (images, poses, LiDAR)."""
        return self.commits["ingest"].content_sha256

    @property
    def attrs(self) -> SceneAttrs:
        if self._attrs is None:
            where = f"scene {self.scene_id!r}: {self.group_path('ingest')}/zarr.json"
            try:
                raw = dict(self.group("ingest").attrs)
            except (OSError, ValueError, KeyError) as exc:
                raise MetadataError(f"{where}: unreadable ({type(exc).__name__}: {exc})"
                                    ) from None
            self._attrs = parse_scene_attrs(raw, f"{where} attributes")
        return self._attrs

    def provenance(self, stage: str) -> StageRecord | None:
        """The current provenance record of a stage, or None when it has none."""
        record = self.commits.get(stage)
        return None if record is None else record.provenance

    def stages(self) -> dict[str, StageRecord]:
        """Stage -> provenance of every current stage."""
        return {stage: record.provenance for stage, record in self.commits.items()}

    def input_fingerprints(self, stage: str) -> dict[str, str]:
        """What a run of `stage` now would record as its inputs."""
        return {source: self.commits[source].content_sha256 for source in STAGE_INPUTS[stage]
                if source in self.commits}

    def has_virtual_views(self) -> bool:
        """Whether the scene has current teacher outputs, virtual views included."""
        return "teacher" in self.commits

    # -- arrays ----------------------------------------------------------------------------
    def group_path(self, stage: str) -> str:
        return f"scenes/{self.scene_id}/{stage}/{self.heads[stage].attempt}"

    def group(self, stage: str) -> zarr.Group:
        """The zarr group of a stage's commit (current or stale)."""
        if stage not in self._groups:
            path = self.group_path(stage)
            try:
                self._groups[stage] = self.store.location.open_group(path, mode="r")
            except (FileNotFoundError, KeyError) as exc:
                self.check_still_there(stage)
                raise StoreError(f"scene {self.scene_id!r}, stage {stage}: its commit names "
                                 f"{path}, which does not exist ({exc})") from None
            except Exception as exc:  # noqa: BLE001 - a damaged zarr.json raises anything
                raise MetadataError(f"scene {self.scene_id!r}, stage {stage}: "
                                    f"{self._file(path)}/zarr.json is unreadable: "
                                    f"{type(exc).__name__}: {exc}") from None
        return self._groups[stage]

    def check_still_there(self, stage: str) -> None:
        """Raise ReplacedWhileReadingError when the version of `stage` this view read is
        gone because a newer commit replaced it (its data removed after the grace)."""
        if self.store.location.exists(f"{self.group_path(stage)}/zarr.json"):
            return
        now = self.store.head(self.scene_id, stage)
        if now is not None and now.sequence != self.heads[stage].sequence:
            raise ReplacedWhileReadingError(
                f"scene {self.scene_id!r}: its {stage} outputs (commit "
                f"{self.heads[stage].sequence}) were replaced by commit {now.sequence} and "
                "removed while this read them: nothing read from them is used; run it "
                "again")

    def _file(self, key: str) -> str:
        return f"{self.store.location.location.rstrip('/')}/{key}"

    def array_names(self) -> list[str]:
        """Arrays of the current stages, in schema order."""
        return [name for name, spec in ARRAYS.items()
                if spec.stage in self.commits and name in self.commits[spec.stage].arrays]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.array_names()

    def __getitem__(self, name: str) -> CheckedArray:
        spec = ARRAYS.get(name)
        if spec is None:
            raise KeyError(f"{name!r} is not an array of the schema")
        if name not in self:
            raise SceneIncompleteError(self.missing_message(name))
        where = self._file(f"{self.group_path(spec.stage)}/{name}")
        try:
            array = self.group(spec.stage)[name]
        except KeyError:
            self.check_still_there(spec.stage)
            raise StoreError(f"scene {self.scene_id!r}, array {name}: committed in "
                             f"{self.group_path(spec.stage)} but not there") from None
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged zarr.json raises anything
            raise MetadataError(f"scene {self.scene_id!r}, array {name}: {where}/zarr.json "
                                f"is unreadable: {type(exc).__name__}: {exc}") from None
        return CheckedArray(array, self, spec.stage, name, where)

    def missing_message(self, name: str) -> str:
        """Why the scene has no array `name`, and what to run."""
        from .spec import STAGE_COMMANDS

        stage = ARRAYS[name].stage
        if stage in self.stale:
            why = f"its {stage} outputs are stale ({self.stale[stage]})"
        elif stage in self.commits:
            why = f"its {stage} outputs have no {name} (no virtual views to describe)"
        else:
            why = f"stage {stage} has not run on it"
        return (f"scene {self.scene_id!r} of store {self.store.location.location} has no "
                f"array {name}: {why}; run `{STAGE_COMMANDS[stage]}`")

    # -- manifest --------------------------------------------------------------------------
    def manifest(self) -> pa.Table:
        """The scene's rows: ingest columns and those of the current stages."""
        parts = {}
        for stage, record in self.commits.items():
            where = f"scene {self.scene_id!r}, stage {stage}: {record.manifest}"
            data = self.store.location.get(record.manifest)
            if data is None:
                raise StoreError(f"{where}: manifest part missing")
            parts[stage] = part_from_parquet_bytes(data, stage, where)
        return join_parts(parts, f"scene {self.scene_id!r} manifest")
