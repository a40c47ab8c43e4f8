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

    def take(self, size: int) -> memoryview:
        """A buffer of exactly ``size`` bytes; hand it back with :meth:`give`."""
        idle = self._idle[size]
        if idle:
            self._idle_bytes -= size
            return memoryview(idle.pop())
        return memoryview(bytearray(size))

    def give(self, view: memoryview) -> None:
        size = len(view)
        if self._idle_bytes + size <= self.max_idle_bytes and isinstance(view.obj, bytearray):
            self._idle[size].append(view.obj)
            self._idle_bytes += size

    @contextmanager
    def borrow(self, size: int):
        """A memoryview of exactly ``size`` bytes, returned to the pool afterwards."""
        view = self.take(size)
        try:
            yield view
        finally:
            self.give(view)
