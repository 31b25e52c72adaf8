"""Resampling what the loader yields to the model's input size, in the loader workers.

Each kind of image keeps its meaning: colour is filtered (bilinear, after the JPEG
decoder's own DCT down-scaling, which decodes a 1600 x 900 image for 228 x 128 several
times faster than a full decode); dense depth takes the nearest pixel (averaging depths
across an edge invents surfaces); sparse LiDAR depth keeps, per output pixel, the
nearest return that falls into it (a return is never smeared or lost to a neighbour's
zero). Pixel centres follow the OpenCV convention of `teachers.nerf.virtual.
scaled_intrinsics`, which scales K to match.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from distillprep.storage_schemas.errors import SchemaViolationError


def decode_rgb(data: np.ndarray, nbytes: int, size: tuple[int, int] | None,
               where: str) -> np.ndarray:
    """(h, w, 3) uint8 of the JPEG in the first `nbytes` of a padded byte row, resampled
    to size = (w, h) when given."""
    try:
        with Image.open(io.BytesIO(data[:nbytes].tobytes())) as image:
            if size is not None and tuple(size) != image.size:
                image.draft("RGB", tuple(size))  # DCT scaling: never below `size`
                image = image.convert("RGB").resize(tuple(size), Image.Resampling.BILINEAR)
            return np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise SchemaViolationError(f"{where}: stored JPEG does not decode: {exc}") from None


def resize_rgb(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(h, w, 3) uint8 bilinear resample of an (H, W, 3) uint8 image."""
    if size is None or (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(tuple(size), Image.Resampling.BILINEAR))


def resize_smooth(values: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(h, w) bilinear resample of an (H, W) map of smooth values (opacity), in its own
    dtype."""
    values = np.asarray(values)
    if size is None or (values.shape[1], values.shape[0]) == tuple(size):
        return values
    image = Image.fromarray(values.astype(np.float32))
    return np.asarray(image.resize(tuple(size), Image.Resampling.BILINEAR)).astype(values.dtype)


def _centres(n_out: int, n_in: int) -> np.ndarray:
    """Input index whose pixel holds each output pixel's centre."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resize_nearest(values: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(h, w) nearest-pixel resample of an (H, W) map (dense depth), in its own dtype."""
    values = np.asarray(values)
    if size is None or (values.shape[1], values.shape[0]) == tuple(size):
        return values
    w, h = size
    return values[np.ix_(_centres(h, values.shape[0]), _centres(w, values.shape[1]))]


def resize_sparse_depth(depth: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(h, w) of an (H, W) sparse depth map (0 = none), in its own dtype: each return
    moves to the output pixel containing its pixel's centre; the nearest return wins a
    shared pixel."""
    depth = np.asarray(depth)
    if size is None or (depth.shape[1], depth.shape[0]) == tuple(size):
        return depth
    w, h = size
    # float16 compares are slow in numpy: a positive float16 is a bit pattern in
    # 1 .. 0x7FFF, which one unsigned compare finds (0 wraps round to 0xFFFF)
    found = (depth.view(np.uint16) - np.uint16(1) < 0x7FFF if depth.dtype == np.float16
             else depth > 0)
    rows, cols = np.divmod(np.flatnonzero(found), depth.shape[1])
    out = np.full((h, w), np.inf, dtype=np.float32)
    v = np.minimum(((rows + 0.5) * h / depth.shape[0]).astype(np.int64), h - 1)
    u = np.minimum(((cols + 0.5) * w / depth.shape[1]).astype(np.int64), w - 1)
    np.minimum.at(out, (v, u), depth[rows, cols].astype(np.float32))
    out[np.isinf(out)] = 0
    return out.astype(depth.dtype)
