"""Background piece fetches under one global budget.

Readahead and ``--prefetch whole`` schedule pieces here (absent ones are fetched,
ones on disk but not yet verified by this process are read and verified); at most
``concurrency`` of them are in flight across every file and handle, so their
buffers (``concurrency`` x piece length) are the whole memory they cost.
Reads that need a piece *now* call PeerTask.ensure_piece directly and never
wait for this limiter: on-demand always overtakes prefetch. Each fetch runs in
its task's background, so a forgotten task's readahead ends with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import trio

from dffs.errors import DffsError
from dffs.peertask import PeerTask

log = logging.getLogger(__name__)


class Prefetcher:
    def __init__(self, *, concurrency: int = 4, max_queued: int = 1024):
        self._limiter = trio.CapacityLimiter(max(1, concurrency))
        self._queued: set[tuple[str, int]] = set()
        self.max_queued = max_queued
        self.fetched = 0

    @property
    def queued(self) -> int:
        return len(self._queued)

    def schedule(self, task: PeerTask, pieces: Iterable[int], on_fetched: Callable[[int], None] | None = None) -> None:
        """Fetch these pieces in the background; ``on_fetched(number)`` after each one this fetched."""
        for number in pieces:
            key = (task.task_id, number)
            if key in self._queued or task.store.is_verified(number) or task.is_inflight(number):
                continue
            if len(self._queued) >= self.max_queued:
                return
            self._queued.add(key)
            task.background.start_soon(self._fetch, task, number, key, on_fetched)

    async def _fetch(
        self, task: PeerTask, number: int, key: tuple[str, int], on_fetched: Callable[[int], None] | None
    ) -> None:
        try:
            async with self._limiter:
                if not task.store.is_verified(number):
                    # A piece on disk from an earlier process is verified ahead too (read and
                    # hashed in a thread): after a restart or a dropped page cache the reader
                    # would otherwise wait for each piece's disk read in turn.
                    await task.ensure_piece(number)
                    self.fetched += 1
                    if on_fetched is not None:
                        on_fetched(number)
        except DffsError as exc:
            log.info("task=%s piece=%d event=prefetch_failed error=%s", task.task_id, number, exc)
        finally:
            self._queued.discard(key)
