"""Reusable piece buffers: allocate once, recv_into them again and again.

A fresh ``bytearray(4 MiB)`` costs a zero-fill and page faults on every
piece; the pool hands back warm buffers and bounds how many exist.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager


class BufferPool:
    def __init__(self, max_idle_bytes: int = 256 * 1024 * 1024):
        self.max_idle_bytes = max_idle_bytes
        self._idle: dict[int, list[bytearray]] = defaultdict(list)
        self._idle_bytes = 0

    @contextmanager
    def borrow(self, size: int):
        """A memoryview of exactly ``size`` bytes, returned to the pool afterwards."""
        idle = self._idle[size]
        if idle:
            buffer = idle.pop()
            self._idle_bytes -= size
        else:
            buffer = bytearray(size)
        try:
            yield memoryview(buffer)
        finally:
            if self._idle_bytes + size <= self.max_idle_bytes:
                idle.append(buffer)
                self._idle_bytes += size
