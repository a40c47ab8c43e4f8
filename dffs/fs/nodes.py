"""The mount's tree of nodes and its inode table. No I/O here.

Every name the kernel has looked up is a Node with a stable inode number.
Nodes know what they are (a directory or a file), where their bytes or their
listing come from (a URL), and how fresh their metadata is.
"""

from __future__ import annotations

import enum
import itertools
import stat
import time

import attrs
import pyfuse3

from dffs.bounds import MAX_OBJECT_SIZE, timestamp


class Role(enum.Enum):
    ROOT = "root"
    SCHEME = "scheme"  # MOUNT/http, MOUNT/https: children are hosts, created on lookup
    REMOTE_DIR = "remote-dir"  # a directory at an origin: looked up by HEAD, read by listing
    STATIC_DIR = "static-dir"  # a manifest directory: everything known up front
    FILE = "file"


@attrs.define(eq=False)
class Node:
    inode: int
    name: str
    role: Role
    parent: Node | None = None
    #: File: the object's URL. Remote dir: its listing URL (ends with "/").
    url: str | None = None
    size: int = 0
    mtime: float = 0.0
    etag: str | None = None
    digest: str | None = None
    children: dict[str, Node] = attrs.Factory(dict)
    #: Names known *not* to exist here, with the time they were learned.
    missing: dict[str, float] = attrs.Factory(dict)
    #: When this directory's children last came from a full listing (None: never).
    listed_at: float | None = None
    #: When this node's own metadata was last confirmed by the origin.
    checked_at: float = attrs.Factory(time.monotonic)
    #: Metadata that never expires (manifest, virtual directories).
    static: bool = False
    #: The whole-file ``digest`` check: None (not yet), "checking", "ok" or "bad".
    digest_check: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.role is not Role.FILE

    @property
    def remote_url(self) -> str:
        """``url`` of a node that must have one (a remote directory, a file); a bug if it has none."""
        if self.url is None:
            raise LookupError(f"{self.role.value} node {self.path()!r} has no URL")
        return self.url

    @property
    def immutable(self) -> bool:
        """Bytes pinned by a digest or a strong ETag: the kernel may keep its cache."""
        return bool(self.digest) or bool(self.etag and not self.etag.startswith("W/"))

    def path(self) -> str:
        parts = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/" + "/".join(reversed(parts))


class InodeTable:
    def __init__(self):
        self._nodes: dict[int, Node] = {}
        self._numbers = itertools.count(pyfuse3.ROOT_INODE + 1)
        self.root = Node(pyfuse3.ROOT_INODE, "", Role.ROOT, static=True)
        self._nodes[self.root.inode] = self.root

    def __getitem__(self, inode: int) -> Node:
        return self._nodes[inode]

    def get(self, inode: int) -> Node | None:
        return self._nodes.get(inode)

    def add_child(self, parent: Node, name: str, role: Role, **fields) -> Node:
        """Create (or replace, keeping its inode) the child ``name`` of ``parent``."""
        old = parent.children.get(name)
        if old is not None and old.role is role:
            for key, value in fields.items():
                setattr(old, key, value)
            old.checked_at = time.monotonic()
            return old
        node = Node(next(self._numbers), name, role, parent=parent, **fields)
        self._nodes[node.inode] = node
        parent.children[name] = node
        parent.missing.pop(name, None)
        return node

    def __len__(self) -> int:
        return len(self._nodes)


def attributes(node: Node, *, entry_timeout: float, attr_timeout: float) -> pyfuse3.EntryAttributes:
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = node.inode
    attr.generation = 0
    attr.entry_timeout = entry_timeout
    attr.attr_timeout = attr_timeout
    # Sizes and times were bounded where they were parsed; clamped again here, because a value
    # pyfuse3 cannot convert (an int64 overflow) would end the whole mount, not one request.
    size = 0 if node.is_dir else min(max(node.size, 0), MAX_OBJECT_SIZE)
    if node.is_dir:
        attr.st_mode = stat.S_IFDIR | 0o555
        attr.st_nlink = 2
    else:
        attr.st_mode = stat.S_IFREG | 0o444
        attr.st_nlink = 1
    attr.st_size = size
    attr.st_blksize = 1 << 20  # invites large reads
    attr.st_blocks = (size + 511) // 512
    mtime_ns = int((timestamp(node.mtime) or 0.0) * 1e9)
    attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime_ns
    attr.st_uid = 0
    attr.st_gid = 0
    return attr
