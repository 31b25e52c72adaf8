"""Typed models of the store's metadata (pydantic 2) and the `parse_*` functions that turn
untrusted JSON into them or raise a named `StoreError`.

- `StoreAttrs`: the root group's attributes (format, schema version, dataset, package).
- `SceneAttrs`: a scene group's attributes (scene id, rig, sizes, source files with
  sizes and checksums, and a `StageRecord` for every stage that has filled it).
- `CommitRecord`: the commit marker of a scene, written last; a scene without one does
  not exist for readers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from distillprep.scenes.errors import InvalidSceneIdError
from distillprep.scenes.ids import validate_scene_id

from .errors import MetadataError, SchemaVersionError
from .spec import Stage

STORE_FORMAT = "distillprep-store"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Versions read as they are: 2 replaced version 1's single `features` stage, which no
release ever filled, by one stage per feature family and added arrays, so every version-1
store is a valid version-2 store."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceFile(_Model):
    """A dataset file a scene was built from."""

    path: str = Field(description="path relative to the dataroot")
    size: int = Field(ge=0, description="size in bytes")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the content")


class StageRecord(_Model):
    """Provenance of one stage's outputs in a scene."""

    stage: Stage = Field(description="which stage")
    config: dict[str, Any] = Field(description="the stage's full configuration")
    config_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the config")
    package_version: str = Field(description="distillprep version that ran it")
    finished_at: datetime = Field(description="when the stage finished (UTC)")
    wall_time_s: float = Field(ge=0, description="seconds the stage took for this scene")
    extra: dict[str, Any] = Field(default_factory=dict,
                                  description="stage-specific facts (backend, weights, ...)")


class StoreAttrs(_Model):
    """Attributes of the store's root group."""

    format: Literal["distillprep-store"] = Field(description="marks a distillprep store")
    schema_version: int = Field(description="version of this schema the store follows")
    dataset: str = Field(description="source dataset kind, e.g. nuscenes")
    dataset_version: str = Field(description="source dataset version, e.g. v1.0-mini")
    package_version: str = Field(description="distillprep version that created the store")
    created: datetime = Field(description="creation time (UTC)")


class SceneAttrs(_Model):
    """Attributes of one scene group."""

    scene_id: str = Field(description="safe scene id (also the group name)")
    dataset: str = Field(description="source dataset kind")
    dataset_version: str = Field(description="source dataset version, e.g. v1.0-mini")
    created: datetime = Field(description="when this version of the scene was written (UTC)")
    cameras: list[str] = Field(min_length=1, description="camera names; camera_index points here")
    width: int = Field(gt=0, description="image width W, pixels")
    height: int = Field(gt=0, description="image height H, pixels")
    num_samples: int = Field(gt=0, description="camera samples N")
    num_frames: int = Field(gt=0, description="frames F")
    source_files: list[SourceFile] = Field(min_length=1, description="inputs with checksums")
    stages: dict[str, StageRecord] = Field(description="stage name -> provenance")

    @field_validator("scene_id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        try:
            return validate_scene_id(value)
        except InvalidSceneIdError as exc:
            raise ValueError(str(exc)) from None


class ArrayRecord(_Model):
    """What the writer put into one array, for the validator to check against."""

    shape: list[int] = Field(description="shape written")
    dtype: str = Field(description="dtype written")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the C-order bytes")
    stored_bytes: int = Field(ge=0, description="bytes of its files in the store")


class CommitRecord(_Model):
    """The commit marker of a scene, written after all its data and its manifest part."""

    scene_id: str = Field(description="the scene committed")
    attempt: str = Field(pattern=r"^[0-9A-Za-z_-]{1,64}$",
                         description="data folder of this write: scenes/<scene_id>/<attempt>")
    schema_version: int = Field(description="schema version of the data")
    committed_at: datetime = Field(description="commit time (UTC)")
    num_samples: int = Field(gt=0, description="manifest rows of the scene")
    manifest: str = Field(description="key of the scene's manifest part")
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="its SHA-256")
    arrays: dict[str, ArrayRecord] = Field(description="array name -> what was written")


def _parse(model: type[_Model], raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise MetadataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
                             for e in exc.errors())
        raise MetadataError(f"{where}: {problems}") from None


def check_schema_version(version: Any, where: str) -> None:
    """Raise SchemaVersionError with what to do when `version` is not readable as is."""
    if not isinstance(version, int):
        raise SchemaVersionError(f"{where}: schema_version {version!r} is not an integer")
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(f"{where}: schema version {version} is newer than this "
                                 f"distillprep reads ({SCHEMA_VERSION}); upgrade distillprep")
    if version < SCHEMA_VERSION and version not in READABLE_VERSIONS:
        # No released version predates 1: there is nothing to migrate from yet. A future
        # version adds its step to MIGRATIONS and `distillprep migrate` applies them.
        raise SchemaVersionError(f"{where}: schema version {version} is older than "
                                 f"{SCHEMA_VERSION} and has no migration; re-run "
                                 "`distillprep ingest --force` to rebuild the store")


def parse_store_attrs(raw: Any, where: str = "store attributes") -> StoreAttrs:
    if isinstance(raw, Mapping) and raw.get("format") != STORE_FORMAT:
        raise MetadataError(f"{where}: format is {raw.get('format')!r}, not {STORE_FORMAT!r}")
    if isinstance(raw, Mapping):
        check_schema_version(raw.get("schema_version"), where)
    return _parse(StoreAttrs, raw, where)


def parse_scene_attrs(raw: Any, where: str = "scene attributes") -> SceneAttrs:
    return _parse(SceneAttrs, raw, where)


def parse_commit(raw: Any, where: str = "commit record") -> CommitRecord:
    record = _parse(CommitRecord, raw, where)
    check_schema_version(record.schema_version, where)
    return record


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of a config's canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "store_attrs": StoreAttrs, "scene_attrs": SceneAttrs, "commit_record": CommitRecord,
}
