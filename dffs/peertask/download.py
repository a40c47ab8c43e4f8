"""A whole download to a file: fetch every piece, verify, export. Shared by
``dffs get`` (embedded) and the daemon's DownloadTask (``dffs get --socket``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from dffs.digest import ExpectedDigest
from dffs.metrics import daemon as metrics
from dffs.peertask.export import PiecesEvicted, export_task
from dffs.peertask.manager import TaskManager
from dffs.peertask.request import DownloadRequest
from dffs.peertask.task import PeerTask

log = logging.getLogger(__name__)

#: Verify-and-export rounds when the GC takes pieces between the two (each round pins them).
EXPORT_ATTEMPTS = 3


@attrs.frozen
class DownloadResult:
    task_id: str
    size: int
    origin_bytes: int
    peer_bytes: int
    export: str

    @property
    def local_bytes(self) -> int:
        return max(0, self.size - self.origin_bytes - self.peer_bytes)

    def summary(self) -> str:
        return (
            f"{self.size} bytes: {self.origin_bytes} from the origin, {self.peer_bytes} from peers, "
            f"{self.local_bytes} from the cache"
        )


async def download_to_file(
    tasks: TaskManager,
    request: DownloadRequest,
    output: Path,
    *,
    expected: ExpectedDigest | None = None,
    concurrency: int = 8,
    on_start: Callable[[PeerTask], None] = lambda task: None,
    on_progress: Callable[[int], None] = lambda n: None,
) -> DownloadResult:
    """Make the task complete and verified, then write it to ``output`` atomically.

    A whole-object digest mismatch deletes the task: the cache keeps no bytes
    a user rejected.
    """
    task = await tasks.open(request)
    fetched_before = task.source_bytes + task.peer_bytes
    on_start(task)
    with task.held():  # between pieces (verification, export) the task looks idle, but is not
        for attempt in range(EXPORT_ATTEMPTS):
            await tasks.verify(task, expected, concurrency=concurrency, on_progress=on_progress)
            try:
                method = await trio.to_thread.run_sync(export_task, task.store, output)
                break
            except PiecesEvicted:
                if attempt + 1 == EXPORT_ATTEMPTS:
                    raise
                log.info("task=%s event=export_retry reason=pieces_evicted", task.task_id)
    result = DownloadResult(task.task_id, task.store.meta.content_length, task.source_bytes, task.peer_bytes, method)
    task.store.touch()
    fetched = task.source_bytes + task.peer_bytes - fetched_before
    metrics.download_bytes.labels("local").inc(max(0, result.size - fetched))
    log.info(
        "task=%s event=download_done bytes=%d origin_bytes=%d peer_bytes=%d export=%s",
        task.task_id,
        result.size,
        result.origin_bytes,
        result.peer_bytes,
        method,
    )
    return result
