"""What a value that came from outside may be: sizes, times, validators, file names. Pure.

Origins, listings, manifests and peers are not trusted to send sane numbers.
Each parser checks what it reads against these bounds where it reads it, so
an absurd value costs that one request an error (or that one entry a skip)
instead of surfacing later as an OverflowError deep in the FUSE layer or a
huge allocation in storage. The FUSE layer clamps once more on the way out.
"""

from __future__ import annotations

import math
import re

#: Largest object dffs takes: 16 TiB, ext4's largest file (S3's largest object is 5 TiB).
MAX_OBJECT_SIZE = 1 << 44
#: Longest file name a Linux filesystem allows, in bytes (NAME_MAX).
MAX_NAME_BYTES = 255
#: Longest ETag or Last-Modified kept (they are echoed back in conditional requests).
MAX_VALIDATOR_LENGTH = 1024
#: Latest time that fits a FUSE timestamp in nanoseconds (int64): April 2262.
MAX_TIMESTAMP = (2**63 - 1) // 10**9

_DIGITS = re.compile(r"[0-9]{1,20}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_size(text: str) -> int:
    """A byte count sent as decimal digits (Content-Length, S3 <Size>); ValueError otherwise.

    Stricter than ``int()``, which takes signs, spaces and underscores."""
    text = text.strip()
    if not _DIGITS.fullmatch(text):
        raise ValueError(f"size {text[:40]!r} is not a decimal byte count")
    return check_size(int(text))


def check_size(value: object) -> int:
    """``value`` as an object size: a non-negative int up to MAX_OBJECT_SIZE; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"size {value!r} is not an integer")
    if value < 0:
        raise ValueError(f"size {value} is negative")
    if value > MAX_OBJECT_SIZE:
        raise ValueError(f"size {value} is over the {MAX_OBJECT_SIZE}-byte limit")
    return value


def timestamp(value: object) -> float | None:
    """Seconds since the epoch if ``value`` is a usable time (finite, 1970..2262), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        return None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_TIMESTAMP:
        return None
    return seconds


def validator(value: str | None) -> str | None:
    """An ETag or Last-Modified as received; ValueError when it is too long to echo back."""
    if value is not None and len(value) > MAX_VALIDATOR_LENGTH:
        raise ValueError(f"validator of {len(value)} characters is over the {MAX_VALIDATOR_LENGTH}-character limit")
    return value


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be one directory entry of the mount (None when it can).

    A listing's names become file names that ``ls``, shells and scripts see:
    no path separators, no ``.``/``..``, nothing empty, nothing longer than a
    filesystem allows, and no control characters (a newline in a name breaks
    every line-oriented tool).
    """
    if not isinstance(name, str):
        return "the name is not a string"
    if not name:
        return "the name is empty"
    if name in (".", ".."):
        return f"the name is {name!r}"
    if "/" in name:
        return "the name contains '/'"
    if _CONTROL.search(name):
        return "the name contains control characters"
    try:
        encoded = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "the name is not encodable"
    if len(encoded) > MAX_NAME_BYTES:
        return f"the name is {len(encoded)} bytes long (at most {MAX_NAME_BYTES})"
    return None
