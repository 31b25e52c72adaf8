"""Where a store lives: a local folder or an fsspec URL (`s3://...`, `memory://...`).

One `Location` gives both the zarr store for arrays and plain object access for the
store's own files (commit records, manifest parts). Object writes are atomic: a local
file is written to a temporary name and renamed; an object-store PUT is atomic by itself.
`put_exclusive` creates an object only if it does not exist yet, atomically (a hard link
locally, a conditional PUT, `If-None-Match: *`, on S3): what makes one of two concurrent
commits win and the other know it lost. A failing file system or object store raises
`StoreIOError` (retryable) naming the object; a full disk (ENOSPC, also as the zarrs
pipeline's `RuntimeError`) is one. Files are written private and given the mode a plain
`open()` would give them (the umask's) as they are moved into place, so that a store one
account prepares is readable by whom its umask allows.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import zarr
from zarr.storage import FsspecStore, LocalStore

from distillprep.scenes.io import plain_file_mode

from .errors import CleanupError, StoreIOError


def is_url(location: str) -> bool:
    return "://" in location


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_NOT_IO = {errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.EACCES, errno.EPERM}
"""Errors the callers tell apart themselves (as Python's OSError subclasses of them)."""


def os_errno(exc: BaseException) -> int | None:
    """The OS error number of a file-system failure: an OSError's, or that of the
    `RuntimeError("... (os error N)")` the zarrs (Rust) codec pipeline raises; None when
    `exc` is no file-system failure."""
    if isinstance(exc, OSError):
        return exc.errno
    found = _RUST_OS_ERROR.search(str(exc)) if isinstance(exc, RuntimeError) else None
    return int(found.group(1)) if found else None


def describe_io_error(exc: BaseException) -> str:
    """`exc` in words, a full disk said plainly."""
    text = f"{type(exc).__name__}: {exc}"
    return f"the disk is full ({text})" if os_errno(exc) == errno.ENOSPC else text


TIME_FORMAT = "%Y%m%dT%H%M%S"
"""UTC times in the names of attempts and temporary files (when their writer started)."""


def started_at(name: str) -> datetime | None:
    """When the writer of an attempt (`<time>-<random>`) or of one of our temporary files
    (`.<name>.<time>-<random>.tmp`) started; None for any other name."""
    stem = name[:-len(".tmp")].rsplit(".", 1)[-1] if is_temp_name(name) else name
    try:
        return datetime.strptime(stem.split("-")[0], TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


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
        # Other processes write here too: a listing cached by fsspec would hide their
        # objects (s3fs even answers "no such file" from a cached parent listing).
        self.storage_options = {"use_listings_cache": False, **(storage_options or {})}
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

    @contextlib.contextmanager
    def io_errors(self, what: str, key: str) -> Iterator[None]:
        """Turn a file-system or object-store failure (a full disk included, from Python
        or from the zarrs pipeline) into a StoreIOError naming `key`."""
        try:
            yield
        except (OSError, RuntimeError) as exc:
            error = self.io_error(what, key, exc)
            if error is None:
                raise
            raise error from exc

    def io_error(self, what: str, key: str, exc: BaseException) -> StoreIOError | None:
        """The StoreIOError naming `key` that a file-system or object-store failure `exc`
        is; None for anything else (a missing or existing file, a permission: the caller
        decides what those mean)."""
        if isinstance(exc, (FileNotFoundError, FileExistsError, IsADirectoryError,
                            PermissionError)) or os_errno(exc) in _NOT_IO:
            return None
        if not isinstance(exc, OSError) and os_errno(exc) is None:
            return None
        return StoreIOError(f"store {self.location}: cannot {what} {key or '(root)'}: "
                            f"{describe_io_error(exc)}")

    def _check_writable(self) -> None:
        if self.read_only:
            raise PermissionError(f"store {self.location} is open read-only")

    def exists(self, key: str) -> bool:
        with self.io_errors("look up", key):
            if self.fs is None:
                return os.path.exists(self._full(key))
            self.fs.invalidate_cache(self._full(key))  # other processes write here too
            return self.fs.exists(self._full(key))

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        try:
            with self.io_errors("read", key):
                if self.fs is None:
                    return Path(self._full(key)).read_bytes()
                return self.fs.cat_file(self._full(key))
        except (FileNotFoundError, IsADirectoryError):
            return None

    def put(self, key: str, data: bytes) -> None:
        """Write an object atomically: readers see the old object or the new, never part."""
        self._check_writable()
        with self.io_errors("write", key):
            if self.fs is not None:
                self.fs.pipe_file(self._full(key), data)
                return
            tmp = self._local_temp(key, data)
            try:
                os.replace(tmp, self._full(key))
            finally:
                Path(tmp).unlink(missing_ok=True)

    def put_exclusive(self, key: str, data: bytes) -> bool:
        """Create an object only if none exists under `key`, atomically; True when this
        call created it, False when it was there already (another writer's)."""
        self._check_writable()
        with self.io_errors("create", key):
            if self.fs is not None:
                try:
                    self.fs.pipe_file(self._full(key), data, mode="create")
                except FileExistsError:
                    return False
                # Read back: a store that ignores If-None-Match (some S3 look-alikes) or
                # checks it non-atomically (moto) lets a later PUT replace ours
                return self.fs.cat_file(self._full(key)) == data
            tmp = self._local_temp(key, data)
            try:
                os.link(tmp, self._full(key))  # fails when the name exists: no overwrite
            except FileExistsError:
                return False
            finally:
                Path(tmp).unlink(missing_ok=True)
            return True

    def _local_temp(self, key: str, data: bytes) -> str:
        """A synced temporary file beside `key` holding `data`; the caller moves it."""
        path = Path(self._full(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        started = datetime.now(UTC).strftime(TIME_FORMAT)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{started}-",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), plain_file_mode())  # mkstemp's 0600 no more
                os.fsync(f.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return tmp

    def delete(self, key: str) -> None:
        """Remove an object or a whole prefix; nothing happens when it does not exist.
        A local symbolic link is never followed, nor removed: CleanupError names it."""
        self._check_writable()
        full = self._full(key)
        with self.io_errors("delete", key):
            if self.fs is None:
                import shutil

                if os.path.islink(full):
                    raise CleanupError(f"store {self.location}: did not remove {key}: it is "
                                       f"a symbolic link (to {os.readlink(full)}), which the "
                                       "store never follows; remove it by hand if nothing "
                                       "needs it")
                if os.path.isdir(full):
                    shutil.rmtree(full, ignore_errors=False, onerror=_gone_is_fine)
                elif os.path.exists(full):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(full)
                return
            self.fs.invalidate_cache(full)
            if self.fs.exists(full):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(full, recursive=True)

    def children(self, prefix: str) -> list[str]:
        """Names directly under a prefix (files and folders), sorted; [] when absent."""
        full = self._full(prefix)
        with self.io_errors("list", prefix):
            if self.fs is None:
                try:
                    return sorted(os.listdir(full)) if os.path.isdir(full) else []
                except FileNotFoundError:
                    return []
            try:
                entries = self.fs.ls(full, detail=False, refresh=True)
            except FileNotFoundError:
                return []
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries})

    def find(self, prefix: str) -> list[str]:
        """Keys of every object under a prefix, relative to it, sorted (one recursive
        listing: a single paginated LIST on an object store)."""
        full = self._full(prefix)
        with self.io_errors("list", prefix):
            if self.fs is None:
                keys = []
                for dirpath, _, files in os.walk(full):
                    rel = os.path.relpath(dirpath, full)
                    keys += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/")
                             for f in files]
                return sorted(keys)
            self.fs.invalidate_cache(full)
            try:
                found = self.fs.find(full)
            except FileNotFoundError:
                return []
        root = full.rstrip("/") + "/"
        return sorted(k[len(root):] for k in found if k.startswith(root))

    def size_under(self, prefix: str) -> int:
        """Bytes of every object under a prefix."""
        full = self._full(prefix)
        with self.io_errors("measure", prefix):
            if self.fs is None:
                total = 0
                for dirpath, _, files in os.walk(full):
                    for f in files:
                        with contextlib.suppress(FileNotFoundError):
                            total += os.path.getsize(os.path.join(dirpath, f))
                return total
            self.fs.invalidate_cache(full)
            try:
                return int(self.fs.du(full, total=True))
            except FileNotFoundError:
                return 0


def _gone_is_fine(function, path, exc_info) -> None:
    """shutil.rmtree's error handler: a file another process removed first is no error."""
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]
