"""TFRecord reading and writing without TensorFlow: layout, CRCs, truncation, corruption."""

import random
import struct
from pathlib import Path

import google_crc32c
import pytest

from distillprep.scenes.errors import SceneDataError
from distillprep.scenes.waymo.tfrecord import (
    RecordRef,
    TFRecordError,
    index_records,
    iter_records,
    masked_crc32c,
    read_record,
    write_records,
)

MASK = 0xFFFFFFFF


def _masked(data: bytes) -> int:
    """TFRecord's masked CRC, written out here independently of the module."""
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & MASK) + 0xA282EAD8) & MASK


def _flip(path: Path, position: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[position] ^= 0x01
    path.write_bytes(bytes(raw))


def test_crc32c_known_vector_and_mask():
    assert google_crc32c.value(b"123456789") == 0xE3069283
    crc = 0xE3069283
    expected = ((((crc >> 15) | (crc << 17)) & MASK) + 0xA282EAD8) & MASK
    assert masked_crc32c(b"123456789") == expected
    assert masked_crc32c(b"") == _masked(b"") == 0xA282EAD8  # CRC-32C of nothing is 0


def test_round_trip(tmp_path):
    big = random.Random(0).randbytes(3 * 1024 * 1024)
    records = [b"first", b"", big, bytes(range(256)), b"last"]
    path = tmp_path / "segment.tfrecord"
    refs = write_records(path, records)
    assert [r.length for r in refs] == [len(r) for r in records]
    assert refs[0] == RecordRef(index=0, offset=0, length=5)
    assert refs[1] == RecordRef(index=1, offset=12 + 5 + 4, length=0)
    assert path.stat().st_size == sum(16 + len(r) for r in records)
    assert index_records(path) == refs
    assert index_records(path, verify=False) == refs
    assert list(iter_records(path)) == records
    for ref, record in zip(refs, records, strict=True):
        assert read_record(path, ref) == record
    assert read_record(path, refs[2]) == big  # by ref, out of order
    assert read_record(path, refs[0]) == b"first"


def test_layout_matches_hand_built_bytes(tmp_path):
    data = b"hello, waymo"
    length = struct.pack("<Q", len(data))
    expected = (length + struct.pack("<I", _masked(length)) + data
                + struct.pack("<I", _masked(data)))
    path = tmp_path / "one.tfrecord"
    assert write_records(path, [data]) == [RecordRef(0, 0, len(data))]
    assert path.read_bytes() == expected
    hand = tmp_path / "hand.tfrecord"
    hand.write_bytes(expected + expected)  # a file we did not write reads too
    assert list(iter_records(hand)) == [data, data]


def test_write_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "seg.tfrecord"
    write_records(path, [b"old"])

    def failing():
        yield b"new"
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        write_records(path, failing())
    assert list(iter_records(path)) == [b"old"]  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.tfrecord"]  # no temp left
    write_records(path, [b"new", b"er"])
    assert list(iter_records(path)) == [b"new", b"er"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.tfrecord"]


# record 0 is b"first" (21 bytes in all), so record 1 starts at byte 21; its data is 13 bytes
SECOND = 21


@pytest.mark.parametrize(("cut", "region", "need", "got"), [
    (SECOND + 3, "length header", 8, 3),
    (SECOND + 10, "length CRC", 4, 2),
    (SECOND + 12 + 4, "data", 13, 4),
    (SECOND + 12 + 13 + 2, "data CRC", 4, 2),
])
@pytest.mark.parametrize("verify", [True, False])
def test_truncated(tmp_path, cut, region, need, got, verify):
    path = tmp_path / "cut-segment.tfrecord"
    write_records(path, [b"first", b"second record"])
    path.write_bytes(path.read_bytes()[:cut])
    expected = (f"record 1 at byte {SECOND}: truncated inside the {region}: "
                f"expected {need} bytes, {got} present")
    for read in (lambda: index_records(path, "seg-7", verify=verify),
                 lambda: list(iter_records(path, "seg-7", verify=verify))):
        with pytest.raises(TFRecordError) as info:
            read()
        message = str(info.value)
        assert "cut-segment.tfrecord" in message and "'seg-7'" in message
        assert expected in message, message
        assert (info.value.index, info.value.offset) == (1, SECOND)
        assert isinstance(info.value, SceneDataError)


def test_flipped_data_byte(tmp_path):
    path = tmp_path / "seg.tfrecord"
    refs = write_records(path, [b"first", b"second record", b"third"])
    _flip(path, SECOND + 12 + 3)
    for read in (lambda: index_records(path), lambda: list(iter_records(path)),
                 lambda: read_record(path, refs[1])):
        with pytest.raises(TFRecordError, match=rf"seg\.tfrecord: record 1 at byte {SECOND}: "
                           "data CRC mismatch"):
            read()
    assert read_record(path, refs[0]) == b"first"  # the others still read
    # verify=False skips the data CRC: the corrupt bytes come back as they are
    assert index_records(path, verify=False) == refs
    assert read_record(path, refs[1], verify=False) == b"sec" + bytes([ord("o") ^ 1]) + b"nd record"
    assert list(iter_records(path, verify=False))[1] != b"second record"


@pytest.mark.parametrize("verify", [True, False])  # the length CRC is checked either way
def test_flipped_length_byte(tmp_path, verify):
    path = tmp_path / "seg.tfrecord"
    refs = write_records(path, [b"first", b"second record"])
    _flip(path, SECOND)
    for read in (lambda: index_records(path, verify=verify),
                 lambda: list(iter_records(path, verify=verify)),
                 lambda: read_record(path, refs[1], verify=verify)):
        with pytest.raises(TFRecordError, match=rf"record 1 at byte {SECOND}: "
                           "length CRC mismatch"):
            read()


def test_read_record_bad_ref_and_missing_file(tmp_path):
    path = tmp_path / "seg.tfrecord"
    refs = write_records(path, [b"first", b"second record"])
    with pytest.raises(TFRecordError, match="record 1 at byte 21: stale ref"):
        read_record(path, RecordRef(1, SECOND, 99))
    with pytest.raises(TFRecordError, match="record 2 at byte 46: truncated"):
        read_record(path, RecordRef(2, 46, 5))
    with pytest.raises(TFRecordError, match="length CRC mismatch"):
        read_record(path, RecordRef(1, SECOND + 1, refs[1].length))  # not a header start
    with pytest.raises(TFRecordError, match=r"scene 's', file .*nope\.tfrecord: .*missing"):
        index_records(tmp_path / "nope.tfrecord", segment="s")
    empty = tmp_path / "empty.tfrecord"
    empty.touch()
    assert index_records(empty) == [] and list(iter_records(empty)) == []
