"""Sequential readahead, mountpoint-s3 style: a window that grows while reads
stay sequential and collapses on a seek. Pure; the caller turns the window
into piece prefetches under one global budget.
"""

from __future__ import annotations

import attrs


@attrs.define
class SequentialDetector:
    #: First window once a sequential streak is established, and the largest it grows to (bytes).
    initial_window: int
    max_window: int
    #: A streak that does not start at offset 0 must cover this many bytes
    #: before anything is prefetched, so one small random read (or the
    #: kernel's own readahead around it) never costs an extra piece.
    trigger_bytes: int = 1 << 20
    #: Reads this close to where the last one ended still count as sequential:
    #: the kernel's readahead issues requests slightly out of order.
    slack: int = 1 << 20
    window: int = 0
    next_offset: int | None = None
    streak_start: int = 0

    def on_read(self, offset: int, size: int) -> int:
        """Record a read; returns how many bytes past its end to prefetch (0: none)."""
        sequential = self.next_offset is not None and abs(offset - self.next_offset) <= self.slack
        if not sequential:
            self.streak_start = offset
            self.window = 0
        self.next_offset = max(offset + size, self.next_offset or 0) if sequential else offset + size
        established = self.streak_start == 0 or self.next_offset - self.streak_start >= self.trigger_bytes
        if not established:
            return 0
        self.window = min(self.max_window, self.window * 2) if self.window else self.initial_window
        return self.window
