"""The mount's lifecycle: prepare the mountpoint, mount, serve, unmount on a signal."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

import attrs
import pyfuse3
import trio

from dffs.config import DEFAULT_DATA_DIR
from dffs.errors import DffsError, UsageError
from dffs.fs.listing_cache import ListingCache
from dffs.fs.manifest import load_manifest
from dffs.fs.namespace import Namespace
from dffs.fs.operations import PREFETCH_MODES, DffsOperations, ReadPolicy
from dffs.fs.pagecache import PagePusher
from dffs.fs.prefetch import Prefetcher
from dffs.peertask import TaskManager
from dffs.source import HttpOptions, SourceRegistry
from dffs.storage import StorageManager

log = logging.getLogger(__name__)


@attrs.frozen
class MountConfig:
    mountpoint: Path
    data_dir: Path = DEFAULT_DATA_DIR
    sources: tuple[tuple[str, str], ...] = ()
    manifest: Path | None = None
    prefetch: str = "sequential"
    #: (source name, mode): a ``--source`` whose files prefetch otherwise than the mount's default.
    source_prefetch: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=lambda v: _pairs(v))
    #: Longest a read or lookup may take before EIO.
    read_timeout: float = 30.0
    #: Silence from the origin before one request is retried.
    origin_read_timeout: float = 10.0
    connect_timeout: float = 5.0
    attempts: int = 3
    #: Extra CA certificates (PEM) to trust for https origins.
    ca_file: str | None = None
    metadata_ttl: float = 60.0
    negative_ttl: float = 5.0
    prefetch_concurrency: int = 8
    #: Keep directory listings in DATA_DIR/listings.sqlite, so a remount lists nothing still fresh.
    keep_listings: bool = True
    #: Kernel readahead for the mount (the bdi's read_ahead_kb). Small on purpose: the kernel's window
    #: knows nothing of pieces, so a window reaching past a random read's piece costs a whole extra piece
    #: from the origin (a Parquet column chunk pulled 3 pieces instead of 2 at 4 MiB); sequential speed
    #: comes from the mount's own piece prefetcher, and cold `cat` measured the same at 512 KiB and 4 MiB.
    read_ahead_kb: int = 512
    #: Push sequential readahead's pieces into the kernel's page cache (FUSE notify_store), so the reader
    #: gets them without a read request each (see dffs.fs.pagecache). Off: on the 2-core VM a cold read is
    #: CPU-bound and the reader waits at the piece being fetched, so most pushes copy bytes the kernel has
    #: already asked for; it cost CPU and gained no speed there (docs/benchmarks.md).
    push_pieces: bool = False
    allow_other: bool = True


def mountinfo_entry(mountpoint: Path) -> list[str] | None:
    """The /proc/self/mountinfo fields for ``mountpoint``, if something is mounted there."""
    target = str(mountpoint)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")  # \040 etc.
        if point == target:
            found = fields  # the last one wins: it is the top of the stack
    return found


def prepare_mountpoint(mountpoint: Path) -> None:
    """Make ``mountpoint`` usable: create it, clear a crashed mount, refuse a live one.

    A crashed FUSE daemon leaves "Transport endpoint is not connected". stat()
    alone does not reveal it (the kernel may answer from cached attributes), so
    a mounted mountpoint is probed with readdir, which always reaches the daemon.
    """
    if mountinfo_entry(mountpoint) is not None:
        try:
            os.listdir(mountpoint)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise UsageError(f"mountpoint {mountpoint}: {exc.strerror}") from None
            log.warning("event=stale_mount_cleared mountpoint=%s", mountpoint)
            _unmount(mountpoint, lazy=True)
        else:
            raise UsageError(f"mountpoint {mountpoint} is already mounted")
    try:
        mountpoint.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"mountpoint {mountpoint}: {exc.strerror}") from None
    if not mountpoint.is_dir():
        raise UsageError(f"mountpoint {mountpoint} is not a directory")


def _unmount(mountpoint: Path, *, lazy: bool) -> None:
    for cmd in (
        ["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)],
        ["umount", *(["-l"] if lazy else []), str(mountpoint)],
    ):
        if shutil.which(cmd[0]) and subprocess.run(cmd, capture_output=True).returncode == 0:
            return
    raise DffsError(f"cannot unmount the stale mount at {mountpoint}")


def set_read_ahead(mountpoint: Path, kb: int) -> None:
    """Set the mount's kernel readahead (FUSE INIT resets it)."""
    entry = mountinfo_entry(mountpoint)
    if entry is None:
        return
    path = Path("/sys/class/bdi") / entry[2] / "read_ahead_kb"
    try:
        path.write_text(str(kb))
    except OSError as exc:
        log.info("event=read_ahead_unchanged path=%s error=%s", path, exc.strerror)


