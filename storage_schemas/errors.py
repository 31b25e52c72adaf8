"""The store's error hierarchy: every problem with a store is a `StoreError`, itself a
`DistillprepError` (`scenes/errors.py`), so each says whether retrying can help."""

from __future__ import annotations

from distillprep.scenes.errors import (
    EXIT_USAGE,
    ConfigError,
    ConflictError,
    DataError,
    DistillprepError,
    SceneDataError,
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


class ValueRuleError(StoreError, SceneDataError):
    """A scene whose values break one of the value rules validate applies
    (`value_rules`): ingest refuses it before its commit. The message names the rule,
    the scene, the array and the source file of the first offending row."""

    def __init__(self, scene: str, file: str | None, rule: str, array: str, problem: str):
        self.rule, self.array = rule, array
        super().__init__(scene, file, f"[{rule}] array {array}: {problem}")


class CleanupError(StoreError):
    """Something a store's cleanup would remove but will not or cannot (a symbolic link,
    which it never follows; an object it may not delete): left in place. After a commit
    that landed it is a warning naming the path, never a failure of the commit."""


class ChunkChecksumError(StoreReadError):
    """A stored chunk (or shard index) whose bytes do not match the crc32c checksum it was
    written with: a bit flipped on disk or in transit. Bad data, not retried (object
    stores check what they send, so a mismatch means the stored bytes are damaged): the
    message names the scene, the array and the chunk. `key` is the object read, `chunk`
    the chunk's coordinates in the array's chunk grid (None for a shard index)."""

    def __init__(self, message: str, key: str | None = None,
                 chunk: tuple[int, ...] | None = None):
        super().__init__(message)
        self.key, self.chunk = key, chunk

    def __reduce__(self):  # keep key and chunk across processes (loader workers, flows)
        return type(self), (str(self), self.key, self.chunk)
