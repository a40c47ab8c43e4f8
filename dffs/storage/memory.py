"""The memory tier: a byte-bounded LRU of small, hot pieces.

The kernel page cache is the main cache for reads; this tier exists for the
many tiny objects (manifests, configs, small dataset files) where opening the
content file and ``pread``-ing it costs more than the bytes themselves.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable


class MemoryTier:
    def __init__(self, budget_bytes: int, max_item_bytes: int = 256 * 1024):
        self.budget_bytes = budget_bytes
        self.max_item_bytes = max_item_bytes
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def used_bytes(self) -> int:
        return self._used

    def admits(self, size: int) -> bool:
        return 0 < size <= self.max_item_bytes and size <= self.budget_bytes

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: Hashable, data: bytes) -> None:
        if not self.admits(len(data)):
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._used -= len(old)
            self._items[key] = data
            self._used += len(data)
            while self._used > self.budget_bytes:
                _, evicted = self._items.popitem(last=False)
                self._used -= len(evicted)

    def discard(self, key: Hashable) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._used -= len(old)

    def discard_where(self, predicate) -> None:
        with self._lock:
            for key in [k for k in self._items if predicate(k)]:
                self._used -= len(self._items.pop(key))