def _pairs(value: object) -> tuple[tuple[str, str], ...]:
    """A TOML table (``[source_prefetch]``) or pairs from the command line, as pairs."""
    if isinstance(value, dict):
        return tuple((str(k), str(v)) for k, v in value.items())
    return tuple((str(k), str(v)) for k, v in value)  # type: ignore[attr-defined]


def source_prefetch(cfg: MountConfig) -> tuple[tuple[str, str], ...]:
    """Each per-source prefetch mode keyed by its source's URL; UsageError for unknown names or modes."""
    urls = dict(cfg.sources)
    out = []
    for name, mode in cfg.source_prefetch:
        if name not in urls:
            raise UsageError(f"--prefetch {name}={mode}: no --source named {name!r}")
        if mode not in PREFETCH_MODES:
            raise UsageError(f"--prefetch {name}={mode}: the mode must be one of {', '.join(PREFETCH_MODES)}")
        url = urls[name]
        out.append((url if url.endswith("/") else url + "/", mode))
    return tuple(out)


def build(cfg: MountConfig, tasks: TaskManager) -> DffsOperations:
    """The operations the mount serves; raises UsageError on bad input before mounting."""
    manifest = load_manifest(cfg.manifest) if cfg.manifest else []
    namespace = Namespace(
        tasks.sources,
        named_sources=dict(cfg.sources),
        manifest=manifest,
        metadata_ttl=cfg.metadata_ttl,
        negative_ttl=cfg.negative_ttl,
        op_timeout=cfg.read_timeout,
        swarm=tasks.swarm,
        listings=ListingCache(cfg.data_dir / "listings.sqlite") if cfg.keep_listings else None,
    )
    policy = ReadPolicy(
        prefetch=cfg.prefetch,
        source_prefetch=source_prefetch(cfg),
        read_timeout=cfg.read_timeout,
        entry_timeout=cfg.metadata_ttl,
    )
    prefetcher = Prefetcher(concurrency=cfg.prefetch_concurrency)
    pusher = PagePusher() if cfg.push_pieces else None
    return DffsOperations(namespace, tasks, policy, cfg.data_dir, prefetcher, pusher)


def standalone_sources(cfg: MountConfig) -> SourceRegistry:
    """The origins of a mount that runs alone (``dffs mount`` without P2P)."""
    return SourceRegistry(
        http_options=HttpOptions(
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.origin_read_timeout,
            attempts=cfg.attempts,
            ca_file=cfg.ca_file,
        )
    )


