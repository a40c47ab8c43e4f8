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

Registrations run a few at a time in the background; a task evicted or
deleted meanwhile is skipped. Each costs one AnnouncePeer stream (batching
many tasks in one exchange is not built: issue 13).
"""

from __future__ import annotations

import logging

import trio

from dffs.daemon.schedulers import FORGOT, SchedulerClient
from dffs.errors import DffsError
from dffs.storage import StorageManager

log = logging.getLogger(__name__)

#: Registrations in flight at once.
PARALLEL = 4


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
        work = [(tid, targets) for tid in task_ids if (targets := self._targets(kind, address, tid))]
        todo = iter(work)
        before = self.registered

        async def worker() -> None:
            for task_id, targets in todo:  # shared: each task once, PARALLEL at a time
                await self._register(task_id, targets)

        async with trio.open_nursery() as nursery:
            for _ in range(PARALLEL):
                nursery.start_soon(worker)
        if work:
            log.info(
                "event=finished_tasks_registered scheduler=%s reason=%s tasks=%d registered=%d",
                address,
                kind,
                len(work),
                self.registered - before,
            )

    async def _register(self, task_id: str, targets: list[str]) -> None:
        try:
            summary = await trio.to_thread.run_sync(self.storage.summary, task_id)
            if summary is None or summary.meta.piece_count == 0 or len(summary.pieces) < summary.meta.piece_count:
                return  # gone, empty or incomplete: nothing to offer as a finished peer
            store = await trio.to_thread.run_sync(self.storage.open_task, task_id)
            if store is None or not store.is_complete():
                return
            if await self.schedulers.announce_import(store, to=targets):
                self.registered += 1
        except (DffsError, OSError) as exc:
            log.info("task=%s event=finished_task_register_failed error=%s", task_id, exc)
