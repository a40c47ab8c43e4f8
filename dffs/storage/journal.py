"""The piece journal: an append-only record of which pieces are on disk.

Pure encoding and decoding, no I/O. A record is appended only *after* the
piece's bytes were written to the content file, so a record is a claim that
the bytes are there. Each record carries its own CRC so a record torn by a
crash is recognised and dropped (with everything after it).

Record layout (little-endian, 48 bytes)::

    u32 piece number | u32 piece length | u8 kind | 3 pad | 32 bytes digest | u32 crc32
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import attrs

MAGIC = b"DFFSPJ01"
HEADER = struct.Struct("<8sI4x")  # magic, piece length
RECORD = struct.Struct("<IIB3x32sI")
KIND_PRESENT = 1
KIND_REMOVED = 0


@attrs.frozen
class PieceRecord:
    number: int
    length: int
    present: bool
    digest: bytes  # 32 raw bytes; zeros for a removal


def encode_header(piece_length: int) -> bytes:
    return HEADER.pack(MAGIC, piece_length)


def decode_header(data: bytes) -> int:
    """The piece length named by a journal header; ValueError if it is not one."""
    if len(data) < HEADER.size:
        raise ValueError("journal header is truncated")
    magic, piece_length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not a dffs piece journal")
    return piece_length


def encode_record(record: PieceRecord) -> bytes:
    body = RECORD.pack(
        record.number,
        record.length,
        KIND_PRESENT if record.present else KIND_REMOVED,
        record.digest,
        0,
    )[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def decode_records(data: bytes) -> tuple[list[PieceRecord], int]:
    """Decode records from the bytes after the header.

    Returns the records up to the first damaged or incomplete one and the
    number of bytes they span, so the caller can truncate a torn tail.
    """
    records: list[PieceRecord] = []
    good = 0
    view = memoryview(data)
    for start in range(0, len(data) - RECORD.size + 1, RECORD.size):
        chunk = view[start : start + RECORD.size]
        number, length, kind, digest, crc = RECORD.unpack(chunk)
        if zlib.crc32(chunk[:-4]) != crc or kind not in (KIND_PRESENT, KIND_REMOVED):
            break
        records.append(PieceRecord(number, length, kind == KIND_PRESENT, digest))
        good = start + RECORD.size
    return records, good


def replay(records: list[PieceRecord]) -> dict[int, PieceRecord]:
    """The pieces present after applying records in order (last one wins)."""
    state: dict[int, PieceRecord] = {}
    for record in records:
        if record.present:
            state[record.number] = record
        else:
            state.pop(record.number, None)
    return state


def iter_compacted(state: dict[int, PieceRecord]) -> Iterator[bytes]:
    for number in sorted(state):
        yield encode_record(state[number])
