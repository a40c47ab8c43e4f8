"""What the task layer asks of the world beyond the origin: where pieces come from, and who knows a task.

A :class:`PeerTask` fetches every piece through its :class:`PieceFetcher`,
chosen when the task is opened: :class:`OriginFetcher` (straight from the
origin) unless the task manager was built with a swarm. The daemon's swarm
(:mod:`dffs.daemon.p2p`) hands out a P2P fetcher per task (parents first, the
origin when the scheduler says so) and answers for metadata when the origin
cannot (:meth:`Swarm.stat`). Nothing here knows about gRPC or schedulers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from dffs.peertask.request import DownloadRequest
from dffs.source.base import SourceStat

if TYPE_CHECKING:
    from dffs.peertask.task import PeerTask


class PieceFetcher(Protocol):
    """Where a PeerTask's pieces come from."""

    #: True when every piece comes straight from the origin: then a cold small read may ask
    #: the origin for just its bytes first (PeerTask.read_cold). A P2P fetcher says False:
    #: whole pieces come from parents, verifiable against their digests.
    from_origin_only: bool
    #: False when :meth:`run` has nothing to do but report started: the task then starts no
    #: background job for it (a job costs a trio task and a nursery start per task opened).
    runs_in_background: bool

    async def run(self, task: PeerTask, *, task_status: Any) -> None:
        """The fetcher's own work for the task's life (a P2P conversation), in the task's background;
        report started once pieces may be asked for."""

    async def fetch(self, task: PeerTask, number: int, buffer: memoryview) -> tuple[bool, bytes | None]:
        """Fill ``buffer`` with piece ``number``; returns (came from the origin?, verified digest or None)."""

    async def stored(self, task: PeerTask, number: int, origin: bool, seconds: float) -> None:
        """Piece ``number`` is now on disk (report it to the scheduler)."""

    def choose(self, candidates: list[int]) -> int:
        """Which of the missing pieces (not empty, ascending) a background worker fetches next."""


class OriginFetcher:
    """Every piece from the origin, in order."""

    from_origin_only = True
    runs_in_background = False

    async def run(self, task: PeerTask, *, task_status: Any) -> None:
        task_status.started()

    async def fetch(self, task: PeerTask, number: int, buffer: memoryview) -> tuple[bool, bytes | None]:
        await task.fetch_from_origin(number, buffer)
        return True, None

    async def stored(self, task: PeerTask, number: int, origin: bool, seconds: float) -> None:
        pass

    def choose(self, candidates: list[int]) -> int:
        return candidates[0]


class Swarm(Protocol):
    """The peers beyond this process, as the task layer sees them."""

    def fetcher(self, request: DownloadRequest) -> PieceFetcher:
        """The fetcher for a task being opened (not complete here)."""

    async def stat(self, request: DownloadRequest) -> SourceStat | None:
        """What the swarm knows of the object (size, the origin's validators as the peer that fetched
        it reported them) when some member holds it; None: nothing."""

    async def stat_many(self, requests: list[DownloadRequest]) -> dict[str, SourceStat]:
        """:meth:`stat` for many objects at once (a directory's files), by task ID; unknown ones left out."""


class NoSwarm:
    """A process alone with the origin (``dffs get`` without a daemon, a lone ``dffs mount``)."""

    def fetcher(self, request: DownloadRequest) -> PieceFetcher:
        return OriginFetcher()

    async def stat(self, request: DownloadRequest) -> SourceStat | None:
        return None

    async def stat_many(self, requests: list[DownloadRequest]) -> dict[str, SourceStat]:
        return {}
