"""Every stored chunk carries a crc32c checksum that every read checks: a single flipped bit
anywhere in a chunk (its compressed payload or its checksum) of a real ingested store is
a ChunkChecksumError naming the scene, the array and the chunk, through the reader and
through the student's loader, with either codec pipeline; undamaged stores read the same
with both, and arrays written before checksums still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

from distillprep.storage_schemas import codec_pipeline
from distillprep.storage_schemas.errors import ChunkChecksumError, StoreReadError
from distillprep.storage_schemas.reader import SceneReader
from distillprep.storage_schemas.store import open_store
from distillprep.storage_schemas.stored_scene import load_scene
from distillprep.student.data import LoaderConfig, StoreDataset

SCENE = "scene-0001"
SAMPLE = 4
"""The sample whose chunk is damaged (frame 0: the rig's cameras are samples 0..5)."""
# byte positions in the chunk: its first (the compressed frame's header), middle and last
# payload bytes, then the first and last byte of the crc32c it ends with
POSITIONS = {"payload-start": 0, "payload-middle": 0.5, "payload-end": -5,
             "checksum-first": -4, "checksum-last": -1}
LOADER_FIELD = {"rgb_jpeg": "rgb", "lidar_depth": "lidar_depth"}


@pytest.fixture
def use_pipeline(monkeypatch):
    """Set the codec pipeline every store opened from now on uses (as users do)."""
    def use(name: str) -> None:
        monkeypatch.setenv("DISTILLPREP_CODEC_PIPELINE", name)
        codec_pipeline.use()
    yield use
    monkeypatch.delenv("DISTILLPREP_CODEC_PIPELINE", raising=False)
    codec_pipeline.use()


def _array_dir(root: Path, name: str, scene: str = SCENE) -> Path:
    head = sorted((root / "commits" / scene / "ingest").glob("*.json"))[-1]
    return root / "scenes" / scene / "ingest" / json.loads(head.read_text())["attempt"] / name


def _chunk_span(shard: Path, chunks: int, index: int) -> tuple[int, int]:
    """(offset, length) of chunk `index` of a shard holding `chunks` chunks (its index:
    16 bytes a chunk and a crc32c, at the end)."""
    raw = shard.read_bytes()[-(16 * chunks + 4):-4]
    offset, length = np.frombuffer(raw, "<u8").reshape(chunks, 2)[index]
    return int(offset), int(length)


def _flip(root: Path, name: str, where: float | int, bit: int = 3) -> None:
    """Flip one bit of sample SAMPLE's chunk of array `name` (one sample per chunk)."""
    array = zarr.open_array(str(_array_dir(root, name)), mode="r")
    per_shard = array.shards[0]
    shard = _array_dir(root, name) / "c" / str(SAMPLE // per_shard) / "0" / "0"
    if array.ndim == 2:
        shard = shard.parent
    offset, length = _chunk_span(shard, per_shard, SAMPLE % per_shard)
    at = offset + (int(where * length) if isinstance(where, float) else where % length)
    data = bytearray(shard.read_bytes())
    data[at] ^= 1 << bit
    shard.write_bytes(bytes(data))


def _chunk_named(exc: ChunkChecksumError, name: str, ndim: int) -> None:
    message = str(exc)
    assert f"scene {SCENE!r}" in message and f"array {name}" in message, message
    chunk = (SAMPLE, *[0] * (ndim - 1))
    assert f"chunk {chunk}" in message and exc.chunk == chunk, message
    assert "crc32c" in message and not exc.retryable and exc.exit_code == 1


def _loader_epoch(root: Path, field: str, block_frames: int | None) -> None:
    config = LoaderConfig(fields=(field,), scenes=(SCENE,), shuffle=False,
                          block_frames=block_frames)
    for _ in StoreDataset(str(root), config):
        pass


@pytest.mark.parametrize("pipeline", ["zarrs", "python"])
@pytest.mark.parametrize("name", ["rgb_jpeg", "lidar_depth"])
def test_a_flipped_bit_anywhere_in_a_chunk_is_named_by_every_reader(store_copy, name,
                                                                    pipeline, use_pipeline):
    pristine = store_copy.parent / "pristine"
    shutil.copytree(store_copy, pristine)
    ndim = 2 if name == "rgb_jpeg" else 3
    for label, where in POSITIONS.items():
        shutil.rmtree(store_copy)
        shutil.copytree(pristine, store_copy)
        _flip(store_copy, name, where)
        use_pipeline(pipeline)
        store = open_store(store_copy)
        assert codec_pipeline.active() == pipeline
        reader = SceneReader(store, SCENE)
        reads = {"one sample": lambda r=reader: r.read(SAMPLE),
                 "whole shard": lambda r=reader: r.read_block(0, len(r), (name,)),
                 "frame range": lambda r=reader: r.read_block(SAMPLE - 1, SAMPLE + 2, (name,)),
                 "scene view": lambda s=store: s.scene(SCENE)[name][SAMPLE],
                 "loader, frame blocks": lambda: _loader_epoch(store_copy,
                                                               LOADER_FIELD[name], 1),
                 "loader, shard blocks": lambda: _loader_epoch(store_copy,
                                                               LOADER_FIELD[name], None)}
        for what, read in reads.items():
            with pytest.raises(ChunkChecksumError) as caught:
                read()
            try:
                _chunk_named(caught.value, name, ndim)
            except AssertionError as exc:
                raise AssertionError(f"{label}, {what}: {exc}") from None
        # the samples of other chunks of the same shard still read
        np.testing.assert_array_equal(reader.read_block(0, 1, (name,))[name],
                                      zarr.open_array(str(_array_dir(pristine, name)),
                                                      mode="r")[0:1])


@pytest.mark.parametrize("pipeline", ["zarrs", "python"])
def test_a_flipped_bit_in_a_small_table_is_named(store_copy, pipeline, use_pipeline):
    table = _array_dir(store_copy, "intrinsics") / "c" / "0" / "0" / "0"
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0x10
    table.write_bytes(bytes(data))
    use_pipeline(pipeline)
    store = open_store(store_copy)
    with pytest.raises(ChunkChecksumError, match=r"scene 'scene-0001'.*intrinsics/c/0/0/0: "
                                                 r"chunk \(0, 0, 0\) does not match its crc32c"):
        SceneReader(store, SCENE)
    with pytest.raises(ChunkChecksumError, match="array intrinsics.*chunk \\(0, 0, 0\\)"):
        store.scene(SCENE)["intrinsics"][SAMPLE]
    with pytest.raises(ChunkChecksumError, match="array intrinsics"):
        load_scene(store, SCENE)


def test_every_stored_chunk_carries_a_checksum_and_both_pipelines_read_the_same(
        small_store, use_pipeline):
    meta = json.loads((_array_dir(small_store, "rgb_jpeg") / "zarr.json").read_text())
    (shard,) = meta["codecs"]
    assert shard["name"] == "sharding_indexed"
    assert shard["configuration"]["codecs"][-1] == {"name": "crc32c"}
    table = json.loads((_array_dir(small_store, "intrinsics") / "zarr.json").read_text())
    assert table["codecs"][-1] == {"name": "crc32c"}
    reads = {}
    for pipeline in ("zarrs", "python"):
        use_pipeline(pipeline)
        reader = SceneReader(open_store(small_store), SCENE)
        reads[pipeline] = ([reader.read(i) for i in (0, SAMPLE, len(reader) - 1)],
                           reader.read_block(1, len(reader) - 1))
    for got, want in zip(reads["python"][0], reads["zarrs"][0], strict=True):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for key, want in reads["zarrs"][1].items():
        np.testing.assert_array_equal(reads["python"][1][key], want, err_msg=key)


@pytest.mark.parametrize("pipeline", ["zarrs", "python"])
def test_arrays_written_before_checksums_still_read(store_copy, pipeline, use_pipeline):
    """An array as stores wrote it before checksums (zstd only, same layout) reads as
    before: the same values, and damage that its compression does not notice is not
    noticed (what the checksums add)."""
    folder = _array_dir(store_copy, "lidar_depth")
    old = zarr.open_array(str(folder), mode="r")
    data = old[...]
    array = zarr.create_array(str(folder), shape=old.shape, dtype=old.dtype,
                              chunks=old.chunks, shards=old.shards,
                              compressors=[ZstdCodec(level=1)], fill_value=0,
                              dimension_names=old.metadata.dimension_names,
                              attributes=dict(old.attrs), overwrite=True)
    array[...] = data
    (shard,) = json.loads((folder / "zarr.json").read_text())["codecs"]
    assert "crc32c" not in json.dumps(shard["configuration"]["codecs"])
    use_pipeline(pipeline)
    reader = SceneReader(open_store(store_copy), SCENE)
    np.testing.assert_array_equal(reader.read(SAMPLE)["lidar_depth"], data[SAMPLE])
    np.testing.assert_array_equal(reader.read_block(0, len(reader))["lidar_depth"], data)
    _loader_epoch(store_copy, "lidar_depth", 1)
    _flip(store_copy, "lidar_depth", 0.5)
    try:
        damaged = open_store(store_copy).scene(SCENE)["lidar_depth"][SAMPLE]
    except StoreReadError:
        return  # the compressor noticed this one itself
    assert not np.array_equal(damaged, data[SAMPLE])  # read silently: no checksum to check
