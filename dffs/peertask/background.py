"""A peer task's background work, owned by the task.

The work a PeerTask starts on its own behalf — the P2P conversation, completing
a cold read's piece, readahead, a whole-object digest check, a proxy's fetch of
the rest of a blob — runs in the task manager's nursery, each job in a cancel
scope the task's Background keeps. Forgetting or deleting the task cancels all
of it (mountpoint-s3's "drop the handle and the task is cancelled"), and nothing
of it can outlive the task manager, whose nursery holds every task's jobs.

A background job that fails is logged and ends alone: one task's bad input or
bug never takes the daemon (or the task's other jobs) down.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from dffs.errors import DffsError

log = logging.getLogger(__name__)


class Background:
    """The jobs one task started, run in the task manager's nursery, each in a cancel scope of its
    own that :meth:`cancel` cancels. No task or nursery of its own: opening one costs nothing, which
    matters when a dataset opens thousands of tasks whose only job is completing one cold piece."""

    __slots__ = ("name", "_owner", "_scopes", "_cancelled")

    def __init__(self, name: str, owner: trio.Nursery):
        self.name = name
        self._owner = owner
        self._scopes: set[trio.CancelScope] = set()
        self._cancelled = False

    @classmethod
    async def open(cls, owner: trio.Nursery, name: str) -> Background:
        """A new task's background, hosted in ``owner`` (the task manager's nursery)."""
        return cls(name, owner)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """End every job of this task (they see Cancelled at their next checkpoint)."""
        self._cancelled = True
        for scope in self._scopes:
            scope.cancel()

    def start_soon(self, job: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``job(*args)`` in the background; a failure is logged, never raised."""
        if self._cancelled:
            return  # the task is gone: nothing more is started for it
        self._owner.start_soon(self._guarded, job, args, name=f"{self.name}:{getattr(job, '__name__', job)}")

    async def start(self, job: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``nursery.start`` in the background: returns what the job reports as started.
        A failure before that is raised to the caller; after it, logged."""
        return await self._owner.start(self._guarded_start, job, args)

    @contextmanager
    def _scope(self) -> Iterator[trio.CancelScope]:
        with trio.CancelScope() as scope:
            if self._cancelled:  # cancelled between start_soon and the job's first step
                scope.cancel()
            self._scopes.add(scope)
            try:
                yield scope
            finally:
                self._scopes.discard(scope)

    async def _guarded(self, job: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        if self._cancelled:
            return
        with self._scope():
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

        with self._scope():
            try:
                await job(*args, task_status=_Status)
            except Exception as exc:
                if not started:
                    raise
                if isinstance(exc, DffsError):
                    log.warning("task=%s event=background_job_failed job=%s error=%s", self.name, _name(job), exc)
                else:
                    log.exception("task=%s event=background_job_crashed job=%s", self.name, _name(job))
        if not started and self._cancelled:
            raise DffsError(f"task {self.name}: closed before its job had started")


def _name(job: Callable[..., Any]) -> str:
    return getattr(job, "__qualname__", None) or repr(job)
