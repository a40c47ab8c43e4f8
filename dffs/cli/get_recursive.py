"""``dffs get --recursive URL/ -O DIR``: a whole dataset into a directory, as one unit.

The tree comes from the source's listings (an autoindex directory, an S3
prefix: :func:`dffs.source.tree.walk`) or from a manifest (``--manifest
FILE``); each file is then downloaded exactly as a single ``dffs get`` would
(through the daemon behind ``--socket`` when one answers, else an embedded
peer or an embedded task manager), several files at once, with one progress
bar over files and bytes. A file that fails does not stop the others; the
command then fails naming how many did and the first reason.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from dffs.cli.embedded import embedded_peer
from dffs.config import GetConfig
from dffs.digest import ExpectedDigest
from dffs.errors import DffsError, SourceError, UsageError, primary_error
from dffs.fs.manifest import load_manifest
from dffs.peertask import DownloadRequest, TaskManager
from dffs.peertask.download import download_to_file
from dffs.source import SourceRegistry
from dffs.source.tree import TreeFile, is_tree_url, walk
from dffs.storage import StorageManager

log = logging.getLogger(__name__)

#: Files downloaded at once by default: enough to hide per-file round trips, few enough for a 2-core host.
FILES_AT_ONCE = 8


@attrs.frozen
class FileDone:
    size: int
    origin_bytes: int = 0
    peer_bytes: int = 0


@attrs.define
class Totals:
    """What a recursive download did, for its summary line."""

    files: int = 0
    bytes: int = 0
    origin_bytes: int = 0
    peer_bytes: int = 0
    failed: list[tuple[str, str]] = attrs.Factory(list)

    def add(self, done: FileDone) -> None:
        self.files += 1
        self.bytes += done.size
        self.origin_bytes += done.origin_bytes
        self.peer_bytes += done.peer_bytes

    def summary(self) -> str:
        return (
            f"{self.files} files, {self.bytes} bytes: {self.origin_bytes} from the origin, {self.peer_bytes} from peers"
        )


class Downloader(Protocol):
    async def download(
        self,
        request: DownloadRequest,
        output: Path,
        expected: ExpectedDigest | None,
        on_progress: Callable[[int], None],
    ) -> FileDone: ...


def local_path(out_dir: Path, parts: tuple[str, ...]) -> Path:
    """Where a tree file goes: below ``out_dir`` and nowhere else (parts were checked by the walk or manifest)."""
    path = out_dir.joinpath(*parts)
    if os.path.commonpath([out_dir, path]) != str(out_dir) or path == out_dir:
        raise SourceError(f"{'/'.join(parts)}: not a path below {out_dir}")
    return path


async def list_files(
    sources: SourceRegistry, url: str | None, manifest: Path | None, headers: Mapping[str, str]
) -> list[tuple[TreeFile, str | None]]:
    """Every file of the dataset with its manifest digest (None from listings)."""
    if manifest is not None:
        entries = await trio.to_thread.run_sync(load_manifest, manifest)
        for entry in entries:
            sources.validate(entry.url)
        return [(TreeFile(e.parts, e.url, e.size, e.mtime), e.digest) for e in entries]
    assert url is not None
    if not is_tree_url(url):
        raise UsageError(f"--recursive needs a directory URL ending with '/' (or --manifest FILE), not {url}")
    source = sources.for_url(url)
    return [(f, None) async for f in walk(source, url, headers=headers)]


async def run_recursive(
    cfg: GetConfig,
    sources: SourceRegistry,
    *,
    url: str | None,
    manifest: Path | None,
    out_dir: Path,
    headers: Mapping[str, str],
    tag: str,
    application: str,
    show_progress: bool,
    files_at_once: int = FILES_AT_ONCE,
) -> Totals:
    try:
        with trio.fail_after(cfg.timeout or math.inf):
            files = await list_files(sources, url, manifest, headers)
            log.info("event=tree_listed url=%s files=%d", url or manifest, len(files))
            total = sum(f.size or 0 for f, _ in files)
            with _progress(len(files), total, show_progress) as bar:
                async with _downloader(cfg, sources) as downloader:
                    return await _download_all(
                        downloader, files, out_dir, headers, tag, application, files_at_once, bar
                    )
    except trio.TooSlowError:
        raise SourceError(f"{url or manifest}: recursive download did not finish within {cfg.timeout:g}s") from None
    finally:
        with trio.CancelScope(shield=True):
            await sources.aclose()


async def _download_all(
    downloader: Downloader,
    files: list[tuple[TreeFile, str | None]],
    out_dir: Path,
    headers: Mapping[str, str],
    tag: str,
    application: str,
    files_at_once: int,
    bar: Any,
) -> Totals:
    totals = Totals()
    limit = trio.CapacityLimiter(files_at_once)

    async def one(tree_file: TreeFile, digest: str | None) -> None:
        async with limit:
            try:
                output = local_path(out_dir, tree_file.parts)
                await trio.to_thread.run_sync(lambda: output.parent.mkdir(parents=True, exist_ok=True))
                request = DownloadRequest(url=tree_file.url, headers=dict(headers), tag=tag, application=application)
                expected = ExpectedDigest.parse(digest) if digest else None
                moved = 0

                def progress(n: int) -> None:
                    nonlocal moved
                    moved += n
                    bar.update(n)

                done = await downloader.download(request, output, expected, progress)
                bar.update(done.size - moved)
                totals.add(done)
            except (DffsError, OSError) as exc:
                message = str(exc) if isinstance(exc, DffsError) else f"{exc.strerror or exc}"
                log.info("event=tree_file_failed path=%s url=%s error=%s", tree_file.path, tree_file.url, message)
                totals.failed.append((tree_file.path, message))
            bar.file_done()

    async with trio.open_nursery() as nursery:
        for tree_file, digest in files:
            nursery.start_soon(one, tree_file, digest)
    return totals


# ---- how each file is downloaded: the same three ways as a single `dffs get` ----------------------------


@contextlib.asynccontextmanager
async def _downloader(cfg: GetConfig, sources: SourceRegistry) -> AsyncIterator[Downloader]:
    socket_path = cfg.socket or cfg.data_dir / "dffs.sock"
    if socket_path.exists():
        async with _DaemonDownloader.open(socket_path, cfg.timeout) as via_daemon:
            if via_daemon is not None:
                yield via_daemon
                return
    if cfg.scheduler or cfg.manager:
        async with _embedded_peer(cfg) as tasks:
            yield _TaskDownloader(tasks, cfg.concurrency)
        return
    storage = StorageManager(cfg.data_dir)
    try:
        async with TaskManager(storage, sources) as tasks:
            yield _TaskDownloader(tasks, cfg.concurrency)
    finally:
        storage.close()


class _TaskDownloader:
    def __init__(self, tasks: TaskManager, concurrency: int):
        self.tasks = tasks
        self.concurrency = concurrency

    async def download(
        self,
        request: DownloadRequest,
        output: Path,
        expected: ExpectedDigest | None,
        on_progress: Callable[[int], None],
    ) -> FileDone:
        result = await download_to_file(
            self.tasks, request, output, expected=expected, concurrency=self.concurrency, on_progress=on_progress
        )
        return FileDone(result.size, result.origin_bytes, result.peer_bytes)


@contextlib.asynccontextmanager
async def _embedded_peer(cfg: GetConfig) -> AsyncIterator[TaskManager]:
    """The embedded peer of a single ``dffs get``, for the whole tree."""
    daemon = embedded_peer(cfg)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            yield daemon.tasks
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise primary_error(group) from None


class _DaemonDownloader:
    """Every file handed to the daemon behind the socket, one DownloadTask call each."""

    def __init__(self, stub: Any, timeout: float):
        self.stub = stub
        self.timeout = timeout

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, socket_path: Path, timeout: float) -> AsyncIterator[_DaemonDownloader | None]:
        import grpc

        from dffs.api import dfdaemon_pb2_grpc
        from dffs.rpc import bridge

        channel = bridge.insecure_channel(f"unix:{socket_path}")
        try:
            try:
                await trio.to_thread.run_sync(lambda: grpc.channel_ready_future(channel).result(timeout=1))
            except grpc.FutureTimeoutError:
                log.info("event=daemon_unavailable socket=%s action=embedded", socket_path)
                yield None
                return
            yield cls(dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel), timeout)
        finally:
            channel.close()

    async def download(
        self,
        request: DownloadRequest,
        output: Path,
        expected: ExpectedDigest | None,
        on_progress: Callable[[int], None],
    ) -> FileDone:
        import grpc

        from dffs.api import common_pb2, dfdaemon_pb2
        from dffs.rpc import bridge

        download = common_pb2.Download(
            url=request.url,
            tag=request.tag,
            application=request.application,
            request_header=dict(request.headers),
            output_path=str(output),
        )
        if expected is not None:
            download.digest = str(expected)
        if self.timeout:
            download.timeout.FromNanoseconds(int(self.timeout * 1e9))
        done = FileDone(0)
        try:
            async with bridge.open_unary_stream(
                self.stub.DownloadTask, dfdaemon_pb2.DownloadTaskRequest(download=download)
            ) as stream:
                async for response in stream:
                    if response.WhichOneof("response") == "download_task_started_response":
                        started = response.download_task_started_response
                        headers = started.response_header
                        done = FileDone(
                            started.content_length,
                            _int(headers.get("x-dffs-origin-bytes")),
                            _int(headers.get("x-dffs-peer-bytes")),
                        )
        except grpc.RpcError as exc:
            raise DffsError(f"{request.url}: {exc.details() or exc.code()}") from None
        return done


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


# ---- the progress bar: files and bytes ---------------------------------------------------------------


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def file_done(self) -> None:
        pass


class _Progress:
    """One tqdm bar of bytes whose label counts files."""

    def __init__(self, files: int, total: int):
        from tqdm import tqdm

        self.files, self.done = files, 0
        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False)
        self.bar.set_description(self._label())

    def _label(self) -> str:
        return f"{self.done}/{self.files} files"

    def update(self, n: int) -> None:
        if n:
            self.bar.update(n)

    def file_done(self) -> None:
        self.done += 1
        self.bar.set_description(self._label(), refresh=False)


@contextlib.contextmanager
def _progress(files: int, total: int, enabled: bool):
    if not enabled:
        yield _NoProgress()
        return
    progress = _Progress(files, total)
    try:
        yield progress
    finally:
        progress.bar.close()


__all__ = ["FILES_AT_ONCE", "FileDone", "Totals", "list_files", "local_path", "run_recursive"]
