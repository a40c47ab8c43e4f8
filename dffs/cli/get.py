"""``dffs get URL -O PATH``: download through dffs into a file.

With no daemon answering on ``--socket`` this runs an embedded one for the
single download: the same storage, task manager and sources a daemon uses,
so a second ``dffs get`` with the same data dir is served from local pieces.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import trio

from dffs import config as config_module
from dffs.config import GetConfig
from dffs.digest import ExpectedDigest
from dffs.errors import DigestMismatch, DffsError, SourceError, StorageError, UsageError
from dffs.peertask import DownloadRequest, TaskManager
from dffs.peertask.export import check_output_path, export_task, verify_task
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
        },
    )


def run_get(args: argparse.Namespace) -> int:
    cfg = _config(args)
    sources = SourceRegistry(
        http_options=HttpOptions(
            connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout, attempts=cfg.attempts,
            ca_file=cfg.ca_file,
        )
    )
    sources.validate(args.url)
    expected = ExpectedDigest.parse(args.digest) if args.digest else None
    headers = parse_headers(args.header)
    if cfg.timeout < 0 or math.isnan(cfg.timeout):
        raise UsageError("--timeout must be a positive number of seconds")
    output = Path(args.output).absolute()
    try:
        check_output_path(output)
    except StorageError as exc:
        raise UsageError(str(exc)) from None
    if cfg.scheduler or cfg.manager:
        log.warning("event=p2p_unavailable detail='peer-to-peer is not built yet; downloading from the origin'")
    request = DownloadRequest(url=args.url, headers=headers, tag=args.tag, application=args.application)
    show_progress = not args.quiet and sys.stderr.isatty()
    started = time.monotonic()
    summary = trio.run(_download, cfg, sources, request, expected, output, show_progress)
    if show_progress:
        elapsed = time.monotonic() - started
        print(f"{output}: {summary}, {elapsed:.1f}s", file=sys.stderr)
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
    tasks = TaskManager(storage, sources)
    try:
        with trio.fail_after(cfg.timeout or math.inf):
            task = await tasks.open(request)
            with _progress(task.store.meta.content_length, show_progress) as bar:
                await task.fetch_all(concurrency=cfg.concurrency, on_progress=bar.update)
                for _ in range(3):
                    try:
                        dropped = await trio.to_thread.run_sync(verify_task, task.store, expected)
                    except DigestMismatch:
                        await tasks.delete(task.task_id)  # the cache keeps no bytes a user rejected
                        raise
                    if not dropped:
                        break
                    log.warning("task=%s event=refetch_corrupt_pieces pieces=%s", task.task_id, dropped)
                    bar.update(-sum(task.store.span(n).length for n in dropped))
                    await task.fetch_all(concurrency=cfg.concurrency, on_progress=bar.update)
                else:
                    raise StorageError(f"task {task.task_id}: pieces keep failing verification")
            method = await trio.to_thread.run_sync(export_task, task.store, output)
        size = task.store.meta.content_length
        log.info(
            "task=%s event=download_done bytes=%d origin_bytes=%d export=%s",
            task.task_id, size, task.source_bytes, method,
        )
        return f"{size} bytes, {task.source_bytes} from the origin, {size - task.source_bytes} from the cache"
    except trio.TooSlowError:
        raise SourceError(f"{request.url}: download did not finish within {cfg.timeout:g}s") from None
    except OSError as exc:
        raise DffsError(f"{request.url}: {exc.strerror or exc}") from None
    finally:
        storage.close()
        with trio.CancelScope(shield=True):
            await sources.aclose()


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
