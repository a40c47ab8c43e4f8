"""pyfuse3 operations for the image layers (the inode range of :mod:`dffs.fs.layertree`).

Read-only and immutable: entries and attributes are cached by the kernel for
long, file pages are kept (``keep_cache``). A file read asks the layer's
reader for the bytes (which fetches the blob's pieces through P2P by range);
it is bounded by ``read_timeout`` and fails with EIO and a logged cause,
never hangs. ``default_permissions`` makes the kernel check modes and owners
as on any filesystem, which overlayfs relies on.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable

import pyfuse3
import trio

from dffs.errors import DffsError
from dffs.fs.layertree import LAYER_INODE_BASE, LAYERS_ROOT_INODE, LayerNode, LayerTree
from dffs.metrics import daemon as metrics

log = logging.getLogger(__name__)

#: ``(node, offset, size)`` for every file read: what the prefetch recorder learns from.
ReadObserver = Callable[[LayerNode, int, int], None]


def _error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class LayerOperations:
    def __init__(
        self,
        tree: LayerTree,
        *,
        read_timeout: float = 30.0,
        cache_timeout: float = 3600.0,
        standalone: bool = True,
    ):
        self.tree = tree
        self.read_timeout = read_timeout
        self.cache_timeout = cache_timeout
        #: The FUSE root is the layers' root (no URL namespace in this session).
        self.standalone = standalone
        self.observers: list[ReadObserver] = []
        self.counters = {"reads": 0, "read_bytes": 0, "read_errors": 0}

    @staticmethod
    def owns_inode(inode: int) -> bool:
        return inode >= LAYER_INODE_BASE

    owns_handle = owns_inode

    def _node(self, inode: int) -> LayerNode:
        if inode == pyfuse3.ROOT_INODE and self.standalone:
            inode = LAYERS_ROOT_INODE
        node = self.tree.get(inode)
        if node is None:
            raise _error(errno.ENOENT)
        return node

    def attributes(self, node: LayerNode) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = pyfuse3.ROOT_INODE if (node is self.tree.root and self.standalone) else node.inode
        attr.generation = 0
        attr.entry_timeout = attr.attr_timeout = self.cache_timeout
        attr.st_mode = node.st_mode
        attr.st_nlink = node.nlink
        attr.st_uid, attr.st_gid = node.uid, node.gid
        attr.st_rdev = node.rdev
        attr.st_size = node.size
        attr.st_blksize = 1 << 17
        attr.st_blocks = (node.size + 511) // 512
        mtime_ns = int(node.mtime * 1e9)
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime_ns
        return attr

    # ----------------------------------------------------------- metadata
    async def lookup(self, parent_inode: int, name: bytes, ctx=None) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise _error(errno.ENOTDIR)
        child = parent.children.get(os.fsdecode(name))
        if child is None:
            raise _error(errno.ENOENT)
        return self.attributes(child)

    async def getattr(self, inode: int, ctx=None) -> pyfuse3.EntryAttributes:
        return self.attributes(self._node(inode))

    async def readlink(self, inode: int, ctx) -> bytes:
        node = self._node(inode)
        if node.kind != "symlink":
            raise _error(errno.EINVAL)
        return os.fsencode(node.link_target)

    async def getxattr(self, inode: int, name: bytes, ctx) -> bytes:
        value = self._node(inode).xattrs.get(os.fsdecode(name))
        if value is None:
            raise _error(errno.ENODATA)
        return value

    async def listxattr(self, inode: int, ctx) -> list[bytes]:
        return [os.fsencode(k) for k in self._node(inode).xattrs]

    # -------------------------------------------------------- directories
    # Handles are the inode numbers themselves: no per-open state, so a daemon
    # restarted under a live kernel connection serves the handles the kernel
    # (a running container's open files and directories) already holds.
    async def opendir(self, inode: int, ctx) -> int:
        node = self._node(inode)
        if not node.is_dir:
            raise _error(errno.ENOTDIR)
        return node.inode

    async def readdir(self, fh: int, start_id: int, token) -> None:
        node = self.tree.get(fh)
        if node is None:
            raise _error(errno.EBADF)
        # (name, node) pairs: a hard link's node has its target's name
        entries = sorted(node.children.items())
        for index in range(start_id, len(entries)):
            name, child = entries[index]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self.attributes(child), index + 1):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    # -------------------------------------------------------------- files
    async def open(self, inode: int, flags: int, ctx) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.is_dir:
            raise _error(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise _error(errno.EROFS)
        if node.kind != "reg":
            raise _error(errno.EINVAL)
        return pyfuse3.FileInfo(fh=node.inode, keep_cache=True, direct_io=False)

    async def release(self, fh: int) -> None:
        pass

    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self.tree.get(fh)
        if node is None or node.kind != "reg":
            raise _error(errno.EBADF)
        self.counters["reads"] += 1
        metrics.fuse_ops.labels("layer_read").inc()
        if off >= node.size or size <= 0:
            return b""
        size = min(size, node.size - off)
        for observe in self.observers:
            observe(node, off, size)
        started = time.monotonic()
        try:
            with trio.fail_after(self.read_timeout):
                data = await node.layer.read(node.entry, off, size)
        except trio.TooSlowError:
            self._failed(node, off, size, f"timed out after {self.read_timeout:g}s")
        except (DffsError, OSError, ValueError) as exc:
            self._failed(node, off, size, exc)
        if len(data) != size:
            self._failed(node, off, size, f"the layer returned {len(data)} bytes, not {size}")
        self.counters["read_bytes"] += size
        metrics.fuse_seconds.labels("layer_read").observe(time.monotonic() - started)
        return bytes(data)

    def _failed(self, node: LayerNode, off: int, size: int, cause) -> None:
        self.counters["read_errors"] += 1
        metrics.fuse_errors.labels("layer_read").inc()
        log.warning(
            "layer=%s event=layer_read_failed file=%s offset=%d size=%d error=%s",
            node.digest,
            node.name,
            off,
            size,
            cause,
        )
        raise _error(errno.EIO) from None
