"""Which zarr codec pipeline runs: the `zarrs` Rust pipeline where it is installed (it
wins on both writes and reads here, see README), else zarr-python's own, which stays the
tested fallback. `DISTILLPREP_CODEC_PIPELINE=python|zarrs|auto` overrides.

Both are wrapped so that every read checks the crc32c checksum that every stored chunk
carries (`layout.py` writes it as the last codec inside the shard), and a mismatch is a
`ChunkChecksumError` naming the object and the chunk. zarr-python checks each chunk it
decodes but only says that *a* checksum failed; zarrs 0.2.3 checks whole shards and
unsharded chunks it decodes, but not chunks read from inside a shard (its crc32c partial
decoder strips the checksum unchecked): those are checked here from the chunks' stored
bytes, while zarrs decodes them. Arrays written before checksums carry none: read as
before, unchecked.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import os
from collections import OrderedDict
from dataclasses import dataclass

import google_crc32c
import numpy as np
import zarr
import zarr.registry
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.codecs import Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.core.indexing import get_indexer
from zarr.storage import LocalStore, StorePath

from .errors import ChunkChecksumError

PIPELINES = {
    "python": "distillprep.storage_schemas.codec_pipeline.CheckedBatchedPipeline",
    "zarrs": "distillprep.storage_schemas.codec_pipeline.CheckedZarrsPipeline",
}
_EMPTY = 2**64 - 1
"""Offset and length of a shard index entry whose chunk was never written."""


def resolve(name: str | None = None) -> str:
    """`python` or `zarrs` for a requested name (`auto`/None: zarrs when importable)."""
    name = name or os.environ.get("DISTILLPREP_CODEC_PIPELINE", "auto")
    if name == "auto":
        return "zarrs" if importlib.util.find_spec("zarrs") is not None else "python"
    if name not in PIPELINES:
        raise ValueError(f"unknown codec pipeline {name!r}; choose python, zarrs or auto")
    return name


def use(name: str | None = None) -> str:
    """Make zarr use the named pipeline from now on (zarr's config is process-wide);
    returns the one chosen."""
    chosen = resolve(name)
    zarr.config.set({"codec_pipeline.path": PIPELINES[chosen]})
    return chosen


def active() -> str:
    path = zarr.config.get("codec_pipeline.path")
    return next((k for k, v in PIPELINES.items() if v == path), path)


# -- checking stored chunks against their crc32c ---------------------------------------------
@dataclass(frozen=True)
class ChecksumLayout:
    """Where an array's checksums are: per chunk inside shards, or per unsharded chunk."""

    inner: tuple[int, ...] | None
    """Shape of the chunks inside a shard; None: the array is not sharded."""
    index_at_end: bool
    """The shard index is the shard's last bytes (else its first)."""
    index_crc: bool
    """The shard index carries its own crc32c."""


def checksum_layout(codecs) -> ChecksumLayout | None:
    """How an array with these codecs checksums its chunks; None when its chunks carry no
    crc32c (arrays written before checksums)."""
    codecs = tuple(codecs)
    if codecs and isinstance(codecs[0], ShardingCodec):
        shard = codecs[0]
        if not shard.codecs or not isinstance(shard.codecs[-1], Crc32cCodec):
            return None
        return ChecksumLayout(tuple(shard.chunk_shape),
                              shard.index_location == ShardingCodecIndexLocation.end,
                              any(isinstance(c, Crc32cCodec) for c in shard.index_codecs))
    if codecs and isinstance(codecs[-1], Crc32cCodec):
        return ChecksumLayout(None, True, False)
    return None


def _check(data: np.ndarray, key: str, what: str, chunk: tuple[int, ...] | None) -> None:
    """Raise ChunkChecksumError unless the last 4 of these bytes (uint8) are the crc32c
    of the others."""
    if len(data) < 4:
        raise ChunkChecksumError(f"{key}: {what} is {len(data)} bytes, too short to hold "
                                 "its crc32c checksum: its stored bytes are damaged", key, chunk)
    stored = int.from_bytes(data[-4:].tobytes(), "little")
    computed = google_crc32c.value(data[:-4])
    if stored != computed:
        raise ChunkChecksumError(f"{key}: {what} does not match its crc32c checksum (stored "
                                 f"{stored:08x}, computed {computed:08x}): its stored bytes "
                                 "are damaged", key, chunk)


def _grid_position(key: str, rank: int) -> tuple[int, ...] | None:
    """The chunk-grid coordinates in a chunk key (`.../c/i/j`), None if it has none."""
    parts = key.split("/")[-rank - 1:]
    if len(parts) != rank + 1 or parts[0] != "c" or not all(p.isdigit() for p in parts[1:]):
        return None
    return tuple(int(p) for p in parts[1:])


_INDEXES: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
"""Shard indexes already read and checked, by (store, key): a committed shard is never
rewritten in place (a new commit writes a new attempt), so a partial read fetches only its
chunks' bytes the next time."""
_INDEXES_KEPT = 4096
"""Shard indexes kept (a 64-chunk index is 1 KiB)."""


def _chunks_read(selection, shape: tuple[int, ...], inner: tuple[int, ...],
                 per_shard: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Coordinates (within the shard) of the chunks a selection of a shard reads."""
    if selection is None:
        return sorted(itertools.product(*(range(n) for n in per_shard)))
    if isinstance(selection, tuple) and len(selection) == len(shape) and all(
            isinstance(s, int) or (isinstance(s, slice) and s.step in (None, 1))
            for s in selection):  # what zarr passes for basic selections: no indexer needed
        ranges = []
        for s, size, c in zip(selection, shape, inner, strict=True):
            lo, hi = (s, s + 1) if isinstance(s, int) else s.indices(size)[:2]
            ranges.append(range(lo // c, -(-hi // c)) if hi > lo else range(0))
        return list(itertools.product(*ranges))
    grid = RegularChunkGrid(chunk_shape=inner)
    return sorted({c for c, *_ in get_indexer(selection, shape=shape, chunk_grid=grid)})


async def _shard_index(byte_getter: StorePath, layout: ChecksumLayout,
                       per_shard: tuple[int, ...]) -> np.ndarray | None:
    """(*per_shard, 2) offsets and lengths of a shard's chunks, its own checksum checked;
    None without a shard (zarr reads the fill value) or with one too short to hold an
    index (the decoder names that itself)."""
    cache_key = (str(byte_getter.store), byte_getter.path)
    if cache_key in _INDEXES:
        return _INDEXES[cache_key]
    count = int(np.prod(per_shard))
    size = 16 * count + (4 if layout.index_crc else 0)
    index = await byte_getter.get(prototype=default_buffer_prototype(), byte_range=(
        SuffixByteRequest(size) if layout.index_at_end else RangeByteRequest(0, size)))
    if index is None:
        return None
    raw = index.as_numpy_array()
    if len(raw) < size:
        return None
    if layout.index_crc:
        _check(raw, byte_getter.path, "the shard index", None)
    table = raw[:16 * count].view("<u8").reshape(*per_shard, 2).copy()
    _INDEXES[cache_key] = table
    while len(_INDEXES) > _INDEXES_KEPT:
        _INDEXES.popitem(last=False)
    return table


async def check_chunks(byte_getter: StorePath, layout: ChecksumLayout,
                       shape: tuple[int, ...], selection=None) -> None:
    """Check the crc32c of the stored chunks of one object (a shard, or an unsharded
    chunk of `shape`) that `selection` (within it; None: all) reads; a mismatch is a
    ChunkChecksumError naming the object and the chunk's coordinates in the array."""
    key, prototype = byte_getter.path, default_buffer_prototype()
    position = _grid_position(key, len(shape))
    if layout.inner is None:
        data = await byte_getter.get(prototype=prototype)
        if data is not None:
            _check(data.as_numpy_array(), key, f"chunk {position}", position)
        return
    per_shard = tuple(s // c for s, c in zip(shape, layout.inner, strict=True))
    cached = (str(byte_getter.store), key) in _INDEXES
    try:
        await _check_shard(byte_getter, layout, shape, selection, per_shard, position)
    except ChunkChecksumError:
        if not cached:
            raise
        # a shard rewritten in place since its index was cached: only a fresh index tells
        _INDEXES.pop((str(byte_getter.store), key), None)
        await _check_shard(byte_getter, layout, shape, selection, per_shard, position)


async def _check_shard(byte_getter: StorePath, layout: ChecksumLayout,
                       shape: tuple[int, ...], selection, per_shard: tuple[int, ...],
                       position: tuple[int, ...] | None) -> None:
    key, prototype = byte_getter.path, default_buffer_prototype()
    table = await _shard_index(byte_getter, layout, per_shard)
    if table is None:
        return
    wanted = _chunks_read(selection, shape, layout.inner, per_shard)
    spans = sorted((int(table[c][0]), int(table[c][1]), c) for c in wanted
                   if int(table[c][0]) != _EMPTY)
    # chunks stored back to back are fetched with one request
    runs: list[list[tuple[int, int, tuple]]] = []
    for span in spans:
        if runs and runs[-1][-1][0] + runs[-1][-1][1] == span[0]:
            runs[-1].append(span)
        else:
            runs.append([span])
    if isinstance(byte_getter.store, LocalStore):
        fetched = _read_local(byte_getter, [(run[0][0], run[-1][0] + run[-1][1])
                                            for run in runs])
    else:
        fetched = [None if data is None else data.as_numpy_array()
                   for data in await asyncio.gather(*(byte_getter.get(
                       prototype=prototype, byte_range=RangeByteRequest(
                           run[0][0], run[-1][0] + run[-1][1])) for run in runs))]
    for run, raw in zip(runs, fetched, strict=True):
        raw = np.zeros(0, np.uint8) if raw is None else raw
        for offset, length, local in run:
            chunk = raw[offset - run[0][0]:offset - run[0][0] + length]
            if len(chunk) != length:
                return  # the shard ends early: the decoder says so itself
            where = (tuple(p * n + c for p, n, c in zip(position, per_shard, local,
                                                        strict=True))
                     if position is not None else None)
            _check(chunk, key, f"chunk {where}" if where is not None
                   else f"chunk {local} of the shard", where)


def _read_local(byte_getter: StorePath, spans: list[tuple[int, int]],
                ) -> list[np.ndarray | None]:
    """The bytes [start, end) of a local shard file, read here and now: a few kilobytes
    per chunk, where a round trip through the store's thread pool cost more than the read
    (it made in-shard reads 1.35x slower than unchecked ones; 1.1x this way)."""
    path = os.path.join(str(byte_getter.store.root), byte_getter.path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return [None] * len(spans)
    try:
        return [np.frombuffer(os.pread(fd, end - start, start), np.uint8)
                for start, end in spans]
    finally:
        os.close(fd)


async def _locate(layout: ChecksumLayout | None, batch_info) -> None:
    """After a failed read: raise the ChunkChecksumError of the first damaged chunk among
    the objects read, if one is (else return, and the read's own error stands)."""
    if layout is None:
        return
    for byte_getter, spec, *_ in batch_info:
        if isinstance(byte_getter, StorePath):
            await check_chunks(byte_getter, layout, tuple(spec.shape))


class CheckedBatchedPipeline(BatchedCodecPipeline):
    """zarr-python's pipeline (it checks every checksum itself); a mismatch is named."""

    async def read(self, batch_info, out, drop_axes=()) -> None:
        batch_info = list(batch_info)
        try:
            await super().read(batch_info, out, drop_axes)
        except Exception:
            await _locate(checksum_layout(self), batch_info)
            raise


zarr.registry.register_pipeline(CheckedBatchedPipeline)


if importlib.util.find_spec("zarrs") is not None:
    from zarrs import ZarrsCodecPipeline

    class CheckedZarrsPipeline(ZarrsCodecPipeline):
        """zarrs' pipeline, with the chunks it decodes from inside shards checked here."""

        async def read(self, batch_info, out, drop_axes=()) -> None:
            batch_info = list(batch_info)
            layout = checksum_layout(getattr(self.metadata, "codecs", ()))
            if layout is not None:  # checked before zarrs decodes them
                for getter, spec, selection, _, complete in batch_info:
                    if not complete and isinstance(getter, StorePath):
                        await check_chunks(getter, layout, tuple(spec.shape), selection)
            try:
                await super().read(batch_info, out, drop_axes)
            except Exception:
                await _locate(layout, batch_info)
                raise

    zarr.registry.register_pipeline(CheckedZarrsPipeline)
