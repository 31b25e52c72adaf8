"""How an array of a scene is laid out and written: one sample (or a fixed number of rows)
per chunk, chunks packed into shards of tens of MB, the codec its spec chose followed by
a crc32c checksum of every chunk (checked on every read, `codec_pipeline.py`), and the
SHA-256 recorded for it at commit."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from .spec import ARRAYS, ArraySpec

SHARD_TARGET_BYTES = 32 * 2**20
"""Uncompressed bytes a shard aims for: tens of MB, so a million images are few files."""
SHARD_MAX_CHUNKS = 64
"""At most this many samples a shard: reading larger shards got slower here (README)."""


def compressors_for(spec: ArraySpec) -> list:
    """The bytes->bytes codecs of each chunk: the spec's compression, then crc32c (the
    last, so that it covers the stored bytes and zarr checks it on every read)."""
    if spec.codec.startswith("zstd-"):
        compression = [ZstdCodec(level=int(spec.codec[5:]))]
    elif spec.codec == "blosc-lz4-shuffle":
        compression = [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle",
                                  typesize=np.dtype(spec.dtype).itemsize)]
    else:
        compression = []
    return [*compression, Crc32cCodec()]


def chunk_layout(spec: ArraySpec, shape: tuple[int, ...]) -> tuple[tuple, tuple | None]:
    """(chunks, shards) of an array: one sample (or `chunk_rows` rows) per chunk, shards
    of ~SHARD_TARGET_BYTES; small tables are a single chunk."""
    if spec.chunk_rows is not None:
        chunk = (spec.chunk_rows, *shape[1:])
    elif spec.per_sample:
        chunk = (1, *shape[1:])
    else:
        return tuple(max(1, s) for s in shape), None
    chunk_bytes = max(1, int(np.prod(chunk)) * np.dtype(spec.dtype).itemsize)
    per_shard = int(min(max(1, -(-shape[0] // chunk[0])), SHARD_MAX_CHUNKS,
                        max(1, SHARD_TARGET_BYTES // chunk_bytes)))
    return chunk, (per_shard * chunk[0], *shape[1:])


def array_sha256(data: np.ndarray) -> str:
    """SHA-256 of an array's C-order bytes (hashed in place, no copy)."""
    data = np.ascontiguousarray(data)
    return hashlib.sha256(memoryview(data).cast("B") if data.size else b"").hexdigest()


async def write_group(zarr_store, attributes: dict, arrays: dict[str, np.ndarray]) -> None:
    """Create a group and write its arrays concurrently (metadata writes and codec work of
    different arrays overlap)."""
    group = await zarr.api.asynchronous.open_group(store=zarr_store, mode="w", zarr_format=3,
                                                   attributes=attributes)

    async def write(name: str, data: np.ndarray) -> None:
        spec = ARRAYS[name]
        chunks, shards = chunk_layout(spec, data.shape)
        array = await group.create_array(
            name, shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards,
            compressors=compressors_for(spec), fill_value=0,
            dimension_names=[str(d) if isinstance(d, str) else f"{name}_{i}"
                             for i, d in enumerate(spec.shape)],
            attributes={"units": spec.units, "stage": spec.stage})
        if data.size:
            await array.setitem(Ellipsis, data)

    # Every write ends before a failure is raised (none goes on into a discarded attempt);
    # the failure carries the note `array <name>`.
    results = await asyncio.gather(*(write(name, data) for name, data in arrays.items()),
                                   return_exceptions=True)
    for name, result in zip(arrays, results, strict=True):
        if isinstance(result, BaseException):
            result.add_note(f"array {name}")
            raise result
