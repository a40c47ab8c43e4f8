"""The mount's tree of nodes and its inode table. No I/O here.

Every name the kernel has looked up is a Node with a stable inode number.
Nodes know what they are (a directory or a file), where their bytes or their
listing come from (a URL), and how fresh their metadata is.

The table follows the kernel's lookup counts: each entry the kernel is given
(a lookup, a readdirplus entry) counts one reference, each ``forget`` takes
them back, and a node nobody references any more — and none of whose
descendants the kernel knows — leaves the table, so browsing a large tree does
not grow memory for ever. A node the kernel knows is never dropped, so its
inode number stays the same for as long as the kernel may use it. Nodes made
up front (the scheme directories, ``--source`` and manifest entries) stay.
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
    #: References the kernel holds (lookups and readdirplus entries not forgotten yet).
    lookups: int = 0

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
        if old is not None:
            self.detach(parent, name)
        node = Node(next(self._numbers), name, role, parent=parent, **fields)
        self._nodes[node.inode] = node
        parent.children[name] = node
        parent.missing.pop(name, None)
        return node

    def detach(self, parent: Node, name: str) -> None:
        """``name`` is no longer a child of ``parent`` (gone at the origin, or replaced).

        What the kernel still knows of it stays in the table until forgotten; the rest goes now."""
        node = parent.children.pop(name, None)
        if node is not None:
            self._drop_unknown(node)

    # ------------------------------------------------------ kernel references
    def remember(self, node: Node) -> None:
        """The kernel was handed ``node`` (a lookup or readdirplus reply): one more reference."""
        node.lookups += 1
        if self._nodes.get(node.inode) is not node:  # pruned while an open directory still listed it
            self._nodes[node.inode] = node

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped ``count`` references to ``inode``; prune what nobody knows any more."""
        node = self._nodes.get(inode)
        if node is None or node is self.root:
            return
        node.lookups = max(0, node.lookups - count)
        while node is not None and self._prunable(node):
            parent = node.parent
            assert parent is not None
            if parent.children.get(node.name) is node:
                del parent.children[node.name]
            self._drop_unknown(node)
            node = parent

    def _prunable(self, node: Node) -> bool:
        parent = node.parent
        return (
            node.lookups == 0
            and not node.static
            and parent is not None
            and parent.role in (Role.SCHEME, Role.REMOTE_DIR)  # children made up front cannot be remade
            and self._unknown_below(node)
        )

    def _unknown_below(self, node: Node) -> bool:
        return all(c.lookups == 0 and self._unknown_below(c) for c in node.children.values())

    def _drop_unknown(self, node: Node) -> None:
        """Remove ``node`` and its descendants from the table, except those the kernel still knows."""
        stack = [node]
        while stack:
            current = stack.pop()
            stack.extend(current.children.values())
            if current.lookups == 0 and self._nodes.get(current.inode) is current:
                del self._nodes[current.inode]

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