async def serve_standalone(cfg: MountConfig, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """``dffs mount`` on its own: its own storage, origins and task manager, no ports opened."""
    storage = StorageManager(cfg.data_dir)
    sources = standalone_sources(cfg)
    try:
        async with TaskManager(storage, sources, revalidate_ttl=cfg.metadata_ttl) as tasks:
            await serve(cfg, tasks, task_status=task_status)
    finally:
        with trio.CancelScope(shield=True):
            storage.close()
            await sources.aclose()


async def serve(cfg: MountConfig, tasks: TaskManager, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Mount, serve until SIGINT/SIGTERM (or cancellation), and always unmount.

    ``tasks`` is the daemon's (or :func:`serve_standalone`'s) task manager: the mount
    shares its storage, origins and P2P."""
    mountpoint = cfg.mountpoint.absolute()
    operations = build(cfg, tasks)
    prepare_mountpoint(mountpoint)
    options = set(pyfuse3.default_options) | {"fsname=dffs", "subtype=dffs", "ro"}
    if cfg.allow_other:
        options.add("allow_other")
    try:
        pyfuse3.init(operations, str(mountpoint), options)
    except RuntimeError as exc:
        raise DffsError(f"cannot mount {mountpoint}: {exc}") from None
    log.info("event=mounted mountpoint=%s data_dir=%s", mountpoint, cfg.data_dir)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, operations.pusher)
            nursery.start_soon(_tune_read_ahead, mountpoint, cfg.read_ahead_kb)
            task_status.started(operations)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            pyfuse3.close(unmount=True)
        counters = " ".join(f"{k}={v}" for k, v in operations.counters.items())
        log.info(
            "event=unmounted mountpoint=%s %s origin_metadata_requests=%d prefetched=%d pushed_bytes=%d",
            mountpoint,
            counters,
            operations.ns.origin_requests,
            operations.prefetcher.fetched,
            operations.pusher.pushed_bytes if operations.pusher else 0,
        )


async def _tune_read_ahead(mountpoint: Path, kb: int) -> None:
    """Set the bdi readahead once the kernel has finished FUSE INIT (which resets it).

    A stat of the mount root from a worker thread returns only after INIT,
    because the kernel holds every request until then.
    """
    try:
        await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    except OSError:
        return
    set_read_ahead(mountpoint, kb)


async def _stop_on_signal(pusher: PagePusher | None = None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("event=signal signal=%s action=unmount", signal.Signals(signum).name)
            if pusher is not None:
                with trio.move_on_after(10):  # pushes end once the reads they wait for are answered
                    await pusher.stop()
            pyfuse3.terminate()
            return


async def serve_layers(
    mountpoint: Path,
    layers,
    *,
    keeper_socket: Path,
    keeper_log: Path | None = None,
    namespace: DffsOperations | None = None,
    read_ahead_kb: int = 1024,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """The FUSE session of ``dffs daemon --snapshotter``: the image layers, and the URL
    namespace too when the daemon also has ``--mount`` (pyfuse3 has one session per
    process: :class:`dffs.fs.multiplex.MultiplexOperations` routes by inode range).

    The mount belongs to a connection keeper (:mod:`dffs.fs.keeper`) that
    outlives this process, so the overlays of running containers survive a
    restart: this session connects to the keeper (starting one, and the
    mount, when there is none) and serves whatever the kernel sends through it.
    ``allow_other`` because overlayfs checks access to its lower directories
    as the process that mounts the overlay, and ``default_permissions`` so
    that the kernel applies the layers' modes and owners like any
    filesystem's. Runs until cancelled; the mount stays for the next run.
    """
    from dffs.fs.multiplex import MultiplexOperations

    mountpoint = mountpoint.absolute()
    conn = _connect_keeper(keeper_socket)
    if conn is None:
        prepare_mountpoint(mountpoint)
        conn = await _start_keeper(mountpoint, keeper_socket, keeper_log)
        log.info("event=layers_mounted mountpoint=%s keeper=started", mountpoint)
    else:
        log.info("event=layers_mounted mountpoint=%s keeper=reconnected", mountpoint)
    if namespace is not None:
        log.info("event=mounted mountpoint=%s with=layers", mountpoint)
    if namespace is not None:
        namespace.pusher = None  # the keeper relays requests and replies; it has no path for notify messages
    operations = MultiplexOperations(namespace, layers)
    fd = conn.detach()
    try:
        pyfuse3.init(operations, f"/dev/fd/{fd}", set(pyfuse3.default_options) | {"fsname=dffs-layers"})
    except RuntimeError as exc:
        os.close(fd)
        raise DffsError(f"cannot serve {mountpoint}: {exc}") from None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_tune_read_ahead, mountpoint, read_ahead_kb)
            task_status.started(operations)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            pyfuse3.close(unmount=False)  # the keeper keeps the mount (and queues requests) until we are back
        counters = " ".join(f"{k}={v}" for k, v in layers.counters.items())
        log.info("event=layers_session_closed mountpoint=%s %s", mountpoint, counters)


def _connect_keeper(path: Path):
    import socket

    from dffs.fs.keeper import set_buffers

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    set_buffers(conn)
    return conn


async def _start_keeper(mountpoint: Path, socket_path: Path, log_path: Path | None, timeout: float = 10.0):
    """Start the keeper (in its own session: it must outlive us) and connect to it."""
    import sys

    with open(log_path or os.devnull, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dffs.fs.keeper", str(mountpoint), str(socket_path)],
            stdout=log_file,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    with trio.move_on_after(timeout):
        while (conn := _connect_keeper(socket_path)) is None:
            if proc.poll() is not None:
                raise DffsError(f"cannot mount {mountpoint}: the FUSE keeper exited ({proc.returncode})")
            await trio.sleep(0.02)
        return conn
    proc.kill()
    raise DffsError(f"cannot mount {mountpoint}: the FUSE keeper did not start within {timeout:g}s")
