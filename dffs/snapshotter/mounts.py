"""The mounts containerd performs for a snapshot, from its directories (pure).

An active snapshot is its own upper directory over its ancestors' (overlay,
``index=off`` because lower layers may be FUSE directories that overlay's
index cannot follow); without ancestors it is a read-write bind mount. A view
over one layer is a read-only bind, over several a read-only overlay (two
lowerdirs and no upper). Ordinary and lazily served layers mix freely.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs


@attrs.frozen
class Mount:
    type: str
    source: str
    options: tuple[str, ...]


def active_mounts(upper: str, work: str, lowers: Sequence[str]) -> list[Mount]:
    """``lowers`` nearest first, as overlay's lowerdir wants them."""
    if not lowers:
        return [Mount("bind", upper, ("rw", "rbind"))]
    options = (f"workdir={work}", f"upperdir={upper}", f"lowerdir={':'.join(lowers)}", "index=off")
    return [Mount("overlay", "overlay", options)]


def view_mounts(empty: str, lowers: Sequence[str]) -> list[Mount]:
    if not lowers:
        return [Mount("bind", empty, ("ro", "rbind"))]
    if len(lowers) == 1:
        return [Mount("bind", lowers[0], ("ro", "rbind"))]
    return [Mount("overlay", "overlay", (f"lowerdir={':'.join(lowers)}", "index=off"))]
