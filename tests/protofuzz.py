"""Hypothesis strategies for protobuf messages whose fields take hostile values.

``messages(cls)`` fills any message type by walking its descriptor: every scalar
field maybe set, numbers drawn with a bias to the edges (0, -1, the type's
limits, NaN and infinities), strings empty, long, or with control characters,
sub-messages and repeated fields to a small depth. The fuzz tests use it for
the numeric fields of every RPC request.
"""

from __future__ import annotations

from hypothesis import strategies as st

FD = None  # filled lazily: google.protobuf's FieldDescriptor

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT32 = (0, 2**32 - 1)
_UINT64 = (0, 2**64 - 1)


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for v in (0, 1, -1, 2, 255, 4096, 2**31 - 1, 2**32 - 1, 2**53 + 1, 2**63 - 1, lo, hi) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


_FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, -1.0, 1e-300, 1e300, -1e300, float("nan"), float("inf"), float("-inf")]),
    st.floats(allow_nan=True, allow_infinity=True),
)
_STRINGS = st.one_of(
    st.sampled_from(["", " ", "..", "/", "a/b", "\x00", "\n", "x" * 300, "ä", "http://h/x", "10.0.0.1", "::1"]),
    st.text(max_size=40),
)


def _scalar(field) -> st.SearchStrategy:
    from google.protobuf.descriptor import FieldDescriptor as F

    t = field.type
    if t in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return _ints(*_INT32)
    if t in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return _ints(*_INT64)
    if t in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return _ints(*_UINT32)
    if t in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return _ints(*_UINT64)
    if t == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), _ints(*_INT32))  # proto3 enums are open
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return (
            _FLOATS
            if t == F.TYPE_DOUBLE
            else _FLOATS.filter(lambda v: v != v or abs(v) < 3e38 or abs(v) == float("inf"))
        )
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_STRING:
        return _STRINGS
    if t == F.TYPE_BYTES:
        return st.binary(max_size=40)
    raise AssertionError(f"unhandled field type {t}")


def fill(message, draw, depth: int = 0, *, keep_set: bool = False):
    """Set a random selection of ``message``'s fields (in place) with hostile values."""
    from google.protobuf.descriptor import FieldDescriptor as F

    for field in message.DESCRIPTOR.fields:
        if not draw(st.booleans()):
            continue
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            target = getattr(message, field.name)
            for _ in range(draw(st.integers(0, 2))):
                key_field, value_field = (
                    field.message_type.fields_by_name["key"],
                    field.message_type.fields_by_name["value"],
                )
                key = draw(_scalar(key_field))
                if value_field.type == F.TYPE_MESSAGE:
                    fill(target[key], draw, depth + 1)
                else:
                    target[key] = draw(_scalar(value_field))
        elif field.is_repeated:
            target = getattr(message, field.name)
            for _ in range(draw(st.integers(0, 3))):
                if field.type == F.TYPE_MESSAGE:
                    if depth < 3:
                        fill(target.add(), draw, depth + 1)
                else:
                    target.append(draw(_scalar(field)))
        elif field.type == F.TYPE_MESSAGE:
            if depth < 3:
                sub = getattr(message, field.name)
                sub.SetInParent()
                fill(sub, draw, depth + 1)
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


def messages(cls, **fixed) -> st.SearchStrategy:
    """Messages of type ``cls`` with hostile fields; ``fixed`` fields are set last, as given."""

    @st.composite
    def build(draw):
        message = fill(cls(), draw)
        for name, value in fixed.items():
            if isinstance(value, st.SearchStrategy):
                value = draw(value)
            field = getattr(message, name)
            if hasattr(field, "CopyFrom") and not isinstance(value, (str, int, float, bytes)):
                field.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return build()
