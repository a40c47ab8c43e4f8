"""A peer task: one host's download of one task, shared by everyone who reads it.

Pieces are fetched single-flight: however many readers (FUSE handles, the
proxy, dfget) want piece N at once, one request goes out and they all wait on
it. Where a piece comes from is the task's :class:`~dffs.peertask.swarm.PieceFetcher`
(the origin, or parents through P2P); what the task does on its own behalf
runs in its :class:`~dffs.peertask.background.Background`, which ends with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager

import trio

from dffs.errors import DffsError, RangeNotSupported, SourceError, primary_error
from dffs.metrics import daemon as metrics
from dffs.peertask.background import Background
from dffs.peertask.buffers import BufferPool
from dffs.peertask.singleflight import Flight, SingleFlight
from dffs.peertask.swarm import PieceFetcher
from dffs.source.base import Source, SourceStat, Validators
from dffs.storage import TaskStore

log = logging.getLogger(__name__)


#: Called with the number of bytes a piece added (whether fetched or found locally).
ProgressCallback = Callable[[int], None]


class PeerTask:
    def __init__(
        self,
        store: TaskStore,
        source: Source,
        stat: SourceStat,
        *,
        fetcher: PieceFetcher,
        background: Background,
        headers: Mapping[str, str] | None = None,
        buffers: BufferPool | None = None,
    ):
        self.store = store
        self.source = source
        self.stat = stat
        #: Where pieces come from: the origin, or parents first (P2P).
        self.fetcher = fetcher
        #: The task's own background work; cancelled when the task is forgotten or deleted.
        self.background = background
        self.headers = dict(headers or {})
        self.buffers = buffers or BufferPool()
        self.validators = Validators(
            etag=store.meta.etag, last_modified=store.meta.last_modified, content_length=store.meta.content_length
        )
        self._pieces: SingleFlight[int] = SingleFlight()
        self._ranges_supported = stat.accepts_ranges
        #: Bytes this process fetched from the origin for this task.
        self.source_bytes = 0
        self._complete = trio.Event()
        #: Pieces stored but not yet reported to the fetcher: the task is not complete until each
        #: report is out, so a "peer finished" can never overtake a piece's report.
        self._unreported = 0
        #: Whole-object digests this process checked the complete task against ("" = pieces only).
        self.verified_digests: set[str] = set()
        #: Bytes received from other peers.
        self.peer_bytes = 0
        self._listeners: set[trio.MemorySendChannel] = set()
        #: Whole-task downloads (fetch_all) running: the GC leaves such a task alone.
        self.filling = 0
        #: Readers that keep this PeerTask between requests (open FUSE files, downloads): see :meth:`held`.
        self.holders = 0
        #: When anyone last used the task (monotonic), for the task manager's idle sweep.
        self.last_used = time.monotonic()
        self._note_written()

    # ------------------------------------------------------------- users
    @contextmanager
    def held(self):
        """Keep this PeerTask (and its background work) for the block, however idle it looks.

        The task manager drops idle tasks from memory (:meth:`TaskManager.forget`); whoever
        keeps a PeerTask across requests — an open file, a download — holds it meanwhile."""
        self.hold()
        try:
            yield self
        finally:
            self.release()

    def hold(self) -> None:
        """:meth:`held` for holders that are not a block (an open file, until its release)."""
        self.holders += 1

    def release(self) -> None:
        self.holders -= 1
        self.last_used = time.monotonic()

    def idle(self, now: float, after: float) -> bool:
        """Nobody holds, reads, fetches, subscribes or pins anything of it, for ``after`` seconds."""
        return (
            self.holders == 0
            and self.filling == 0
            and not self._pieces
            and not self._listeners
            and not self.store.pinned_pieces()
            and now - self.last_used >= after
        )

    def _note_written(self, number: int | None = None) -> None:
        if number is not None:
            for channel in list(self._listeners):
                try:
                    channel.send_nowait(number)
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    self._listeners.discard(channel)  # a listener that cannot keep up re-syncs
        if self._unreported == 0 and self.store.is_complete():
            self._complete.set()

    @contextmanager
    def _reporting(self):
        """A piece being stored and then reported (see ``_unreported``)."""
        self._unreported += 1
        try:
            yield
        except BaseException:
            self._unreported -= 1
            self._note_written()  # the others' pieces may be all there is to wait for
            raise
        self._unreported -= 1

    async def wait_complete(self) -> None:
        """Return once every piece of the task is present (however they arrived)."""
        await self._complete.wait()

    @contextmanager
    def subscription(self, capacity: int = 4096):
        """A channel of piece numbers as they become present (for SyncPieces).

        Enter it *before* reading the present pieces, so none is missed; an
        end of channel inside the block means the subscriber fell behind.
        """
        send, receive = trio.open_memory_channel[int](capacity)
        self._listeners.add(send)
        try:
            yield receive
        finally:
            self._listeners.discard(send)
            send.close()

    @property
    def task_id(self) -> str:
        return self.store.task_id

    # ------------------------------------------------------------- pieces
    def is_inflight(self, number: int) -> bool:
        return number in self._pieces

    async def ensure_piece(self, number: int) -> None:
        """Make piece ``number`` present *and verified*: what a reader needs before pread.

        Pieces found on disk from an earlier process are hashed once (in a
        worker thread); a corrupt one is dropped and fetched again.
        """
        store = self.store
        self.last_used = time.monotonic()
        if store.is_verified(number):
            return
        if store.has_piece(number) and await trio.to_thread.run_sync(store.ensure_verified, number):
            return
        await self.fetch_piece(number)

    async def fetch_piece(self, number: int) -> None:
        """Make piece ``number`` present; single flight across concurrent callers."""
        await self._pieces.run(number, lambda: self._download_piece(number), done=lambda: self.store.has_piece(number))

    async def read_cold(self, number: int, start: int, length: int) -> bytes | None:
        """Serve a small read of an absent piece with the first byte fast.

        Fetches only ``[start, start + length)`` of piece ``number``, returns
        those bytes, and completes the rest of the piece in the task's
        background (the piece is in flight meanwhile, so other readers wait for
        it as usual). The origin still sends exactly one piece. Returns None
        when the piece is present or already being fetched, when pieces come
        from parents (whole pieces, verifiable), or while piece writes fail here
        (:class:`dffs.storage.task.WriteHealth`): the caller then waits normally.
        The bytes come straight from the origin, the source of truth; the
        piece's digest is computed when it is complete.
        """
        if (
            self.store.has_piece(number)
            or not self.fetcher.from_origin_only
            or self.background.cancelled
            or self.store.write_health.failing  # the piece could not be kept: the reader gets the write's error
        ):
            return None
        flight = self._pieces.begin(number)
        if flight is None:
            return None
        span = self.store.span(number)
        end = min(start + length, span.length)
        buffer = self.buffers.take(span.length)
        try:
            await self.source.read_range(
                self.stat.url, span.offset + start, buffer[start:end], headers=self.headers, validators=self.validators
            )
        except BaseException as exc:
            self.buffers.give(buffer)
            flight.finish(exc if isinstance(exc, Exception) else None)
            raise
        self.background.start_soon(self._complete_piece, number, buffer, start, end, flight)
        return bytes(buffer[start:end])

    async def _complete_piece(self, number: int, buffer: memoryview, start: int, end: int, flight: Flight) -> None:
        span = self.store.span(number)
        error: Exception | None = None
        try:
            for lo, hi in ((0, start), (end, span.length)):
                if hi > lo:
                    await self.source.read_range(
                        self.stat.url,
                        span.offset + lo,
                        buffer[lo:hi],
                        headers=self.headers,
                        validators=self.validators,
                    )
            self.source_bytes += span.length
            metrics.download_bytes.labels("origin").inc(span.length)
            await self._store_piece(number, buffer)
            self._note_written(number)
        except DffsError as exc:  # recorded for the waiters; the task's other work goes on
            error = exc
            log.info("task=%s piece=%d event=complete_piece_failed error=%s", self.task_id, number, exc)
        finally:
            self.buffers.give(buffer)
            flight.finish(error)

    async def _download_piece(self, number: int) -> None:
        span = self.store.span(number)
        started = time.monotonic()
        with self.buffers.borrow(span.length) as buffer:
            origin, digest = await self.fetcher.fetch(self, number, buffer)
            if origin:
                self.source_bytes += span.length
            else:
                self.peer_bytes += span.length
            kind = "origin" if origin else "peer"
            metrics.download_bytes.labels(kind).inc(span.length)
            metrics.piece_seconds.labels(kind).observe(time.monotonic() - started)
            with self._reporting():
                await self._store_piece(number, buffer, digest)
                # Reported before the piece counts as written, so "peer finished" never overtakes it.
                await self.fetcher.stored(self, number, origin, time.monotonic() - started)
        self._note_written(number)
        log.debug(
            "task=%s piece=%d source=%s bytes=%d ms=%.1f",
            self.task_id,
            number,
            "origin" if origin else "peer",
            span.length,
            1000 * (time.monotonic() - started),
        )

    async def _store_piece(self, number: int, buffer: memoryview, digest: bytes | None = None) -> None:
        """Write a piece to storage: in a worker thread, or inline for a small object in the shared
        pack (a page-cache write and an in-memory row, cheaper than the hand-off; its index row is
        committed with the next batch)."""
        store = self.store
        if store.writes_inline:
            store.write_piece(number, buffer, digest, defer_index=True)
        else:
            await trio.to_thread.run_sync(store.write_piece, number, buffer, digest)

    async def fetch_from_origin(self, number: int, buffer: memoryview) -> None:
        span = self.store.span(number)
        await self.source.read_range(
            self.stat.url, span.offset, buffer, headers=self.headers, validators=self.validators
        )

    # -------------------------------------------------------- whole task
    async def fetch_all(
        self,
        *,
        concurrency: int = 8,
        on_progress: ProgressCallback | None = None,
        report_present: bool = True,
    ) -> None:
        """Make every piece present: ranged fetches ``concurrency`` at a time,
        or one sequential stream if the origin does not do ranges.

        ``on_progress`` gets the bytes already present first (unless
        ``report_present`` is false: a caller that counted them before), then
        each piece's as it arrives."""
        self.filling += 1
        try:
            await self._fetch_all(concurrency, on_progress, report_present)
        finally:
            self.filling -= 1

    async def _fetch_all(self, concurrency: int, on_progress: ProgressCallback | None, report_present: bool) -> None:
        progress = on_progress or (lambda n: None)
        await trio.to_thread.run_sync(self.store.verify_all)
        present = self.store.present_bytes()
        if present and report_present:
            progress(present)
        if self.store.is_complete():
            return
        if self._ranges_supported:
            try:
                await self._fetch_ranged(concurrency, progress)
                return
            except RangeNotSupported:
                log.info("task=%s event=range_not_supported action=stream", self.task_id)
                self._ranges_supported = False
        await self._fetch_streamed(progress)

    async def _fetch_ranged(self, concurrency: int, progress: ProgressCallback) -> None:
        missing = self.store.missing_pieces()  # ascending; only pieces no worker has chosen yet
        window = 512  # P2P chooses among this many upcoming pieces: bounded work per choice

        def next_piece() -> int | None:
            # The fetcher picks: from the origin in order; from peers rarest
            # first, so a swarm's peers fetch different pieces and trade them.
            # Readers that need a piece now never wait here: they call ensure_piece.
            if not missing:
                return None
            upcoming = missing[:window]
            candidates = [n for n in upcoming if n not in self._pieces and not self.store.has_piece(n)]
            number = self.fetcher.choose(candidates) if candidates else upcoming[0]
            missing.remove(number)
            return number

        async def worker() -> None:
            while (number := next_piece()) is not None:
                await self.fetch_piece(number)
                progress(self.store.span(number).length)

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(max(1, concurrency)):
                    nursery.start_soon(worker)
        except BaseExceptionGroup as group:
            raise primary_error(group) from None

    async def _fetch_streamed(self, progress: ProgressCallback) -> None:
        """One GET from the first missing piece to the end, cut into pieces.

        Receiving and storing overlap: full buffers go to a writer task (which
        hashes and writes in a worker thread) while the next piece arrives.
        """
        missing = self.store.missing_pieces()
        if not missing:
            return
        first = self.store.span(missing[0])
        size = self.store.meta.piece_length
        # Buffers circulate: one being received, one queued, one per writer.
        # Two writers, because storing (page-cache allocation and copy in
        # pwrite, then the digest) is slower than receiving on this VM.
        writers = 2
        full_send, full_receive = trio.open_memory_channel[tuple[int, memoryview, int]](1)
        free_send, free_receive = trio.open_memory_channel[memoryview](writers + 2)
        for _ in range(writers + 2):
            free_send.send_nowait(memoryview(bytearray(size)))

        async def writer(receive) -> None:
            async with receive:
                async for number, buffer, length in receive:
                    if not self.store.has_piece(number):
                        started = time.monotonic()
                        with self._reporting():
                            await trio.to_thread.run_sync(self.store.write_piece, number, buffer[:length])
                            # Reported like any origin piece (its digest anchors it for children),
                            # before it counts as written.
                            await self.fetcher.stored(self, number, True, time.monotonic() - started)
                        self._note_written(number)
                        progress(length)
                    free_send.send_nowait(buffer)

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(writers - 1):
                    nursery.start_soon(writer, full_receive.clone())
                nursery.start_soon(writer, full_receive)
                async with (
                    full_send,
                    self.source.open_stream(self.stat.url, first.offset, headers=self.headers) as body,
                ):
                    for number in range(first.number, self.store.meta.piece_count):
                        span = self.store.span(number)
                        buffer = await free_receive.receive()
                        view = buffer[: span.length]
                        filled = 0
                        while filled < span.length:
                            got = await body.readinto(view[filled:])
                            if got == 0:
                                raise SourceError(
                                    f"GET {self.stat.url}: body ended at byte {span.offset + filled} "
                                    f"of {self.store.meta.content_length}"
                                )
                            filled += got
                        self.source_bytes += span.length
                        metrics.download_bytes.labels("origin").inc(span.length)
                        await full_send.send((number, buffer, span.length))
        except BaseExceptionGroup as group:
            raise primary_error(group) from None
