"""Reading sensor files with errors that name the scene, the file and what is wrong."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import SceneDataError, TransientError

_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"


@contextlib.contextmanager
def reading(path: str | os.PathLike, scene_id: str | None, what: str) -> Iterator[None]:
    """Turn the OS's failures to read a dataset file into the project's errors naming the
    scene and the file: missing, a folder, no permission -> SceneDataError (bad data);
    any other I/O error (EIO, a network file system's hiccup) -> TransientError."""
    try:
        yield
    except FileNotFoundError:
        raise SceneDataError(scene_id, path, f"{what} is missing") from None
    except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        raise SceneDataError(scene_id, path, f"{what} cannot be read: {exc.strerror}"
                             ) from None
    except OSError as exc:
        raise TransientError(f"scene {scene_id!r}, file {path}: cannot read the {what}: "
                             f"{type(exc).__name__}: {exc}") from exc


def check_jpeg_file(path: str, scene_id: str) -> None:
    """Cheap integrity check without decoding: the file exists, is not empty, and has
    JPEG start and end markers (a cut-off download lacks the end marker)."""
    with reading(path, scene_id, "image file"):
        size = os.path.getsize(path)
        if size < 4:
            raise SceneDataError(scene_id, path, f"image file is {size} bytes long: not a JPEG")
        with open(path, "rb") as f:
            start = f.read(2)
            f.seek(-2, os.SEEK_END)
            end = f.read(2)
    if start != _JPEG_START:
        raise SceneDataError(scene_id, path, "not a JPEG file (no start-of-image marker)")
    if end != _JPEG_END:
        raise SceneDataError(scene_id, path,
                             f"truncated JPEG: no end-of-image marker ({size} bytes)")


def read_jpeg(path: str, scene_id: str, expected_size: tuple[int, int] | None = None,
              ) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB; expected_size is (W, H) if known."""
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            array = np.asarray(rgb)
    except FileNotFoundError:
        raise SceneDataError(scene_id, path, "image file is missing") from None
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise SceneDataError(scene_id, path, f"cannot decode image: {exc}") from None
    if expected_size is not None and (array.shape[1], array.shape[0]) != tuple(expected_size):
        raise SceneDataError(scene_id, path, f"image is {array.shape[1]}x{array.shape[0]}, "
                             f"the tables say {expected_size[0]}x{expected_size[1]}")
    return array


def read_pcd_bin(path: str, scene_id: str, values_per_point: int = 5,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """nuScenes `.pcd.bin`: float32 records of `values_per_point` values (x, y, z,
    intensity, ring); returns points (N, 3) sensor frame and intensity (N,)."""
    with reading(path, scene_id, "LiDAR file"):
        raw = np.fromfile(path, dtype=np.float32)
    if raw.size == 0:
        raise SceneDataError(scene_id, path, "LiDAR file is empty")
    if raw.size % values_per_point:
        raise SceneDataError(scene_id, path, f"LiDAR file holds {raw.size} float32 values, "
                             f"not a multiple of {values_per_point}: truncated or wrong format")
    points = raw.reshape(-1, values_per_point)
    if not np.all(np.isfinite(points[:, :4])):
        raise SceneDataError(scene_id, path, "LiDAR file holds NaN or infinite values")
    return points[:, :3], points[:, 3]


def check_pcd_bin_file(path: str, scene_id: str, values_per_point: int = 5) -> None:
    """Cheap check without reading: exists, not empty, size a whole number of points."""
    with reading(path, scene_id, "LiDAR file"):
        size = os.path.getsize(path)
    if size == 0:
        raise SceneDataError(scene_id, path, "LiDAR file is empty")
    if size % (4 * values_per_point):
        raise SceneDataError(scene_id, path, f"LiDAR file is {size} bytes, not a whole number "
                             f"of {values_per_point}-float32 points: truncated or wrong format")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content, read in 4 MiB blocks (weights, checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read from /proc where it is shown: setting it to read it
    (`os.umask`) would give files other threads create meanwhile the wrong mode."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # meanwhile, files are private rather than open to all
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def plain_file_mode() -> int:
    """The mode a plain `open()` gives a new file under the current umask (0o644 under
    022): what a temporary file (`mkstemp`: 0o600) gets once it is moved into place."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write that appears at `path` only whole: written as a private
    temporary sibling, flushed to disk, given the mode a plain `open()` would (the umask's),
    then renamed over `path`; removed if the writing fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), plain_file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
