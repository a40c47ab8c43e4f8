"""Sequential readahead, mountpoint-s3 style: a window that grows while reads
stay sequential and collapses on a seek. Pure; the caller turns the window
into piece prefetches under one global budget.

Random-access formats (Parquet column chunks, HDF5 datasets, zarr chunks) read
a few MiB in one go somewhere in a file: the kernel splits that into a run of
sequential requests, which must not look like a reader streaming the file. So a
streak that does not start at offset 0 must cover ``trigger_bytes`` (two 4 MiB
pieces) before anything is prefetched, and the window never runs further ahead
than the streak has already read: a reader that stops costs at most as many
bytes again as it read sequentially, rounded to pieces.
"""

from __future__ import annotations

import attrs


@attrs.define
class SequentialDetector:
    #: First window once a sequential streak is established, and the largest it grows to (bytes).
    initial_window: int
    max_window: int
    #: A streak that does not start at offset 0 must cover this many bytes
    #: before anything is prefetched, so a random read, even one of a few MiB
    #: (a column chunk), never costs an extra piece.
    trigger_bytes: int = 8 << 20
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
        covered = self.next_offset - self.streak_start
        if not (self.streak_start == 0 or covered >= self.trigger_bytes):
            return 0
        # Grows with what the streak has read (so it doubles each time the reader consumes it).
        self.window = min(self.max_window, max(self.initial_window, covered))
        return self.window
