"""One FUSE session for the URL namespace and the image layers, told apart by inode number.

pyfuse3 keeps its session in module globals, so a process has one FUSE mount.
The daemon may serve the URL namespace (``--mount``) and the snapshotter's
layers (``--snapshotter``) at once; this Operations routes each request:
inodes and handles from ``LAYER_INODE_BASE`` up go to the layers, the rest to
the namespace, and the root's reserved name ``.layers`` (hidden from its
listing: no source can be named so) is the layers' root. Without a namespace
the mount's root *is* the layers' root.
"""

from __future__ import annotations

import errno

import pyfuse3

from dffs.fs.layerops import LayerOperations
from dffs.fs.layertree import LAYERS_ROOT_INODE

LAYERS_NAME = ".layers"


class MultiplexOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, namespace: pyfuse3.Operations | None, layers: LayerOperations):
        super().__init__()
        self.namespace = namespace
        self.layers = layers
        layers.standalone = namespace is None

    def _for_inode(self, inode: int):
        if self.namespace is None or self.layers.owns_inode(inode):
            return self.layers
        return self.namespace

    def _for_handle(self, fh: int):
        if self.namespace is None or self.layers.owns_handle(fh):
            return self.layers
        return self.namespace

    async def lookup(self, parent_inode, name, ctx=None):
        if self.namespace is not None and parent_inode == pyfuse3.ROOT_INODE and name == LAYERS_NAME.encode():
            return await self.layers.getattr(LAYERS_ROOT_INODE, ctx)
        return await self._for_inode(parent_inode).lookup(parent_inode, name, ctx)

    async def getattr(self, inode, ctx=None):
        return await self._for_inode(inode).getattr(inode, ctx)

    async def readlink(self, inode, ctx):
        target = self._for_inode(inode)
        if target is self.namespace:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return await target.readlink(inode, ctx)

    async def getxattr(self, inode, name, ctx):
        target = self._for_inode(inode)
        if target is self.namespace:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return await target.getxattr(inode, name, ctx)

    async def listxattr(self, inode, ctx):
        target = self._for_inode(inode)
        if target is self.namespace:
            return []
        return await target.listxattr(inode, ctx)

    async def forget(self, inode_list):
        if self.namespace is not None:
            await self.namespace.forget([(i, n) for i, n in inode_list if not self.layers.owns_inode(i)])

    async def statfs(self, ctx):
        if self.namespace is not None:
            return await self.namespace.statfs(ctx)
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data

    async def opendir(self, inode, ctx):
        return await self._for_inode(inode).opendir(inode, ctx)

    async def readdir(self, fh, start_id, token):
        return await self._for_handle(fh).readdir(fh, start_id, token)

    async def releasedir(self, fh):
        return await self._for_handle(fh).releasedir(fh)

    async def open(self, inode, flags, ctx):
        return await self._for_inode(inode).open(inode, flags, ctx)

    async def read(self, fh, off, size):
        return await self._for_handle(fh).read(fh, off, size)

    async def release(self, fh):
        return await self._for_handle(fh).release(fh)

    async def _read_only(self, *args, **kwargs):
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = create = write = _read_only
    setxattr = removexattr = _read_only
