"""Single flight: at most one run of a job per key; whoever else wants it waits and shares the outcome.

Used for pieces (however many readers want piece N, one fetch goes out) and
for whole-object digest checks (one hash of a blob however many clients ask).
A failed run wakes its waiters with the same error; a waiter whose goal is
still unmet after a success (the result was undone meanwhile), or after its
runner was cancelled, tries again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)


class Flight:
    """One run in progress; finish it exactly once (the waiters wake then)."""

    __slots__ = ("_done", "_owner", "_key", "error")

    def __init__(self, owner: SingleFlight, key: Hashable):
        self._owner = owner
        self._key = key
        self._done = trio.Event()
        self.error: BaseException | None = None

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        if self._owner._flights.get(self._key) is self:
            del self._owner._flights[self._key]
        self._done.set()

    async def wait(self) -> None:
        await self._done.wait()


class SingleFlight(Generic[K]):
    def __init__(self) -> None:
        self._flights: dict[K, Flight] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._flights

    def __bool__(self) -> bool:
        """Whether any flight is running."""
        return bool(self._flights)

    def begin(self, key: K) -> Flight | None:
        """Claim ``key`` for a run that the caller finishes (maybe in another task); None if one is running."""
        if key in self._flights:
            return None
        flight = self._flights[key] = Flight(self, key)
        return flight

    async def run(self, key: K, job: Callable[[], Awaitable[None]], *, done: Callable[[], bool]) -> None:
        """Until ``done()``: join the running flight for ``key`` (raising its error if the goal is
        still unmet) or run ``job`` as the flight."""
        while not done():
            running = self._flights.get(key)
            if running is not None:
                await running.wait()
                if running.error is not None and not done():
                    raise running.error
                continue
            flight = self.begin(key)
            assert flight is not None
            try:
                await job()
            except BaseException as exc:
                # A cancelled runner's waiters are not cancelled: they wake and one runs the job.
                flight.finish(exc if isinstance(exc, Exception) else None)
                raise
            flight.finish()
