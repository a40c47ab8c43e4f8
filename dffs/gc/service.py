"""The daemon's GC loop: measure, plan (:mod:`dffs.gc.policy`), evict, report.

It runs in three ways, all through one lock:

* every ``interval`` seconds in the daemon's nursery (TTL, and quota);
* on demand (``dffs ctl gc``);
* inline, in the thread about to write a new piece (:meth:`make_room`, the
  storage's ``reserve`` hook), when the bytes written since the last measure
  would take the disk past the high watermark. This is what keeps usage under
  the high watermark however fast pieces arrive: a periodic pass alone would
  let a fast download overshoot between passes.

Evicted pieces and tasks are handed to ``report`` (the daemon tells the
scheduler, so no child is sent to this host for them) from the trio loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable

import attrs
import trio

from dffs.errors import StorageError
from dffs.gc.policy import GcLimits, PieceState, Plan, TaskState, plan, plan_reclaim
from dffs.metrics import daemon as metrics
from dffs.storage import StorageManager

log = logging.getLogger(__name__)

#: On ENOSPC, the GC frees this many times the piece being written (room for the next one too,
#: without evicting much that is hot: a busy disk may hit this again).
RECLAIM_PIECES = 2


@attrs.frozen
class GcResult:
    evicted_tasks: tuple[str, ...] = ()
    #: (task id, piece numbers) actually evicted.
    evicted_pieces: tuple[tuple[str, tuple[int, ...]], ...] = ()
    freed: int = 0
    used: int = 0

    @property
    def piece_count(self) -> int:
        return sum(len(n) for _, n in self.evicted_pieces)


Report = Callable[[GcResult], Awaitable[None]]


class GcService:
    def __init__(
        self,
        storage: StorageManager,
        limits: GcLimits,
        *,
        interval: float = 60.0,
        is_active: Callable[[str], bool] = lambda tid: False,
        is_busy: Callable[[str], bool] = lambda tid: False,
        report: Report | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.storage = storage
        self.limits = limits
        self.interval = interval
        self.is_active = is_active
        self.is_busy = is_busy
        self.report = report
        self.clock = clock
        self._lock = threading.Lock()
        #: Disk usage as of the last measure plus every piece reserved since.
        self._estimate = 0
        #: Bytes reserved by writes not finished yet (not on disk, but promised).
        self._inflight = 0
        self._held: dict[str, int] = {}
        self._pending: list[GcResult] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._wake = trio.Event()
        metrics.quota_bytes.set(limits.quota)

    # ---------------------------------------------------------------- holds
    def hold(self, task_id: str) -> None:
        """Nothing of this task goes until :meth:`release` (an import writing it)."""
        with self._lock:
            self._held[task_id] = self._held.get(task_id, 0) + 1

    def release(self, task_id: str) -> None:
        with self._lock:
            left = self._held.get(task_id, 0) - 1
            if left > 0:
                self._held[task_id] = left
            else:
                self._held.pop(task_id, None)

    # ------------------------------------------------------------ the pass
    def _states(self) -> list[TaskState]:
        """Every task's state. Tasks this process has open come from memory; the others from a
        cheap read of their files (metadata, journal, access time) without opening them — a pass
        must not open every task on disk (two descriptors each, kept)."""
        states = []
        for task_id in self.storage.task_ids():
            store = self.storage.opened(task_id)
            if store is not None:
                pieces = tuple(
                    PieceState(n, store.span(n).length, store.piece_access(n)) for n in store.present_pieces()
                )
                last_access, disk_bytes, pinned = store.last_access, store.disk_bytes(), store.pinned_pieces()
            else:
                summary = self.storage.summary(task_id)
                if summary is None:
                    continue
                last_access, disk_bytes, pinned = summary.last_access, summary.disk_bytes, frozenset()
                pieces = tuple(PieceState(n, length, last_access) for n, length in summary.pieces)
            states.append(
                TaskState(
                    task_id=task_id,
                    last_access=last_access,
                    pieces=pieces,
                    disk_bytes=disk_bytes,
                    pinned=pinned,
                    active=self.is_active(task_id),
                    busy=task_id in self._held or self.is_busy(task_id),
                )
            )
        return states

    def _apply(self, decided: Plan) -> GcResult:
        tasks, pieces, freed = [], [], 0
        for task_id, reason in decided.delete_tasks:
            store = self.storage.opened(task_id)
            # Re-check: a reader may have pinned a piece since the plan.
            if (store is not None and store.pinned_pieces()) or self.is_active(task_id):
                continue
            summary = self.storage.summary(task_id)
            size = summary.disk_bytes if summary is not None else 0
            self.storage.delete_task(task_id)
            tasks.append(task_id)
            freed += size
            metrics.gc_evicted_tasks.labels(reason).inc()
            log.info("task=%s event=gc_evict_task reason=%s bytes=%d", task_id, reason, size)
        for task_id, numbers in decided.evict_pieces:
            try:
                store = self.storage.open_task(task_id)  # only the tasks that lose pieces are opened
            except StorageError as exc:
                log.warning("task=%s event=gc_evict_skipped error=%s", task_id, exc)
                continue
            if store is None:
                continue
            done = []
            for number in numbers:
                length = store.evict_piece(number)
                if length:
                    done.append(number)
                    freed += length
            if done:
                pieces.append((task_id, tuple(done)))
                metrics.gc_evicted_pieces.inc(len(done))
                log.info("task=%s event=gc_evict_pieces pieces=%d", task_id, len(done))
        metrics.gc_evicted_bytes.inc(freed)
        return GcResult(tuple(tasks), tuple(pieces), freed)

    def _collect_locked(self, incoming: int) -> GcResult:
        # Writes in flight count as used: their bytes land after this measure.
        used = self.storage.disk_usage() + self._inflight
        states = self._states()
        metrics.tasks.set(len(states))
        decided = plan(states, used=used, limits=self.limits, now=self.clock(), incoming=incoming)
        result = self._apply(decided) if decided else GcResult()
        after = self.storage.disk_usage()
        self._estimate = after + self._inflight + incoming
        metrics.gc_runs.inc()
        metrics.disk_used_bytes.set(after)
        result = attrs.evolve(result, used=after)
        self._note(result)
        if self.limits.quota and after + incoming > self.limits.high_bytes:
            log.warning(
                "event=gc_over_high_watermark used=%d incoming=%d high=%d (pinned or busy pieces)",
                after,
                incoming,
                self.limits.high_bytes,
            )
        return result

    def collect(self) -> GcResult:
        """One full pass (blocking: call from a worker thread)."""
        with self._lock:
            return self._collect_locked(0)

    def make_room(self, length: int):
        """The storage's ``reserve`` hook: called before ``length`` new bytes are written;
        returns the release the storage calls once they are."""
        if not self.limits.quota:
            return None
        with self._lock:
            if self._estimate + length <= self.limits.high_bytes:
                self._estimate += length
            else:
                self._collect_locked(length)
            self._inflight += length

        def written() -> None:
            with self._lock:
                self._inflight -= length

        return written

    def reclaim(self, length: int) -> int:
        """The storage's ``reclaim`` hook: writing a ``length``-byte piece hit ENOSPC although the
        quota may not be reached (something else filled the filesystem). With a quota — the user's
        word that the cache may be evicted — cold pieces go, a few pieces' worth
        (:data:`RECLAIM_PIECES`), and the write is retried once; returns the bytes freed."""
        if not self.limits.quota:
            return 0
        with self._lock:
            decided = plan_reclaim(self._states(), need=RECLAIM_PIECES * length)
            result = self._apply(decided) if decided else GcResult()
            self._estimate = self.storage.disk_usage() + self._inflight
            self._note(result)
        log.warning("event=gc_reclaim reason=disk_full need=%d freed=%d", RECLAIM_PIECES * length, result.freed)
        return result.freed

    def _note(self, result: GcResult) -> None:
        """Queue evictions for the report, and wake the loop that sends it (called under the lock)."""
        if result.evicted_tasks or result.evicted_pieces:
            self._pending.append(result)
            if self._token is not None:
                try:
                    self._token.run_sync_soon(lambda: self._wake.set())
                except trio.RunFinishedError:
                    pass

    # --------------------------------------------------------------- trio
    async def run_once(self) -> GcResult:
        result = await trio.to_thread.run_sync(self.collect)
        await self._flush()
        return result

    async def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if self.report is None:
            return
        for result in pending:
            try:
                await self.report(result)
            except Exception:  # reporting is best effort; the scheduler's TTLs catch up
                log.exception("event=gc_report_failed")

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled: a pass now, then every interval, reporting evictions as they happen."""
        self._token = trio.lowlevel.current_trio_token()
        self.storage.reserve = self.make_room
        self.storage.reclaim = self.reclaim
        self.storage.hooks_may_block = lambda: bool(self.limits.quota)  # without a quota both return at once
        try:
            await self.run_once()
            task_status.started()
            while True:
                with trio.move_on_after(self.interval) as timer:
                    await self._wake.wait()
                self._wake = trio.Event()
                if timer.cancelled_caught:
                    await self.run_once()
                else:
                    await self._flush()
        finally:
            self.storage.reserve = None
            self.storage.reclaim = None
            self.storage.hooks_may_block = None
            self._token = None
