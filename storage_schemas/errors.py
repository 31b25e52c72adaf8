"""The store's error hierarchy: every problem with a store is a `StoreError`, itself a
`DistillprepError` (`scenes/errors.py`), so each says whether retrying can help."""

from __future__ import annotations

from distillprep.scenes.errors import (
    EXIT_USAGE,
    ConfigError,
    ConflictError,
    DataError,
    DistillprepError,
    TransientError,
)


class StoreError(DistillprepError):
    """Base class of every store problem (by default: bad data, do not retry)."""


class NotAStoreError(StoreError):
    """The path or URL holds no distillprep store."""

    exit_code = EXIT_USAGE
    kind = "bad-usage"


class SchemaVersionError(StoreError, DataError):
    """The store was written with a schema version this code cannot read as is; the
    message says what to run (`distillprep migrate`, or upgrade distillprep)."""


class MetadataError(StoreError, DataError):
    """Attributes, commit records or run files that do not parse into their typed models."""


class SceneIncompleteError(StoreError, DataError):
    """A scene or stage was asked for that has no commit (absent, or never finished)."""


class SchemaViolationError(StoreError, DataError):
    """Data that breaks the schema: wrong shape, dtype or value range."""


class StoreIOError(StoreError, TransientError):
    """Reading or writing the store's objects failed (a file system or object-store
    error): running the step again may succeed."""


class CommitConflictError(StoreError, ConflictError):
    """Another writer committed the same stage of the same scene first: this writer's
    outputs were discarded, the other's stand."""


class InputsChangedError(StoreError, ConflictError):
    """The outputs a stage was computed from were replaced while it ran (the scene
    re-ingested, the teacher rendered again): nothing was committed; run it again."""


class SceneSourceError(StoreError, DataError):
    """A scene whose id the store already holds for another scene of another source (the
    message names both); `--force` replaces it."""


class OutputsWouldGoStaleError(StoreError, ConfigError):
    """Re-ingesting a scene with other content would make later stages' outputs stale;
    that must be asked for (`--replace-outputs`)."""


class StoreReadError(StoreError, DataError):
    """Stored bytes that cannot be read or decoded (a damaged shard, a garbled index, a
    metadata file that is not JSON): the message names the scene, the array and its
    files; `distillprep validate --deep` reports every such object."""


class ReplacedWhileReadingError(StoreError, TransientError):
    """The version of a stage a reader opened was replaced, and its data removed, while
    it read: nothing it read from there can be trusted; running it again reads the
    current version."""
