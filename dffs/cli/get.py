"""``dffs get URL -O PATH``: download through dffs into a file.

With no daemon answering on ``--socket`` this runs an embedded one for the
single download: the same storage, task manager and sources a daemon uses,
so a second ``dffs get`` with the same data dir is served from local pieces.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import sys
import time
from pathlib import Path

import trio

from dffs import config as config_module
from dffs.cli.embedded import embedded_peer
from dffs.config import GetConfig
from dffs.digest import ExpectedDigest
from dffs.errors import DffsError, SourceError, StorageError, UsageError, primary_error
from dffs.peertask import DownloadRequest, TaskManager
from dffs.peertask.download import download_to_file
from dffs.peertask.export import check_output_path
from dffs.source import HttpOptions, SourceRegistry
from dffs.storage import StorageManager

log = logging.getLogger(__name__)


def parse_headers(values: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition(":")
        name = name.strip()
        if not sep or not name or any(c in name for c in " \t\r\n") or any(c in text for c in "\r\n"):
            raise UsageError(f"bad --header {value!r}: expected 'Name: value'")
        headers[name] = text.strip()
    return headers


def _config(args: argparse.Namespace) -> GetConfig:
    file_values = config_module.load_toml(args.config) if args.config else {}
    return config_module.build(
        GetConfig,
        file_values,
        {
            "data_dir": args.data_dir,
            "concurrency": args.concurrency,
            "timeout": args.timeout,
            "socket": args.socket,
            "scheduler": args.scheduler,
            "manager": args.manager,
            "cluster_key": args.cluster_key,
            "insecure": args.insecure,
        },
    )


def run_get(args: argparse.Namespace) -> int:
    cfg = _config(args)
    sources = SourceRegistry(
        http_options=HttpOptions(
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            attempts=cfg.attempts,
            ca_file=cfg.ca_file,
        )
    )
    headers = parse_headers(args.header)
    if cfg.timeout < 0 or math.isnan(cfg.timeout):
        raise UsageError("--timeout must be a positive number of seconds")
    if args.recursive or args.manifest:
        return _run_recursive(args, cfg, sources, headers)
    if not args.url:
        raise UsageError("dffs get: a URL is required")
    sources.validate(args.url)
    expected = ExpectedDigest.parse(args.digest) if args.digest else None
    output = Path(args.output).absolute()
    try:
        check_output_path(output)
    except StorageError as exc:
        raise UsageError(str(exc)) from None
    request = DownloadRequest(url=args.url, headers=headers, tag=args.tag, application=args.application)
    show_progress = not args.quiet and sys.stderr.isatty()
    started = time.monotonic()
    socket_path = cfg.socket or cfg.data_dir / "dffs.sock"
    summary = None
    if socket_path.exists():
        summary = trio.run(_download_via_daemon, socket_path, request, expected, output, cfg.timeout)
    if summary is None and (cfg.scheduler or cfg.manager):
        summary = trio.run(_download_embedded_peer, cfg, request, expected, output)
    if summary is None:
        summary = trio.run(_download, cfg, sources, request, expected, output, show_progress)
    if show_progress:
        elapsed = time.monotonic() - started
        print(f"{output}: {summary}, {elapsed:.1f}s", file=sys.stderr)
    return 0


def _run_recursive(args: argparse.Namespace, cfg: GetConfig, sources: SourceRegistry, headers: dict[str, str]) -> int:
    from dffs.cli.get_recursive import run_recursive

    if not args.recursive:
        raise UsageError("--manifest is for --recursive downloads")
    if args.digest:
        raise UsageError("--digest names one file; with --recursive give digests in a --manifest")
    if bool(args.url) == bool(args.manifest):
        raise UsageError("--recursive needs either a directory URL or --manifest FILE")
    if args.url:
        sources.validate(args.url)
    out_dir = Path(args.output).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"cannot write into {out_dir}: it is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out_dir}: {exc.strerror}") from None
    show_progress = not args.quiet and sys.stderr.isatty()
    started = time.monotonic()
    totals = trio.run(
        functools.partial(
            run_recursive,
            cfg,
            sources,
            url=args.url,
            manifest=Path(args.manifest) if args.manifest else None,
            out_dir=out_dir,
            headers=headers,
            tag=args.tag,
            application=args.application,
            show_progress=show_progress,
        )
    )
    if show_progress:
        print(f"{out_dir}: {totals.summary()}, {time.monotonic() - started:.1f}s", file=sys.stderr)
    if totals.failed:
        path, reason = totals.failed[0]
        raise DffsError(
            f"{len(totals.failed)} of {len(totals.failed) + totals.files} files failed; first: {path}: {reason}"
        )
    return 0


async def _download(
    cfg: GetConfig,
    sources: SourceRegistry,
    request: DownloadRequest,
    expected: ExpectedDigest | None,
    output: Path,
    show_progress: bool,
) -> str:
    storage = StorageManager(cfg.data_dir)
    try:
        bar = _NoProgress()
        async with TaskManager(storage, sources) as tasks:
            with trio.fail_after(cfg.timeout or math.inf), contextlib.ExitStack() as stack:

                def started(task) -> None:
                    nonlocal bar
                    bar = stack.enter_context(_progress(task.store.meta.content_length, show_progress))

                result = await download_to_file(
                    tasks,
                    request,
                    output,
                    expected=expected,
                    concurrency=cfg.concurrency,
                    on_start=started,
                    on_progress=lambda n: bar.update(n),
                )
        return result.summary()
    except trio.TooSlowError:
        raise SourceError(f"{request.url}: download did not finish within {cfg.timeout:g}s") from None
    except OSError as exc:
        raise DffsError(f"{request.url}: {exc.strerror or exc}") from None
    finally:
        storage.close()
        with trio.CancelScope(shield=True):
            await sources.aclose()


async def _download_embedded_peer(cfg, request, expected, output) -> str:
    """No daemon here but a scheduler (or a manager) given: join the swarm for this one download."""
    daemon = embedded_peer(cfg)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            with trio.fail_after(cfg.timeout or math.inf):
                result = await download_to_file(
                    daemon.tasks, request, output, expected=expected, concurrency=cfg.concurrency
                )
            nursery.cancel_scope.cancel()
    except trio.TooSlowError:
        raise SourceError(f"{request.url}: download did not finish within {cfg.timeout:g}s") from None
    except BaseExceptionGroup as group:
        raise primary_error(group) from None
    return result.summary()


#: Seconds a daemon that accepts connections on its socket may take to answer (a loaded host).
DAEMON_READY_TIMEOUT = 30.0


def _listening(socket_path: Path) -> bool:
    """Whether something accepts connections on the Unix socket (a stale socket file refuses)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        try:
            probe.connect(str(socket_path))
        except OSError:
            return False
    return True


