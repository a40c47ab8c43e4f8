"""A peer task's background work, owned by the task.

Each PeerTask gets one nursery inside one cancel scope for the work it starts
on its own behalf: the P2P conversation, completing a cold read's piece,
readahead, a whole-object digest check, a proxy's fetch of the rest of a blob.
Forgetting or deleting the task cancels all of it (mountpoint-s3's "drop the
handle and the task is cancelled"), and nothing of it can outlive the task
manager, whose nursery holds every task's.

A background job that fails is logged and ends alone: one task's bad input or
bug never takes the daemon (or the task's other jobs) down.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from dffs.errors import DffsError

log = logging.getLogger(__name__)


class Background:
    def __init__(self, name: str, nursery: trio.Nursery, scope: trio.CancelScope):
        self.name = name
        self._nursery = nursery
        self._scope = scope

    @classmethod
    async def open(cls, owner: trio.Nursery, name: str) -> Background:
        """A new task's background, hosted in ``owner`` (the task manager's nursery)."""
        return await owner.start(_host, name)

    @property
    def cancelled(self) -> bool:
        return self._scope.cancel_called

    def cancel(self) -> None:
        """End every job of this task (they see Cancelled at their next checkpoint)."""
        self._scope.cancel()

    def start_soon(self, job: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``job(*args)`` in the background; a failure is logged, never raised."""
        if self._scope.cancel_called:
            return  # the task is gone: nothing more is started for it
        self._nursery.start_soon(self._guarded, job, args, name=f"{self.name}:{getattr(job, '__name__', job)}")

    async def start(self, job: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``nursery.start`` in the background: returns what the job reports as started.
        A failure before that is raised to the caller; after it, logged."""
        return await self._nursery.start(self._guarded_start, job, args)

    async def _guarded(self, job: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            await job(*args)
        except DffsError as exc:
            log.warning("task=%s event=background_job_failed job=%s error=%s", self.name, _name(job), exc)
        except Exception:
            log.exception("task=%s event=background_job_crashed job=%s", self.name, _name(job))

    async def _guarded_start(
        self, job: Callable[..., Awaitable[Any]], args: tuple[Any, ...], *, task_status: Any
    ) -> None:
        started = False

        class _Status:
            @staticmethod
            def started(value: Any = None) -> None:
                nonlocal started
                started = True
                task_status.started(value)

        try:
            await job(*args, task_status=_Status)
        except Exception as exc:
            if not started:
                raise
            if isinstance(exc, DffsError):
                log.warning("task=%s event=background_job_failed job=%s error=%s", self.name, _name(job), exc)
            else:
                log.exception("task=%s event=background_job_crashed job=%s", self.name, _name(job))


def _name(job: Callable[..., Any]) -> str:
    return getattr(job, "__qualname__", None) or repr(job)


async def _host(name: str, *, task_status: Any) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            task_status.started(Background(name, nursery, scope))
            await trio.sleep_forever()
