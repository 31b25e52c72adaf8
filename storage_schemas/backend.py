"""Where a store lives: a local folder or an fsspec URL (`s3://...`, `memory://...`).

One `Location` gives both the zarr store for arrays and plain object access for the
store's own files (commit markers, manifest parts). Object writes are atomic: a local
file is written to a temporary name and renamed; an object-store PUT is atomic by itself.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import zarr
from zarr.storage import FsspecStore, LocalStore


def is_url(location: str) -> bool:
    return "://" in location


def is_temp_name(name: str) -> bool:
    """A temporary file of an atomic write (ours: `.<name>.<random>.tmp`; zarr's local
    store: `<name>.<uuid>.partial`), left behind only when a writer was killed."""
    return (name.startswith(".") and name.endswith(".tmp")) or name.endswith(".partial")


class Location:
    """A store root, local or remote."""

    def __init__(self, location: str | Path, read_only: bool = True,
                 storage_options: dict[str, Any] | None = None):
        self.location = str(location)
        self.read_only = read_only
        self.storage_options = storage_options or {}
        if is_url(self.location):
            self.fs, self.root = fsspec.core.url_to_fs(self.location, **self.storage_options)
            self.root = self.root.rstrip("/")
        else:
            self.fs, self.root = None, str(Path(self.location).resolve())

    def sub(self, prefix: str) -> Location:
        """The same store rooted at `prefix`: zarr writes through it never touch anything
        above that prefix (zarr otherwise rewrites parent group metadata)."""
        return Location(f"{self.location.rstrip('/')}/{prefix}", self.read_only,
                        self.storage_options)

    def zarr_store(self):
        if self.fs is None:
            return LocalStore(self.root, read_only=self.read_only)
        return FsspecStore.from_url(self.location, storage_options=self.storage_options,
                                    read_only=self.read_only)

    def open_group(self, path: str = "", mode: str = "r") -> zarr.Group:
        return zarr.open_group(self.zarr_store(), path=path, mode=mode, zarr_format=3)

    def _full(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def exists(self, key: str) -> bool:
        if self.fs is None:
            return os.path.exists(self._full(key))
        self.fs.invalidate_cache(self._full(key))  # other processes write here too
        return self.fs.exists(self._full(key))

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        try:
            if self.fs is None:
                return Path(self._full(key)).read_bytes()
            return self.fs.cat_file(self._full(key))
        except (FileNotFoundError, IsADirectoryError):
            return None

    def put(self, key: str, data: bytes) -> None:
        """Write an object atomically: readers see the old object or the new, never part."""
        if self.read_only:
            raise PermissionError(f"store {self.location} is open read-only")
        if self.fs is not None:
            self.fs.pipe_file(self._full(key), data)
            return
        path = Path(self._full(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, key: str) -> None:
        """Remove an object or a whole prefix; nothing happens when it does not exist."""
        if self.read_only:
            raise PermissionError(f"store {self.location} is open read-only")
        full = self._full(key)
        if self.fs is None:
            import shutil

            if os.path.isdir(full):
                shutil.rmtree(full)
            elif os.path.exists(full):
                os.unlink(full)
            return
        if self.fs.exists(full):
            self.fs.rm(full, recursive=True)

    def children(self, prefix: str) -> list[str]:
        """Names directly under a prefix (files and folders), sorted; [] when absent."""
        full = self._full(prefix)
        if self.fs is None:
            return sorted(os.listdir(full)) if os.path.isdir(full) else []
        try:
            entries = self.fs.ls(full, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries})

    def size_under(self, prefix: str) -> int:
        """Bytes of every object under a prefix."""
        full = self._full(prefix)
        if self.fs is None:
            total = 0
            for dirpath, _, files in os.walk(full):
                total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
            return total
        self.fs.invalidate_cache(full)
        try:
            return int(self.fs.du(full, total=True))
        except FileNotFoundError:
            return 0
