"""TFRecord files (the container of Waymo Open Dataset v1 segments), without TensorFlow.

Each record is: the data length (uint64 little-endian), the masked CRC-32C of those 8
bytes (uint32 LE), the data, and the masked CRC-32C of the data (uint32 LE). Every error
names the segment (when known), the file, the record index and its byte offset.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

import google_crc32c

from ..errors import SceneDataError
from ..io import atomic_file

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_HEADER_SIZE = _LENGTH.size + _CRC.size
_MASK_DELTA = 0xA282EAD8


class TFRecordError(SceneDataError):
    """A TFRecord file that is missing, truncated or fails a CRC check.

    Attributes:
        segment: segment id (the scene), or None when not known.
        index: index of the offending record (0-based), or None for the whole file.
        offset: byte offset of the start of that record's header, or None.
    """

    def __init__(self, segment: str | None, file: str | Path, index: int | None,
                 offset: int | None, problem: str):
        self.segment = segment
        self.index = index
        self.offset = offset
        where = f"record {index} at byte {offset}: " if index is not None else ""
        super().__init__(segment, file, where + problem)


@dataclass(frozen=True)
class RecordRef:
    """Where one record lies in its file.

    Attributes:
        index: position of the record in the file (0-based).
        offset: byte offset of the start of the record's header.
        length: length of the record's data in bytes.
    """

    index: int
    offset: int
    length: int


def masked_crc32c(data: bytes) -> int:
    """The CRC-32C of `data`, rotated right by 15 bits plus 0xa282ead8 (TFRecord's mask)."""
    crc = google_crc32c.value(bytes(data))
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def write_records(path: str | Path, records: Iterable[bytes]) -> list[RecordRef]:
    """Write `records` as a TFRecord file atomically (temp file beside it, fsync, replace);
    returns one RecordRef per record.

    Args:
        path: the file to write; its folder must exist; an existing file is replaced.
        records: the records' data, in order.
    """
    refs: list[RecordRef] = []
    with atomic_file(path) as f:
        offset = 0
        for index, record in enumerate(records):
            data = bytes(record)
            length = _LENGTH.pack(len(data))
            f.write(length + _CRC.pack(masked_crc32c(length)))
            f.write(data)
            f.write(_CRC.pack(masked_crc32c(data)))
            refs.append(RecordRef(index, offset, len(data)))
            offset += _HEADER_SIZE + len(data) + _CRC.size
    return refs


@contextmanager
def _open(path: str | Path, segment: str | None) -> Iterator[tuple[BinaryIO, int]]:
    """The file opened for buffered binary reading, and its size; missing -> TFRecordError."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise TFRecordError(segment, path, None, None, "TFRecord file is missing") from None
    with f:
        yield f, os.fstat(f.fileno()).st_size


def _read_header(f: BinaryIO, size: int, offset: int, fail: Callable[[str], TFRecordError],
                 ) -> int | None:
    """Read and check the header at `offset` (where `f` stands): the data length, or None at
    a clean end of file. Also checks that the data and its CRC fit in the file."""
    header = f.read(_HEADER_SIZE)
    if not header:
        return None
    if len(header) < _LENGTH.size:
        raise fail(f"truncated inside the length header: expected {_LENGTH.size} bytes, "
                   f"{len(header)} present")
    if len(header) < _HEADER_SIZE:
        raise fail(f"truncated inside the length CRC: expected {_CRC.size} bytes, "
                   f"{len(header) - _LENGTH.size} present")
    (length,), (stored,) = _LENGTH.unpack_from(header), _CRC.unpack_from(header, _LENGTH.size)
    computed = masked_crc32c(header[:_LENGTH.size])
    if stored != computed:
        raise fail(f"length CRC mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})")
    present = size - offset - _HEADER_SIZE
    if present < length:
        raise fail(f"truncated inside the data: expected {length} bytes, {present} present")
    if present < length + _CRC.size:
        raise fail(f"truncated inside the data CRC: expected {_CRC.size} bytes, "
                   f"{present - length} present")
    return length


def _read_data(f: BinaryIO, length: int, verify: bool,
               fail: Callable[[str], TFRecordError]) -> bytes:
    """Read the data and its CRC after a checked header; check the CRC when `verify`."""
    data, footer = f.read(length), f.read(_CRC.size)
    if len(data) < length or len(footer) < _CRC.size:
        raise fail("truncated: the file shrank while it was read")
    (stored,) = _CRC.unpack(footer)
    if verify and stored != (computed := masked_crc32c(data)):
        raise fail(f"data CRC mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})")
    return data


def _scan(path: str | Path, segment: str | None, verify: bool, keep: bool,
          ) -> Iterator[tuple[RecordRef, bytes | None]]:
    """Each record's ref and, when `keep` or `verify`, its data (else seek past it)."""
    with _open(path, segment) as (f, size):
        index = offset = 0
        while True:
            fail = partial(TFRecordError, segment, path, index, offset)
            if (length := _read_header(f, size, offset, fail)) is None:
                return
            data = None
            if keep or verify:
                data = _read_data(f, length, verify, fail)
            else:
                f.seek(offset + _HEADER_SIZE + length + _CRC.size)
            yield RecordRef(index, offset, length), data
            index, offset = index + 1, offset + _HEADER_SIZE + length + _CRC.size


def index_records(path: str | Path, segment: str | None = None,
                  verify: bool = True) -> list[RecordRef]:
    """Scan a TFRecord file's headers; one RecordRef per record, in file order.

    Args:
        path: the TFRecord file.
        segment: segment id for error messages, or None.
        verify: also read each record's data and check its CRC (the length CRC is always
            checked); when False, the data is skipped with a seek.

    Raises:
        TFRecordError: the file is missing, truncated or fails a CRC check.
    """
    return [ref for ref, _ in _scan(path, segment, verify, keep=False)]


def read_record(path: str | Path, ref: RecordRef, segment: str | None = None,
                verify: bool = True) -> bytes:
    """One record's data by its RecordRef (a seek and a read).

    Args:
        path: the TFRecord file the ref was indexed from.
        ref: where the record lies (from index_records or write_records).
        segment: segment id for error messages, or None.
        verify: check the data CRC (the length CRC is always checked).

    Raises:
        TFRecordError: truncated, a CRC mismatch, or a ref that does not match the file.
    """
    fail = partial(TFRecordError, segment, path, ref.index, ref.offset)
    with _open(path, segment) as (f, size):
        f.seek(ref.offset)
        if (length := _read_header(f, size, ref.offset, fail)) is None:
            raise fail(f"truncated: the file is {size} bytes, the record starts past its end")
        if length != ref.length:
            raise fail(f"stale ref: the header says {length} bytes of data, the ref "
                       f"{ref.length}")
        return _read_data(f, length, verify, fail)


def iter_records(path: str | Path, segment: str | None = None,
                 verify: bool = True) -> Iterator[bytes]:
    """Each record's data in file order, read one record at a time.

    Args:
        path: the TFRecord file.
        segment: segment id for error messages, or None.
        verify: check each data CRC (the length CRC is always checked).

    Raises:
        TFRecordError: the file is missing, truncated or fails a CRC check.
    """
    for _, data in _scan(path, segment, verify, keep=True):
        assert data is not None
        yield data
