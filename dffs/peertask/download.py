"""A whole download to a file: fetch every piece, verify, export. Shared by
``dffs get`` (embedded) and the daemon's DownloadTask (``dffs get --socket``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from dffs.digest import ExpectedDigest
from dffs.errors import DigestMismatch, StorageError
from dffs.metrics import daemon as metrics
from dffs.peertask.export import export_task, verify_task
from dffs.peertask.manager import DownloadRequest, TaskManager
from dffs.peertask.task import PeerTask

log = logging.getLogger(__name__)


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
    await task.fetch_all(concurrency=concurrency, on_progress=on_progress)
    for _ in range(3):
        try:
            dropped = await trio.to_thread.run_sync(verify_task, task.store, expected)
        except DigestMismatch:
            await tasks.delete(task.task_id)
            raise
        if not dropped:
            break
        log.warning("task=%s event=refetch_corrupt_pieces pieces=%s", task.task_id, dropped)
        on_progress(-sum(task.store.span(n).length for n in dropped))
        await task.fetch_all(concurrency=concurrency, on_progress=on_progress)
    else:
        raise StorageError(f"task {task.task_id}: pieces keep failing verification")
    method = await trio.to_thread.run_sync(export_task, task.store, output)
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
