"""pyfuse3 operations: the kernel's requests mapped onto the namespace and peer tasks.

Read-only: the mount is mounted ``ro`` and every write-ish operation answers
EROFS. Errors cross into the kernel as errno values; their cause is logged
with the task ID. Every read is bounded by ``read_timeout`` and then fails
with EIO rather than hang; the next read tries the origin again.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import attrs
import pyfuse3
import trio

from dffs.digest import ExpectedDigest
from dffs.errors import DffsError, DigestMismatch, primary_error
from dffs.fs.namespace import Namespace, fuse_error
from dffs.fs.nodes import Node, attributes
from dffs.fs.pagecache import PagePusher
from dffs.fs.prefetch import Prefetcher
from dffs.fs.readahead import SequentialDetector
from dffs.idgen import pieces_for_range
from dffs.metrics import daemon as metrics
from dffs.peertask import DownloadRequest, PeerTask, TaskManager

log = logging.getLogger(__name__)

# The read path's metric children, bound once: labels() on every read costs ~10 µs.
_READS = metrics.fuse_ops.labels("read")
_READ_SECONDS = metrics.fuse_seconds.labels("read")
_READ_ERRORS = metrics.fuse_errors.labels("read")
_CACHE_HITS = metrics.cache_requests.labels("hit")
_CACHE_MISSES = metrics.cache_requests.labels("miss")
_LOCAL_BYTES = metrics.download_bytes.labels("local")

PREFETCH_MODES = ("none", "sequential", "whole")
#: Reads up to this size of a piece nobody has fetched yet are answered from
#: a sub-range request first (see PeerTask.read_cold).
COLD_READ_MAX = 256 * 1024
#: Bytes past the furthest request that a page push leaves to the reader's own requests.
PUSH_MARGIN = 1 << 20


@attrs.frozen
class ReadPolicy:
    prefetch: str = "sequential"
    #: (URL prefix, mode): the prefetch of files below a ``--source`` that has its own (``--prefetch NAME=MODE``):
    #: a tree of Parquet files wants none, a tree of tar shards the whole file.
    source_prefetch: tuple[tuple[str, str], ...] = ()
    #: Longest a read (or lookup) may take before it fails with EIO.
    read_timeout: float = 30.0
    #: Readahead window bounds, in bytes.
    readahead_initial: int = 8 << 20
    readahead_max: int = 64 << 20
    #: Kernel cache lifetimes for entries and attributes (immutable content).
    entry_timeout: float = 60.0
    #: ... and for content that may change (no ETag/digest) and directories.
    volatile_timeout: float = 1.0

    def prefetch_for(self, url: str) -> str:
        """The prefetch mode for the file at ``url``: its source's own, else the mount's."""
        best, mode = -1, self.prefetch
        for prefix, source_mode in self.source_prefetch:
            if url.startswith(prefix) and len(prefix) > best:
                best, mode = len(prefix), source_mode
        return mode


@attrs.define
class OpenFile:
    node: Node
    detector: SequentialDetector
    task: PeerTask | None = None
    prefetched_whole: bool = False
    closed: bool = False
    #: The furthest byte the kernel has asked for, counting requests still waiting for their piece.
    requested_end: int = 0


def _eio_on_surprise(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Answer EIO, with the traceback in the log, when a handler raises anything but FUSEError.

    pyfuse3 ends its main loop — the whole mount, for every user — on any other
    exception; no input, however absurd, may cost more than the one request."""

    @functools.wraps(method)
    async def guarded(self: DffsOperations, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("event=fuse_internal_error op=%s action=eio", method.__name__)
            metrics.fuse_errors.labels(method.__name__).inc()
            raise fuse_error(errno.EIO) from None

    return guarded


class DffsOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(
        self,
        namespace: Namespace,
        tasks: TaskManager,
        policy: ReadPolicy,
        data_dir,
        prefetcher: Prefetcher,
        pusher: PagePusher | None = None,
    ):
        super().__init__()
        self.ns = namespace
        self.tasks = tasks
        self.policy = policy
        self.data_dir = data_dir
        self.prefetcher = prefetcher
        #: Pushes the sequential readahead's pieces into the kernel's page cache (None: the reader asks for them).
        self.pusher = pusher
        self._handles = itertools.count(1)
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, list[Node]] = {}
        self._digest_watch: set[str] = set()
        self.counters = {"reads": 0, "read_bytes": 0, "read_errors": 0, "lookups": 0, "cold_reads": 0}

    # ------------------------------------------------------------ helpers
    def _node(self, inode: int) -> Node:
        node = self.ns.table.get(inode)
        if node is None:
            raise fuse_error(errno.ENOENT)
        return node

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        timeout = self.policy.entry_timeout if (node.static or node.immutable) else self.policy.volatile_timeout
        if node.is_dir and not node.static:
            timeout = self.policy.volatile_timeout
        return attributes(node, entry_timeout=timeout, attr_timeout=timeout)

    # ----------------------------------------------------------- metadata
    @_eio_on_surprise
    async def lookup(self, parent_inode, name, ctx=None):
        self.counters["lookups"] += 1
        metrics.fuse_ops.labels("lookup").inc()
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise fuse_error(errno.ENOTDIR)
        with metrics.fuse_seconds.labels("lookup").time():
            try:
                node = await self.ns.lookup(parent, os.fsdecode(name))
            except BaseException:
                metrics.fuse_errors.labels("lookup").inc()
                raise
        attr = self._attr(node)
        self.ns.table.remember(node)  # only once the reply cannot fail any more
        return attr

    @_eio_on_surprise
    async def getattr(self, inode, ctx=None):
        return self._attr(self._node(inode))

    async def forget(self, inode_list):
        """The kernel dropped its references: nodes nobody knows any more leave the table."""
        try:
            for inode, count in inode_list:
                self.ns.table.forget(inode, count)
        except Exception:  # forget must never raise (pyfuse3's rule): the table only stays larger
            log.exception("event=fuse_forget_failed")

    @_eio_on_surprise
    async def statfs(self, ctx):
        st = os.statvfs(self.data_dir)
        data = pyfuse3.StatvfsData()
        data.f_bsize = st.f_bsize
        data.f_frsize = st.f_frsize
        data.f_blocks = st.f_blocks
        data.f_bfree = 0
        data.f_bavail = 0
        data.f_files = len(self.ns.table)
        data.f_ffree = 0
        data.f_favail = 0
        data.f_namemax = 255
        return data

    # --------------------------------------------------------- directories
    @_eio_on_surprise
    async def opendir(self, inode, ctx):
        node = self._node(inode)
        if not node.is_dir:
            raise fuse_error(errno.ENOTDIR)
        children = await self.ns.list_dir(node)
        handle = next(self._handles)
        self._dirs[handle] = sorted(children, key=lambda n: n.name)
        return handle

    @_eio_on_surprise
    async def readdir(self, fh, start_id, token):
        entries = self._dirs.get(fh, [])
        for index in range(start_id, len(entries)):
            node = entries[index]
            if not pyfuse3.readdir_reply(token, os.fsencode(node.name), self._attr(node), index + 1):
                break
            self.ns.table.remember(node)  # readdirplus: the kernel now holds a reference, as after lookup

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    # ---------------------------------------------------------------- files
    @_eio_on_surprise
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if node.is_dir:
            raise fuse_error(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise fuse_error(errno.EROFS)
        handle = next(self._handles)
        detector = SequentialDetector(self.policy.readahead_initial, self.policy.readahead_max)
        self._files[handle] = OpenFile(node, detector)
        return pyfuse3.FileInfo(fh=handle, keep_cache=node.immutable, direct_io=False)

    async def release(self, fh):
        handle = self._files.pop(fh, None)
        if handle is not None:
            handle.closed = True
        if handle is not None and handle.task is not None:
            handle.task.release()

    @_eio_on_surprise
    async def read(self, fh, off, size):
        """One kernel read: errors become EIO (cause logged with the task ID), never a hang."""
        handle = self._files.get(fh)
        if handle is None:
            raise fuse_error(errno.EBADF)
        node = handle.node
        self.counters["reads"] += 1
        _READS.inc()
        if node.digest_check == "bad":
            log.warning("event=read_refused path=%s reason=digest_mismatch", node.path())
            raise fuse_error(errno.EIO)
        started = time.monotonic()
        try:
            with trio.fail_after(self.policy.read_timeout):
                data = await self._read(handle, off, size)
        except trio.TooSlowError:
            self._read_failed(handle, off, size, f"timed out after {self.policy.read_timeout:g}s")
        except (DffsError, OSError) as exc:
            self._read_failed(handle, off, size, exc)
        except BaseExceptionGroup as group:
            cause = primary_error(group)
            if not isinstance(cause, (DffsError, OSError)):
                raise
            self._read_failed(handle, off, size, cause)
        self.counters["read_bytes"] += len(data)
        log.debug(
            "task=%s event=read offset=%d size=%d ms=%.2f",
            handle.task.task_id if handle.task else "-",
            off,
            size,
            1000 * (time.monotonic() - started),
        )
        _READ_SECONDS.observe(time.monotonic() - started)
        metrics.fuse_read_bytes.inc(len(data))
        return data

    def _read_failed(self, handle: OpenFile, off: int, size: int, cause) -> NoReturn:
        self.counters["read_errors"] += 1
        _READ_ERRORS.inc()
        log.warning(
            "task=%s event=read_failed path=%s offset=%d size=%d error=%s",
            handle.task.task_id if handle.task else "-",
            handle.node.path(),
            off,
            size,
            cause,
        )
        raise fuse_error(errno.EIO) from None

    async def _read(self, handle: OpenFile, off: int, size: int) -> bytes:
        task = handle.task or await self._open_task(handle)
        store = task.store
        meta = store.meta
        if off >= meta.content_length or size <= 0:
            return b""
        size = min(size, meta.content_length - off)
        handle.requested_end = max(handle.requested_end, off + size)
        needed = pieces_for_range(off, size, meta.content_length, meta.piece_length)
        # Pinned from before the wait until the bytes are copied: the GC never
        # evicts a piece between "present" and the pread.
        with store.pinned(needed):
            return await self._read_pinned(handle, task, store, needed, off, size)

    async def _read_pinned(
        self, handle: OpenFile, task: PeerTask, store, needed: Sequence[int], off: int, size: int
    ) -> bytes:
        hits = sum(1 for n in needed if store.has_piece(n))
        _CACHE_HITS.inc(hits)
        _CACHE_MISSES.inc(len(needed) - hits)
        store.touch(needed)
        if hits == len(needed):
            _LOCAL_BYTES.inc(size)
        if len(needed) == 1 and size <= COLD_READ_MAX:
            span = store.span(needed[0])
            data = await task.read_cold(needed[0], off - span.offset, size)
            if data is not None:  # the piece was cold: these bytes came first, the rest follows
                self.counters["cold_reads"] += 1
                self._schedule_prefetch(handle, task, off, size)
                return data
        if len(needed) == 1:
            await task.ensure_piece(needed[0])
        else:
            async with trio.open_nursery() as nursery:
                for number in needed:
                    nursery.start_soon(task.ensure_piece, number)
        self._schedule_prefetch(handle, task, off, size)
        if len(needed) == 1 and store.memory_eligible:  # small objects: no syscall
            start = off - store.span(needed[0]).offset
            return store.read_piece(needed[0])[start : start + size]
        fd, base = store.content_location()
        return os.pread(fd, size, base + off)

    async def _open_task(self, handle: OpenFile) -> PeerTask:
        node = handle.node
        assert node.url is not None  # files always have one; only directories do not
        # The size (and ETag) the listing, manifest or lookup gave: a small object needs no HEAD before its GET.
        task = await self.tasks.open(DownloadRequest(url=node.url, size=node.size, etag=node.etag))
        if task.store.meta.content_length != node.size:
            log.info(
                "task=%s event=size_changed path=%s listed=%d actual=%d",
                task.task_id,
                node.path(),
                node.size,
                task.store.meta.content_length,
            )
            node.size = task.store.meta.content_length
        if handle.task is None:  # two reads of a fresh handle may race to open its task
            handle.task = task
            task.hold()  # an open file keeps its task in memory until released
        task = handle.task
        if node.digest and node.digest_check is None and task.task_id not in self._digest_watch:
            self._digest_watch.add(task.task_id)
            task.background.start_soon(self._check_digest_when_complete, node, task)
        return task

    async def _check_digest_when_complete(self, node: Node, task: PeerTask) -> None:
        """Check a manifest digest once the file is complete, however its pieces arrived.

        Bytes are served as pieces arrive (each piece digest-checked), so the
        whole-file digest can only be checked at the end; a mismatch means the
        origin does not hold what the manifest promised: the task is deleted
        (TaskManager.verify) and reads of the file fail with EIO from then on.
        """
        try:
            await task.wait_complete()
            if node.digest_check is not None:
                return
            node.digest_check = "checking"
            try:
                await self.tasks.verify(task, ExpectedDigest.parse(node.digest or ""))
            except DigestMismatch as exc:
                # No await from here on: the delete cancelled this task's background (and this job).
                node.digest_check = "bad"
                log.error("task=%s event=digest_mismatch path=%s error=%s", task.task_id, node.path(), exc)
                for handle in self._files.values():
                    if handle.task is task:
                        handle.task.release()
                        handle.task = None
                return
            except DffsError as exc:
                node.digest_check = None
                log.warning("task=%s event=digest_check_failed path=%s error=%s", task.task_id, node.path(), exc)
                return
            node.digest_check = "ok"
            log.info("task=%s event=digest_verified path=%s ok=True", task.task_id, node.path())
        finally:
            if node.digest_check == "checking":  # cancelled with its task: check again next time
                node.digest_check = None
            self._digest_watch.discard(task.task_id)

    def _schedule_prefetch(self, handle: OpenFile, task: PeerTask, off: int, size: int) -> None:
        meta = task.store.meta
        mode = self.policy.prefetch_for(meta.url)
        if mode == "none":
            return
        if mode == "whole":
            if not handle.prefetched_whole:
                handle.prefetched_whole = True
                first = off // meta.piece_length
                order = list(range(first, meta.piece_count)) + list(range(0, first))
                self.prefetcher.schedule(task, order)
            return
        window = handle.detector.on_read(off, size)
        if window:
            pieces = pieces_for_range(off + size, window, meta.content_length, meta.piece_length)
            push = functools.partial(self._push_fetched, handle, task) if self.pusher is not None else None
            self.prefetcher.schedule(task, pieces, push)

    def _push_fetched(self, handle: OpenFile, task: PeerTask, number: int) -> None:
        """A readahead piece arrived while its reader streams: into the page cache with it,
        but not the bytes the reader has already asked for (nor the next request's worth, which
        the kernel may be asking for now): those are answered anyway, a push would copy them twice."""
        if self.pusher is None or handle.closed or handle.task is not task:
            return
        asked = handle.requested_end + PUSH_MARGIN
        self.pusher.push(handle.node.inode, task, number, start=asked - task.store.span(number).offset)

    # ------------------------------------------------------------ writes
    async def _read_only(self, *args, **kwargs):
        raise fuse_error(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = create = write = _read_only
    setxattr = removexattr = _read_only
