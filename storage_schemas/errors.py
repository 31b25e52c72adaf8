"""The store's error hierarchy: every problem with a store is a `StoreError`."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every store problem."""


class NotAStoreError(StoreError):
    """The path or URL holds no distillprep store."""


class SchemaVersionError(StoreError):
    """The store was written with a schema version this code cannot read as is."""


class MetadataError(StoreError):
    """Attributes or commit records that do not parse into their typed models."""


class SceneIncompleteError(StoreError):
    """A scene was asked for that has no commit (absent, or its writer did not finish)."""


class SchemaViolationError(StoreError):
    """Data that breaks the schema: wrong shape, dtype or value range."""