async def _download_via_daemon(socket_path, request, expected, output, timeout) -> str | None:
    """Hand the download to the daemon behind ``socket_path``; None if none answers there."""
    import grpc

    from dffs.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
    from dffs.rpc import bridge

    if not _listening(socket_path):
        log.info("event=daemon_unavailable socket=%s action=embedded", socket_path)
        return None
    channel = bridge.insecure_channel(f"unix:{socket_path}")
    try:
        try:
            # A daemon listens there: wait for it even when it is slow to answer (a busy host). Going
            # around it would download from this process's network, which may not be the daemon's.
            await trio.to_thread.run_sync(
                lambda: grpc.channel_ready_future(channel).result(timeout=DAEMON_READY_TIMEOUT)
            )
        except grpc.FutureTimeoutError:
            raise DffsError(
                f"the daemon at {socket_path} accepts connections but did not answer within {DAEMON_READY_TIMEOUT:g}s"
            ) from None
        download = common_pb2.Download(
            url=request.url,
            tag=request.tag,
            application=request.application,
            request_header=dict(request.headers),
            output_path=str(output),
        )
        if expected is not None:
            download.digest = str(expected)
        if timeout:
            download.timeout.FromNanoseconds(int(timeout * 1e9))
        stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)
        summary = "done by the daemon"
        try:
            async with bridge.open_unary_stream(
                stub.DownloadTask, dfdaemon_pb2.DownloadTaskRequest(download=download)
            ) as stream:
                async for response in stream:
                    if response.WhichOneof("response") == "download_task_started_response":
                        started = response.download_task_started_response
                        headers = started.response_header
                        summary = (
                            f"{started.content_length} bytes via the daemon: "
                            f"{headers.get('x-dffs-origin-bytes', '?')} from the origin, "
                            f"{headers.get('x-dffs-peer-bytes', '?')} from peers"
                        )
        except grpc.RpcError as exc:
            raise DffsError(exc.details() or str(exc.code())) from None
        return summary
    finally:
        channel.close()


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False)


__all__ = ["parse_headers", "run_get"]
