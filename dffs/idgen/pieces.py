"""Piece arithmetic: how a task's bytes are cut into fixed-size pieces.

All functions are pure. Piece ``n`` covers ``[n * L, min((n + 1) * L, size))``;
the last piece may be short; an empty object has zero pieces.
"""

from __future__ import annotations

import attrs

MiB = 1024 * 1024
MIN_PIECE_LENGTH = 4 * MiB
MAX_PIECE_LENGTH = 16 * MiB
DEFAULT_PIECE_LENGTH = MIN_PIECE_LENGTH
#: A task aims for at most this many pieces before pieces grow past the minimum.
TARGET_PIECE_COUNT = 1024


def piece_length_for(content_length: int | None) -> int:
    """The piece length every peer uses for an object of ``content_length`` bytes.

    ``next_pow2(content_length / 1024)`` clamped to 4..16 MiB. Dragonfly clamps
    to 4..64 MiB with a /500 target; we keep pieces smaller because the lazy
    mount pays a whole piece of origin traffic for a cold 4 KiB read, and cap
    the count so a 100 GiB object is still only 6400 pieces of metadata.
    Unknown sizes get the minimum.
    """
    if content_length is None or content_length <= MIN_PIECE_LENGTH * TARGET_PIECE_COUNT:
        return MIN_PIECE_LENGTH
    wanted = -(-content_length // TARGET_PIECE_COUNT)
    length = 1 << (wanted - 1).bit_length()
    return max(MIN_PIECE_LENGTH, min(MAX_PIECE_LENGTH, length))


def piece_count(content_length: int, piece_length: int) -> int:
    if content_length < 0 or piece_length <= 0:
        raise ValueError("content_length must be >= 0 and piece_length > 0")
    return -(-content_length // piece_length)


@attrs.frozen
class PieceSpan:
    """Where one piece lives in the task's bytes."""

    number: int
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def piece_span(number: int, content_length: int, piece_length: int) -> PieceSpan:
    count = piece_count(content_length, piece_length)
    if not 0 <= number < count:
        raise IndexError(f"piece {number} out of range 0..{count - 1}")
    offset = number * piece_length
    return PieceSpan(number, offset, min(piece_length, content_length - offset))


def pieces_for_range(offset: int, length: int, content_length: int, piece_length: int) -> range:
    """Piece numbers that cover ``[offset, offset + length)``, clipped to the object.

    Reads past the end cover nothing, as ``read()`` past EOF returns nothing.
    """
    if offset < 0 or length < 0:
        raise ValueError("offset and length must be >= 0")
    end = min(offset + length, content_length)
    if offset >= end:
        return range(0)
    return range(offset // piece_length, (end - 1) // piece_length + 1)
