"""Piece arithmetic: spans tile the object exactly, ranges map to the right pieces."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dffs.idgen import (
    MAX_PIECE_LENGTH,
    MIN_PIECE_LENGTH,
    piece_count,
    piece_length_for,
    piece_span,
    pieces_for_range,
)

MiB = 1024 * 1024


def test_piece_length_rule_examples():
    assert piece_length_for(None) == MIN_PIECE_LENGTH
    assert piece_length_for(0) == MIN_PIECE_LENGTH
    assert piece_length_for(1024**3) == 4 * MiB  # 1 GiB: 256 pieces
    assert piece_length_for(4 * 1024**3) == 4 * MiB  # exactly 1024 pieces
    assert piece_length_for(4 * 1024**3 + 1) == 8 * MiB
    assert piece_length_for(10 * 1024**3) == 16 * MiB
    assert piece_length_for(1024**4) == MAX_PIECE_LENGTH  # clamped


@given(st.integers(min_value=0, max_value=1 << 50))
def test_piece_length_is_bounded_power_of_two(size):
    length = piece_length_for(size)
    assert MIN_PIECE_LENGTH <= length <= MAX_PIECE_LENGTH
    assert length & (length - 1) == 0


@given(st.integers(min_value=0, max_value=1 << 40), st.integers(min_value=1, max_value=1 << 26))
def test_spans_tile_the_object(size, piece_length):
    count = piece_count(size, piece_length)
    if size == 0:
        assert count == 0
        return
    first, last = piece_span(0, size, piece_length), piece_span(count - 1, size, piece_length)
    assert first.offset == 0
    assert last.end == size
    assert 0 < last.length <= piece_length
    # every piece but the last is full length
    if count > 1:
        assert piece_span(count - 2, size, piece_length).length == piece_length


def test_empty_object_has_no_pieces():
    assert piece_count(0, 4 * MiB) == 0
    assert list(pieces_for_range(0, 4096, 0, 4 * MiB)) == []
    with pytest.raises(IndexError):
        piece_span(0, 0, 4 * MiB)


def test_short_last_piece():
    size = 10 * MiB + 5
    assert piece_count(size, 4 * MiB) == 3
    span = piece_span(2, size, 4 * MiB)
    assert (span.offset, span.length) == (8 * MiB, 2 * MiB + 5)


def test_range_examples():
    L = 4 * MiB
    assert list(pieces_for_range(0, 1, 100 * MiB, L)) == [0]
    assert list(pieces_for_range(L - 1, 2, 100 * MiB, L)) == [0, 1]
    assert list(pieces_for_range(L, L, 100 * MiB, L)) == [1]
    assert list(pieces_for_range(900 * MiB, 4096, 1024 * MiB, L)) == [225]
    assert list(pieces_for_range(99 * MiB, 10 * MiB, 100 * MiB, L)) == [24]  # clipped at EOF
    assert list(pieces_for_range(100 * MiB, 10, 100 * MiB, L)) == []  # past EOF
    with pytest.raises(ValueError):
        pieces_for_range(-1, 10, 100, L)


@given(
    st.integers(min_value=1, max_value=1 << 34),
    st.integers(min_value=1, max_value=1 << 24),
    st.data(),
)
def test_range_covers_exactly_the_bytes(size, piece_length, data):
    offset = data.draw(st.integers(min_value=0, max_value=size + 10))
    length = data.draw(st.integers(min_value=0, max_value=1 << 26))
    pieces = pieces_for_range(offset, length, size, piece_length)
    end = min(offset + length, size)
    if offset >= end:
        assert len(pieces) == 0
        return
    first, last = piece_span(pieces[0], size, piece_length), piece_span(pieces[-1], size, piece_length)
    assert first.offset <= offset < first.end
    assert last.offset < end <= last.end
    assert pieces.step == 1  # contiguous
