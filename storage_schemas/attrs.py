"""Typed models of the store's metadata (pydantic 2) and the `parse_*` functions that turn
untrusted JSON into them or raise a named `StoreError`.

- `StoreAttrs`: the root group's attributes (format, schema version, dataset, package).
- `SceneAttrs`: the attributes of a scene's ingest group (scene id, rig, sizes, source
  files with sizes and checksums).
- `CommitRecord`: the commit of one stage of one scene, written last: what was written
  (arrays with checksums, the manifest part), its content fingerprint and its typed
  provenance (`provenance.py`). A stage without one does not exist for readers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from distillprep.scenes.errors import InvalidSceneIdError
from distillprep.scenes.ids import validate_scene_id

from .errors import MetadataError, SchemaVersionError
from .provenance import StageRecord
from .spec import Stage

STORE_FORMAT = "distillprep-store"
SCHEMA_VERSION = 3
READABLE_VERSIONS = (3,)
MIGRATABLE_VERSIONS = (1, 2)
"""Versions `distillprep migrate` upgrades in place: 3 gave every stage its own group and
commit (a stage no longer rewrites the scene) and put the LiDAR points into the store."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _safe_scene_id(value: str) -> str:
    try:
        return validate_scene_id(value)
    except InvalidSceneIdError as exc:
        raise ValueError(str(exc)) from None


SceneId = Annotated[str, AfterValidator(_safe_scene_id)]
"""A scene id that `scenes.ids.validate_scene_id` accepts (it names folders and keys)."""


class SourceFile(_Model):
    """A dataset file a scene was built from."""

    path: str = Field(description="path relative to the dataroot")
    size: int = Field(ge=0, description="size in bytes")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the content")


class StoreAttrs(_Model):
    """Attributes of the store's root group."""

    format: Literal["distillprep-store"] = Field(description="marks a distillprep store")
    schema_version: int = Field(description="version of this schema the store follows")
    dataset: str = Field(description="source dataset kind, e.g. nuscenes")
    dataset_version: str = Field(description="source dataset version, e.g. v1.0-mini")
    package_version: str = Field(description="distillprep version that created the store")
    created: datetime = Field(description="creation time (UTC)")


class SceneAttrs(_Model):
    """Attributes of a scene's ingest group: what the scene is."""

    scene_id: SceneId = Field(description="safe scene id (also the group name)")
    dataset: str = Field(description="source dataset kind")
    dataset_version: str = Field(description="source dataset version, e.g. v1.0-mini")
    created: datetime = Field(description="when this version of the scene was written (UTC)")
    cameras: list[str] = Field(min_length=1, description="camera names; camera_index points here")
    lidars: list[str] = Field(default_factory=list,
                              description="LiDAR names; lidar_sensor_index points here")
    width: int = Field(gt=0, description="image width W, pixels")
    height: int = Field(gt=0, description="image height H, pixels")
    num_samples: int = Field(gt=0, description="camera samples N")
    num_frames: int = Field(gt=0, description="frames F")
    source_files: list[SourceFile] = Field(min_length=1, description="inputs with checksums")


class ArrayRecord(_Model):
    """What the writer put into one array, for the validator to check against."""

    shape: list[int] = Field(description="shape written")
    dtype: str = Field(description="dtype written")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the C-order bytes")
    stored_bytes: int = Field(ge=0, description="bytes of its files in the store")


class CommitRecord(_Model):
    """The commit of one stage of one scene, written after its arrays and manifest part:
    `commits/<scene_id>/<stage>/<sequence>.json`; the highest sequence is the stage's
    current commit."""

    scene_id: SceneId = Field(description="the scene committed")
    stage: Stage = Field(description="the stage committed")
    sequence: int = Field(ge=1, description="1 for the stage's first commit, then +1 each")
    attempt: str = Field(pattern=r"^[0-9A-Za-z_-]{1,64}$",
                         description="data folder: scenes/<scene_id>/<stage>/<attempt>")
    schema_version: int = Field(description="schema version of the data")
    committed_at: datetime = Field(description="commit time (UTC)")
    num_samples: int = Field(gt=0, description="camera samples N of the scene")
    manifest: str = Field(description="key of this stage's manifest part")
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="its SHA-256")
    arrays: dict[str, ArrayRecord] = Field(description="array name -> what was written")
    content_sha256: str = Field(pattern=r"^[0-9a-f]{64}$",
                                description="fingerprint of the arrays' contents (names and "
                                "checksums): what later stages record as their input")
    provenance: StageRecord = Field(description="how the stage made these outputs")


def content_fingerprint(checksums: Mapping[str, str]) -> str:
    """SHA-256 over the sorted array names and their content checksums (name -> hex
    SHA-256): equal exactly when a stage holds the same data, wherever and whenever it
    was written."""
    text = "\n".join(f"{name} {checksums[name]}" for name in sorted(checksums))
    return hashlib.sha256(text.encode()).hexdigest()


def parse_model(model: type[BaseModel], raw: Any, where: str) -> Any:
    """`model` from untrusted JSON data, or a MetadataError naming `where` and each field."""
    if not isinstance(raw, Mapping):
        raise MetadataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
                             for e in exc.errors())
        raise MetadataError(f"{where}: {problems}") from None


def parse_json(data: bytes, where: str) -> Any:
    """JSON from bytes, or a MetadataError naming the object."""
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{where}: not valid JSON: {exc}") from None


def check_schema_version(version: Any, where: str, location: str = "STORE") -> None:
    """Raise SchemaVersionError with what to do when `version` is not readable as is."""
    if not isinstance(version, int):
        raise SchemaVersionError(f"{where}: schema_version {version!r} is not an integer")
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(f"{where}: schema version {version} is newer than this "
                                 f"distillprep reads ({SCHEMA_VERSION}); upgrade distillprep")
    if version in MIGRATABLE_VERSIONS:
        raise SchemaVersionError(f"{where}: schema version {version}, this distillprep reads "
                                 f"{SCHEMA_VERSION}: upgrade the store in place with "
                                 f"`distillprep migrate {location}`")
    if version not in READABLE_VERSIONS:
        raise SchemaVersionError(f"{where}: schema version {version} is not one this "
                                 "distillprep reads or migrates; rebuild the store with "
                                 "`distillprep ingest --force`")


def parse_store_attrs(raw: Any, where: str = "store attributes",
                      location: str = "STORE") -> StoreAttrs:
    if isinstance(raw, Mapping) and raw.get("format") != STORE_FORMAT:
        raise MetadataError(f"{where}: format is {raw.get('format')!r}, not {STORE_FORMAT!r}")
    if isinstance(raw, Mapping):
        check_schema_version(raw.get("schema_version"), where, location)
    return parse_model(StoreAttrs, raw, where)


def parse_scene_attrs(raw: Any, where: str = "scene attributes") -> SceneAttrs:
    return parse_model(SceneAttrs, raw, where)


def parse_commit(raw: Any, where: str = "commit record") -> CommitRecord:
    if isinstance(raw, Mapping) and isinstance(raw.get("schema_version"), int):
        check_schema_version(raw["schema_version"], where)
    return parse_model(CommitRecord, raw, where)


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of a config's canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "store_attrs": StoreAttrs, "scene_attrs": SceneAttrs, "commit_record": CommitRecord,
}
