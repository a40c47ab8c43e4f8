"""Prefetched pieces pushed into the kernel's page cache of the file (FUSE ``notify_store``).

A sequential reader then gets those bytes from the kernel itself: no FUSE read
request, no handler on the event loop, no reply copy there. The copy into the
kernel runs in one worker thread of its own, beside the event loop (the other
core), instead of on it.

Two rules keep this safe:

- Never push from the event loop's thread. ``notify_store`` waits for the page
  locks that a pending read request holds until it is answered; if the thread
  that must answer it were the one waiting, the mount would hang. The pusher has
  its own thread limiter, so a push waiting on a page lock never takes a thread
  the read path needs (piece writes, verification).
- Leave a *tripwire* at the start of every pushed piece (``hole`` bytes, not
  pushed): the kernel serves pushed pages without asking us, so without a gap
  the mount would no longer see where the reader is, and the readahead window
  (which moves with the reader's requests) would stop moving.

Pushing is an optimisation only: any failure (the kernel forgot the inode, the
mount is going away) is logged and the reader falls back to ordinary reads.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

from dffs.peertask import PeerTask
from dffs.peertask.buffers import BufferPool

log = logging.getLogger(__name__)

PAGE = 4096

#: ``notify_store(inode, offset, data)``: pyfuse3's, or a test's stand-in.
StoreFn = Callable[[int, int, Any], None]


class PagePusher:
    """Pushes verified pieces of open files into their page cache, one at a time, in a worker thread."""

    def __init__(self, store: StoreFn = pyfuse3.notify_store, *, hole: int = 1 << 20, max_queued: int = 32):
        self._store = store
        #: Bytes at the start of each piece left for the reader to ask for (a multiple of the page size).
        self.hole = max(0, -(-hole // PAGE) * PAGE)
        self.max_queued = max_queued
        self._limiter = trio.CapacityLimiter(1)  # one push at a time
        self._thread = trio.CapacityLimiter(1)  # its thread, apart from the read path's
        self._queued: set[tuple[int, str, int]] = set()
        self._buffers = BufferPool(max_idle_bytes=16 << 20)
        self.enabled = True
        self._running = 0
        self._idle = trio.Event()
        self._idle.set()
        self.pushed_bytes = 0
        self.failures = 0

    def push(self, inode: int, task: PeerTask, number: int, start: int = 0) -> None:
        """Queue bytes ``[start, end)`` of piece ``number`` (``start`` raised to the tripwire's end)
        for ``inode``'s page cache; runs in the task's background, so it ends with the task."""
        key = (inode, task.task_id, number)
        if not self.enabled or key in self._queued or len(self._queued) >= self.max_queued:
            return
        span = task.store.span(number)
        begin = max(self.hole, -(-start // PAGE) * PAGE)
        if begin >= span.length:
            return
        self._queued.add(key)
        task.background.start_soon(self._push, inode, task, number, begin, key)

    async def stop(self) -> None:
        """No new pushes; returns once none is running. Call it while the FUSE loop still answers
        reads: a push waiting on a page lock finishes only when the read holding it is answered."""
        self.enabled = False
        await self._idle.wait()

    async def _push(self, inode: int, task: PeerTask, number: int, begin: int, key: tuple[int, str, int]) -> None:
        self._running += 1
        self._idle = trio.Event() if self._running == 1 else self._idle
        try:
            store = task.store
            async with self._limiter:
                if not self.enabled or not store.is_verified(number):
                    return  # only bytes checked against their digest reach the kernel
                span = store.span(number)
                with store.pinned([number]):  # not evicted, and its file not parked, meanwhile
                    own_fd, base = store.content_location()
                    fd = os.dup(own_fd)
                    try:
                        await trio.to_thread.run_sync(
                            self._copy, fd, inode, base, span.offset + begin, span.length - begin, limiter=self._thread
                        )
                    finally:
                        os.close(fd)
            self.pushed_bytes += span.length - begin
        except OSError as exc:
            self.failures += 1
            if exc.errno == errno.ENOSYS:  # a kernel without notify_store: stop trying
                self.enabled = False
            level = logging.DEBUG if exc.errno == errno.ENOENT else logging.INFO  # ENOENT: the inode was forgotten
            log.log(level, "task=%s piece=%d event=page_push_failed error=%s", task.task_id, number, exc)
        finally:
            self._queued.discard(key)
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    def _copy(self, fd: int, inode: int, base: int, offset: int, length: int) -> None:
        """In the worker thread: the bytes from the content file (the task's byte 0 at ``base``)
        into the kernel's cache of ``inode``."""
        with self._buffers.borrow(length) as buffer:
            filled = 0
            while filled < length:
                got = os.preadv(fd, [buffer[filled:]], base + offset + filled)
                if got <= 0:
                    raise OSError(errno.EIO, f"content file ended at {offset + filled}")
                filled += got
            self._store(inode, offset, buffer)
