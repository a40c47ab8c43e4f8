"""The finished tasks this host holds, registered again with schedulers that forgot them.

A scheduler keeps its graph in memory. When it restarts (or forgets this host,
or dies and its tasks' lookups move to the next scheduler of their ring), the
complete tasks on this host's disk are invisible to the swarm: another host
opening one would trigger a seed or go to the origin although this host holds
every byte. :class:`FinishedTasks` listens to :meth:`SchedulerClient.forgetful`
and registers each complete task as a finished peer where peers now look for
it:

* ``FORGOT`` from scheduler A: the tasks whose ring starts at A, at A;
* ``LOST`` scheduler A: the tasks whose ring starts at A, at the first
  reachable scheduler after A on their ring (when A comes back it answers
  ``host_known = false``, and they are registered at A again).

Registrations run in the background, many tasks per AnnounceFinishedTasks
call (every piece reported as from the origin, with its digest, as an import
is: docs/security.md); a task evicted or deleted meanwhile is skipped. A host
holding 10,000 small files costs a scheduler restart some 20 calls, not
10,000 streams.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import trio

from dffs.api import scheduler_pb2
from dffs.daemon.schedulers import FORGOT, SchedulerClient
from dffs.errors import DffsError
from dffs.storage import StorageManager

log = logging.getLogger(__name__)

#: Tasks per AnnounceFinishedTasks call (the scheduler takes up to 1,000).
BATCH_TASKS = 500
#: Pieces per call at most (each ~100 bytes on the wire).
BATCH_PIECES = 20_000


class FinishedTasks:
    def __init__(self, storage: StorageManager, schedulers: SchedulerClient):
        self.storage = storage
        self.schedulers = schedulers
        #: Registrations a scheduler took since the start (for logs and tests).
        self.registered = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for kind, address in self.schedulers.forgetful():
                nursery.start_soon(self._register_all, kind, address)

    def _targets(self, kind: str, address: str, task_id: str) -> list[str]:
        """Where ``task_id`` is registered after ``kind`` happened to ``address`` (empty: nowhere)."""
        ring = [a for a, _ in self.schedulers.ring(task_id)]
        if not ring or ring[0] != address:
            return []
        if kind == FORGOT:
            return [address]
        return [a for a in ring[1:] if self.schedulers.reachable(a)][:1]

    async def _register_all(self, kind: str, address: str) -> None:
        task_ids = await trio.to_thread.run_sync(self.storage.task_ids)
        work = [(tid, targets[0]) for tid in task_ids if (targets := self._targets(kind, address, tid))]
        before = self.registered
        if work:
            # Reading what each task holds is disk work: off the event loop, in one hop.
            entries = await trio.to_thread.run_sync(self._entries, work)
            by_target: dict[str, list[scheduler_pb2.FinishedTask]] = {}
            for target, entry in entries:
                by_target.setdefault(target, []).append(entry)
            for target, group in by_target.items():
                for batch in _batches(group):
                    await self._send(target, batch)
            log.info(
                "event=finished_tasks_registered scheduler=%s reason=%s tasks=%d registered=%d",
                address,
                kind,
                len(work),
                self.registered - before,
            )

    def _entries(self, work: list[tuple[str, str]]) -> list[tuple[str, scheduler_pb2.FinishedTask]]:
        """(target, entry) for each complete task of ``work`` (in a worker thread); a task evicted,
        deleted or incomplete meanwhile is skipped."""
        out = []
        for task_id, target in work:
            try:
                summary = self.storage.summary(task_id)
                if summary is None or summary.meta.piece_count == 0 or len(summary.pieces) < summary.meta.piece_count:
                    continue  # gone, empty or incomplete: nothing to offer as a finished peer
                store = self.storage.open_task(task_id)
                if store is None or not store.is_complete():
                    continue
                out.append((target, self.schedulers.held_task_entry(store)))
            except (DffsError, OSError) as exc:
                log.info("task=%s event=finished_task_register_failed error=%s", task_id, exc)
        return out

    async def _send(self, target: str, batch: list[scheduler_pb2.FinishedTask]) -> None:
        try:
            refused = await self.schedulers.announce_finished_tasks(target, batch)
        except grpc.RpcError as exc:
            log.info(
                "event=finished_tasks_register_failed scheduler=%s tasks=%d code=%s", target, len(batch), exc.code()
            )
            return
        self.registered += len(batch) - len(refused)
        for task_id, why in list(refused.items())[:3]:
            log.info("task=%s event=finished_task_refused scheduler=%s reason=%r", task_id[:80], target, why)


def _batches(entries: list[scheduler_pb2.FinishedTask]) -> Iterator[list[scheduler_pb2.FinishedTask]]:
    """Calls of at most BATCH_TASKS tasks and BATCH_PIECES pieces (a message well under gRPC's 4 MiB)."""
    batch: list[scheduler_pb2.FinishedTask] = []
    pieces = 0
    for entry in entries:
        if batch and (len(batch) >= BATCH_TASKS or pieces + len(entry.pieces) > BATCH_PIECES):
            yield batch
            batch, pieces = [], 0
        batch.append(entry)
        pieces += len(entry.pieces)
    if batch:
        yield batch
