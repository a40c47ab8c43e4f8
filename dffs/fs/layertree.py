"""The image layers inside the FUSE mount: one directory per layer, inodes for every entry (pure).

A layer arrives as the entries of its tar (``dffs.layers``' ``Entry``: path,
kind, mode, owner, size, mtime, link target, device numbers, xattrs, with
overlayfs whiteouts already turned into char devices 0/0 and opaque xattrs).
:class:`LayerTree` gives each entry an inode in a range of its own (from
``LAYER_INODE_BASE``, far above the URL namespace's, so one FUSE session can
serve both and tell them apart by number), fills in directories the tar only
implies, and makes hard links share their target's inode and link count.

Inode numbers are a function of the layer's *slot* (a small number the
snapshotter stores with the layer) and the entry's position in the layer's
index, never of the order layers were mounted: a restarted daemon serving
the same kernel connection (see :mod:`dffs.fs.keeper`) must answer for the
inodes the kernel already holds.

Layers are keyed by their blob digest: the same blob used at different depths
of different images is one directory.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterable
from typing import Any

import attrs

#: Layer inodes start here; everything below belongs to the URL namespace.
LAYER_INODE_BASE = 1 << 62
#: The directory holding one subdirectory per layer.
LAYERS_ROOT_INODE = LAYER_INODE_BASE
#: Inodes per layer slot (entries of one layer, implied directories included).
SLOT_SIZE = 1 << 36
MAX_SLOTS = 1 << 25

_KIND_BITS = {
    "reg": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


@attrs.define(eq=False)
class LayerNode:
    inode: int
    name: str
    kind: str
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: float = 0.0
    link_target: str = ""
    rdev: int = 0
    xattrs: dict[str, bytes] = attrs.Factory(dict)
    nlink: int = 1
    children: dict[str, LayerNode] = attrs.Factory(dict)
    #: The reader's entry for a regular file (what ``layer.read`` takes).
    entry: Any = None
    layer: Any = None
    #: The layer's blob digest (for logs and metrics).
    digest: str = ""

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def st_mode(self) -> int:
        return _KIND_BITS[self.kind] | (self.mode & 0o7777)


def _xattrs(raw: Any) -> dict[str, bytes]:
    """A mapping or (name, value) pairs, names and values as str or bytes, as name -> bytes."""
    out = {}
    for key, value in dict(raw or {}).items():
        name = os.fsdecode(key) if isinstance(key, bytes) else str(key)
        out[name] = bytes(value) if isinstance(value, bytes | bytearray) else str(value).encode()
    return out


def _parts(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"layer entry {path!r} climbs out of the layer")
    return parts


class LayerTree:
    """All mounted layers: the inode table and the per-layer directory trees."""

    def __init__(self) -> None:
        self.root = LayerNode(LAYERS_ROOT_INODE, "", "dir", 0o555, nlink=2)
        self._nodes: dict[int, LayerNode] = {self.root.inode: self.root}
        self._layer_inodes: dict[str, list[int]] = {}
        self._slots: dict[int, str] = {}

    def get(self, inode: int) -> LayerNode | None:
        return self._nodes.get(inode)

    def __contains__(self, name: str) -> bool:
        return name in self.root.children

    def slot_taken(self, slot: int) -> bool:
        return slot in self._slots

    def free_slot(self) -> int:
        """The lowest slot no mounted layer uses."""
        return next(s for s in itertools.count(1) if s not in self._slots)

    def add_layer(self, name: str, entries: Iterable[Any], layer: Any, digest: str = "", slot: int = 0) -> LayerNode:
        """Lay out one layer under ``name`` in inode ``slot`` (0: the lowest free); a name is added once."""
        if name in self.root.children:
            return self.root.children[name]
        slot = slot or self.free_slot()
        if not 0 < slot < MAX_SLOTS or slot in self._slots:
            raise ValueError(f"layer slot {slot} is taken or out of range")
        numbers = itertools.count(LAYER_INODE_BASE + slot * SLOT_SIZE)
        made: list[int] = []

        def new(name: str, kind: str, mode: int, **fields: Any) -> LayerNode:
            node = LayerNode(next(numbers), name, kind, mode, **fields)
            self._nodes[node.inode] = node
            made.append(node.inode)
            return node

        try:
            top = self._add_layer(name, entries, layer, digest, new)
        except BaseException:
            for inode in made:
                self._nodes.pop(inode, None)
            raise
        self._layer_inodes[name] = made
        self._slots[slot] = name
        return top

    def _add_layer(self, name: str, entries: Iterable[Any], layer: Any, digest: str, new) -> LayerNode:
        top = new(name, "dir", 0o755, nlink=2, digest=digest)
        by_path: dict[str, LayerNode] = {"": top}
        hardlinks = []

        def directory(parts: list[str]) -> LayerNode:
            key = "/".join(parts)
            node = by_path.get(key)
            if node is None:
                parent = directory(parts[:-1])
                node = new(parts[-1], "dir", 0o755, nlink=2, digest=digest)
                parent.children[parts[-1]] = node
                by_path[key] = node
            if not node.is_dir:
                raise ValueError(f"layer entry {key!r} is used as a directory but is a {node.kind}")
            return node

        for entry in entries:
            parts = _parts(str(entry.path))
            if not parts:  # the layer's "./": its attributes are the top directory's
                top.mode, top.uid, top.gid = int(entry.mode), int(entry.uid), int(entry.gid)
                top.mtime, top.xattrs = float(entry.mtime), _xattrs(getattr(entry, "xattrs", None))
                continue
            kind = str(entry.kind)
            if kind == "hardlink":
                hardlinks.append((parts, entry))
                continue
            if kind not in _KIND_BITS:
                raise ValueError(f"layer entry {entry.path!r} has unknown kind {kind!r}")
            parent = directory(parts[:-1])
            key = "/".join(parts)
            existing = by_path.get(key)
            fields = dict(
                uid=int(entry.uid),
                gid=int(entry.gid),
                size=int(entry.size) if kind == "reg" else 0,
                mtime=float(entry.mtime),
                link_target=str(entry.link_target or "") if kind == "symlink" else "",
                rdev=_rdev(entry) if kind in ("char", "block") else 0,
                xattrs=_xattrs(getattr(entry, "xattrs", None)),
            )
            if existing is not None and existing.is_dir and kind == "dir":
                # a directory implied earlier, now described: keep its inode and children
                existing.mode = int(entry.mode)
                for field, value in fields.items():
                    setattr(existing, field, value)
                continue
            node = new(parts[-1], kind, int(entry.mode), digest=digest, **fields)
            if kind == "reg":
                node.entry, node.layer = entry, layer
            elif kind == "symlink" and not node.size:
                node.size = len(node.link_target.encode())
            parent.children[parts[-1]] = node
            by_path[key] = node
        for parts, entry in hardlinks:
            target = by_path.get("/".join(_parts(str(entry.link_target or ""))))
            if target is None or target.is_dir:
                raise ValueError(f"hard link {entry.path!r} points at {entry.link_target!r}, which is not in the layer")
            directory(parts[:-1]).children[parts[-1]] = target
            by_path["/".join(parts)] = target
            target.nlink += 1
        for node in by_path.values():
            if node.is_dir:
                node.nlink = 2 + sum(1 for c in node.children.values() if c.is_dir)
        self.root.children[name] = top
        self.root.nlink = 2 + len(self.root.children)
        return top

    def remove_layer(self, name: str) -> bool:
        """Forget a layer (its inodes answer ENOENT from now on)."""
        if self.root.children.pop(name, None) is None:
            return False
        for inode in self._layer_inodes.pop(name, []):
            self._nodes.pop(inode, None)
        self._slots = {s: n for s, n in self._slots.items() if n != name}
        self.root.nlink = 2 + len(self.root.children)
        return True

    def layer_names(self) -> list[str]:
        return sorted(self.root.children)


def _rdev(entry: Any) -> int:
    return os.makedev(int(entry.devmajor or 0), int(entry.devminor or 0))
