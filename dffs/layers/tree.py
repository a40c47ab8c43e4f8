"""A layer's file tree: one immutable :class:`Entry` per path, held by a :class:`LayerIndex`.

Pure: no I/O of its own.  :class:`TreeBuilder` applies the members of a layer in
tar order with the semantics containerd's overlayfs unpacking has, so that the tree
is what overlayfs expects to find in a layer's directory:

- ``D/.wh.NAME`` becomes a character device 0/0 named ``D/NAME`` (mode 0, owner from
  the whiteout's header); ``D/.wh..wh..opq`` sets ``trusted.overlay.opaque=y`` on ``D``;
  other ``.wh..wh.*`` names (aufs metadata) are dropped with everything under them;
  none of them is listed.
- a later member replaces an earlier one at the same path, except that a directory
  over a directory keeps its children and merges its xattrs;
- parents a tar never lists are *implied* directories (0755, root-owned);
- a hard link resolves to the entry whose bytes it shares (:meth:`LayerIndex.resolve`)
  and counts in its link count.  Links to files outside the layer, or whose target was
  replaced later in the layer, are :class:`NotLazy`: only unpacking gets those right.

:func:`scan_tar` feeds a tar stream through ``tarfile`` (PAX long names and
``SCHILY.xattr.*`` records, GNU long names, base-256 numbers all handled there).

The same :class:`LayerIndex` constructor validates whatever reaches it — a scan, a
TOC from a registry, an index decoded from a peer — so every consumer can rely on its
invariants: unique normalized paths, parents that are directories, hard links to
non-directories in the tree, data inside the stream.
"""

from __future__ import annotations

import enum
import math
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import attrs

from dffs.layers.errors import LayerFormatError, NotLazy

OPAQUE_XATTR = b"trusted.overlay.opaque"
WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"

#: Linux limits: a name a filesystem can present, an xattr value it can hold.
NAME_MAX = 255
PATH_MAX = 4096
XATTR_SIZE_MAX = 65536
_UINT32 = 1 << 32
_UINT64 = 1 << 64
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


class Kind(enum.StrEnum):
    REG = "reg"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


class Format(enum.StrEnum):
    """How a blob stores its tar stream (what ``Entry.offset`` / ``Entry.chunks`` mean)."""

    TAR = "tar"
    GZIP = "gzip"
    ESTARGZ = "estargz"


@attrs.frozen
class Chunk:
    """eStargz: bytes ``[file_offset, file_offset + size)`` of a file are bytes
    ``[inner_offset, inner_offset + size)`` of the gzip data in ``[blob_offset, blob_end)``."""

    file_offset: int
    size: int
    blob_offset: int
    blob_end: int
    inner_offset: int
    digest: str


@attrs.frozen
class Entry:
    """One path of the layer, as the tar member (or TOC entry) that made it says.

    ``path`` is relative with no leading slash (the root is ``""``) and may hold
    surrogate escapes for non-UTF-8 bytes (``os.fsencode`` gives the name back).
    ``mode`` is the permission bits only (07777); ``size`` is 0 except for regular
    files; ``link_target`` is a symlink's target as written, or for a hard link the
    path of the entry it shares bytes with.  ``offset`` is where a regular file's
    bytes start in the uncompressed tar (tar and gzip layers); ``chunks`` are where
    they are in an eStargz blob.  ``xattrs`` are (name, value) pairs sorted by name.
    """

    path: str
    kind: Kind
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: float = attrs.field(default=0.0, converter=float)
    link_target: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    offset: int = 0
    chunks: tuple[Chunk, ...] = ()
    implied: bool = False

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def parent(self) -> str:
        return self.path.rpartition("/")[0]

    def xattr(self, name: bytes) -> bytes | None:
        for key, value in self.xattrs:
            if key == name:
                return value
        return None


def normalize_path(name: str) -> str:
    """A member name as a layer path: no leading ``/`` or ``./``, no empty or ``.``
    components.  ``..`` anywhere is refused: no layer may write outside its root."""
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise LayerFormatError(f"member {name[:200]!r} leaves the layer root")
        parts.append(part)
    return "/".join(parts)


def _split(path: str) -> tuple[str, str]:
    parent, _, base = path.rpartition("/")
    return parent, base


def _sorted_xattrs(xattrs: Mapping[bytes, bytes]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(sorted(xattrs.items()))


class LayerIndex:
    """The validated, immutable tree of one layer blob.

    ``entries`` are sorted by path (so the root comes first and parents before their
    children); :meth:`lookup`, :meth:`children`, :meth:`resolve` and :meth:`nlink` are
    what a filesystem needs.  Construction checks every invariant and raises
    :class:`LayerFormatError` naming the first broken one.
    """

    def __init__(
        self,
        entries: Iterable[Entry],
        *,
        format: Format,
        blob_digest: str = "",
        blob_size: int = 0,
        tar_size: int = 0,
    ) -> None:
        self.format = Format(format)
        self.blob_digest = blob_digest
        self.blob_size = blob_size
        self.tar_size = tar_size
        ordered = sorted(entries, key=lambda e: e.path)
        self.entries: tuple[Entry, ...] = tuple(ordered)
        self._by_path: dict[str, Entry] = {}
        self._children: dict[str, list[str]] = {}
        self._links: dict[str, int] = {}
        self._subdirs: dict[str, int] = {}
        self._validate()

    # ----------------------------------------------------------------- queries
    @property
    def root(self) -> Entry:
        return self.entries[0]

    def lookup(self, path: str) -> Entry | None:
        return self._by_path.get(path)

    def __contains__(self, path: object) -> bool:
        return path in self._by_path

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def children(self, path: str) -> tuple[Entry, ...]:
        """The entries directly inside directory ``path``, sorted by name."""
        prefix = f"{path}/" if path else ""
        return tuple(self._by_path[prefix + name] for name in self._children.get(path, ()))

    def resolve(self, entry: Entry) -> Entry:
        """The entry that holds a hard link's bytes and attributes; any other entry itself."""
        if entry.kind is Kind.HARDLINK:
            return self._by_path[entry.link_target]
        return entry

    def nlink(self, entry: Entry) -> int:
        """Link count as a filesystem shows it: 2 + subdirectories for a directory,
        1 + hard links for anything else (a hard link counts like its target)."""
        target = self.resolve(entry)
        if target.kind is Kind.DIR:
            return 2 + self._subdirs.get(target.path, 0)
        return 1 + self._links.get(target.path, 0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayerIndex):
            return NotImplemented
        return (self.format, self.blob_digest, self.blob_size, self.tar_size, self.entries) == (
            other.format,
            other.blob_digest,
            other.blob_size,
            other.tar_size,
            other.entries,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LayerIndex({self.format}, {self.blob_digest or '?'}, {len(self.entries)} entries)"

    # -------------------------------------------------------------- validation
    def _bad(self, message: str) -> LayerFormatError:
        where = f"layer {self.blob_digest}" if self.blob_digest else "layer index"
        return LayerFormatError(f"{where}: {message}")

    def _validate(self) -> None:
        if self.blob_digest and not _DIGEST_RE.fullmatch(self.blob_digest):
            raise self._bad(f"blob digest {self.blob_digest[:80]!r} is not sha256:<hex>")
        for value, what in ((self.blob_size, "blob size"), (self.tar_size, "tar size")):
            if not 0 <= value < _UINT64:
                raise self._bad(f"{what} {value} out of range")
        if not self.entries or self.entries[0].path != "" or self.entries[0].kind is not Kind.DIR:
            raise self._bad("no root directory")
        for entry in self.entries:
            if entry.path in self._by_path:
                raise self._bad(f"{entry.path[:200]!r} listed twice")
            self._check_entry(entry)
            self._by_path[entry.path] = entry
            if entry.path:
                parent, base = _split(entry.path)
                above = self._by_path.get(parent)
                if above is None or above.kind is not Kind.DIR:
                    raise self._bad(f"{entry.path[:200]!r} is not inside a directory")
                self._children.setdefault(parent, []).append(base)
                if entry.kind is Kind.DIR:
                    self._subdirs[parent] = self._subdirs.get(parent, 0) + 1
        for entry in self.entries:
            if entry.kind is Kind.HARDLINK:
                target = self._by_path.get(entry.link_target)
                if target is None or target.kind in (Kind.DIR, Kind.HARDLINK):
                    raise self._bad(f"hard link {entry.path[:200]!r} names no file of the layer")
                self._links[target.path] = self._links.get(target.path, 0) + 1
        for names in self._children.values():
            names.sort()

    def _check_entry(self, e: Entry) -> None:
        path = e.path
        label = repr(path[:200])
        if path:
            if len(path.encode("utf-8", "surrogateescape")) > PATH_MAX or "\0" in path:
                raise self._bad(f"path {label} too long or holds NUL")
            for part in path.split("/"):
                if part in ("", ".", "..") or len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
                    raise self._bad(f"path {label} is not normalized")
        if not isinstance(e.kind, Kind):
            raise self._bad(f"{label} has no kind")
        if not 0 <= e.mode <= 0o7777:
            raise self._bad(f"{label} mode {e.mode:o} out of range")
        if not (0 <= e.uid < _UINT32 and 0 <= e.gid < _UINT32):
            raise self._bad(f"{label} owner out of range")
        if not (0 <= e.devmajor < _UINT32 and 0 <= e.devminor < _UINT32):
            raise self._bad(f"{label} device numbers out of range")
        if not math.isfinite(e.mtime):
            raise self._bad(f"{label} mtime is not a number")
        if not (0 <= e.size < _UINT64 and 0 <= e.offset < _UINT64):
            raise self._bad(f"{label} size or offset out of range")
        names = [name for name, _ in e.xattrs]
        if names != sorted(set(names)):
            raise self._bad(f"{label} xattrs not sorted or repeated")
        for name, value in e.xattrs:
            if not name or b"\0" in name or len(name) > NAME_MAX or len(value) > XATTR_SIZE_MAX:
                raise self._bad(f"{label} has an invalid xattr")
        if e.kind is Kind.SYMLINK:
            target = e.link_target.encode("utf-8", "surrogateescape")
            if not target or b"\0" in target or len(target) > PATH_MAX:
                raise self._bad(f"symlink {label} has an invalid target")
        elif e.kind is not Kind.HARDLINK and e.link_target:
            raise self._bad(f"{label} is a {e.kind} with a link target")
        if e.kind is not Kind.REG:
            if e.size or e.offset or e.chunks:
                raise self._bad(f"{label} is a {e.kind} with data")
            return
        if self.format is Format.ESTARGZ:
            self._check_chunks(e, label)
        else:
            if e.chunks:
                raise self._bad(f"{label} has chunks in a {self.format} layer")
            if e.offset + e.size > self.tar_size:
                raise self._bad(f"{label} data [{e.offset}, +{e.size}) runs past the tar's end {self.tar_size}")

    def _check_chunks(self, e: Entry, label: str) -> None:
        if e.offset:
            raise self._bad(f"{label} has a tar offset in an estargz layer")
        expected = 0
        for chunk in e.chunks:
            if chunk.file_offset != expected or chunk.size <= 0:
                raise self._bad(f"{label} chunks do not cover the file in order")
            if not (0 <= chunk.blob_offset < chunk.blob_end <= self.blob_size and 0 <= chunk.inner_offset < _UINT64):
                raise self._bad(f"{label} chunk at {chunk.blob_offset} lies outside the blob")
            if not _DIGEST_RE.fullmatch(chunk.digest):
                raise self._bad(f"{label} chunk digest {chunk.digest[:80]!r} is not sha256:<hex>")
            expected += chunk.size
        if expected != e.size:
            raise self._bad(f"{label} chunks hold {expected} bytes of {e.size}")


# ---------------------------------------------------------------------- builder
class TreeBuilder:
    """Applies layer members in stream order (see the module docstring) and makes the
    :class:`LayerIndex`.  Used by :func:`scan_tar` and the eStargz TOC parser alike."""

    def __init__(self) -> None:
        self._nodes: dict[str, Entry] = {"": Entry("", Kind.DIR, mode=0o755, implied=True)}
        self._children: dict[str, set[str]] = {"": set()}
        self._ino: dict[str, int] = {"": 0}
        self._next_ino = 1

    def add(
        self,
        name: str,
        kind: Kind,
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        size: int = 0,
        mtime: float = 0.0,
        link_target: str = "",
        devmajor: int = 0,
        devminor: int = 0,
        xattrs: Mapping[bytes, bytes] | None = None,
        offset: int = 0,
        chunks: Sequence[Chunk] = (),
    ) -> None:
        """Apply one member named ``name`` (as written in the tar)."""
        path = normalize_path(name)
        parent, base = _split(path)
        mode &= 0o7777
        if base == WHITEOUT_OPAQUE:
            directory = self._ensure_dir(parent)
            merged = dict(directory.xattrs)
            merged[OPAQUE_XATTR] = b"y"
            self._nodes[parent] = attrs.evolve(directory, xattrs=_sorted_xattrs(merged))
            return
        if any(part.startswith(WHITEOUT_META_PREFIX) for part in path.split("/")):
            return  # aufs metadata (.wh..wh.plnk/...): not part of the filesystem
        if base.startswith(WHITEOUT_PREFIX):
            hidden = base[len(WHITEOUT_PREFIX) :]
            if hidden in ("", ".", ".."):
                raise LayerFormatError(f"whiteout {name[:200]!r} names no file")
            path = f"{parent}/{hidden}" if parent else hidden
            self._put(Entry(path, Kind.CHAR, mode=0, uid=uid, gid=gid, mtime=mtime))
            return
        entry = Entry(
            path,
            kind,
            mode=mode,
            uid=uid,
            gid=gid,
            size=size if kind is Kind.REG else 0,
            mtime=mtime,
            link_target=link_target,
            devmajor=devmajor if kind in (Kind.CHAR, Kind.BLOCK) else 0,
            devminor=devminor if kind in (Kind.CHAR, Kind.BLOCK) else 0,
            xattrs=_sorted_xattrs(xattrs or {}),
            offset=offset if kind is Kind.REG else 0,
            chunks=tuple(chunks) if kind is Kind.REG else (),
        )
        if not path:
            if kind is not Kind.DIR:
                raise LayerFormatError(f"member {name[:200]!r} makes the layer root a {kind}")
            self._merge_dir(path, entry)
            return
        if kind is Kind.HARDLINK:
            target = normalize_path(link_target)
            if target == path:
                raise LayerFormatError(f"hard link {path[:200]!r} names itself")
            found = self._nodes.get(target)
            if found is None:
                raise NotLazy(f"hard link {path[:200]!r} names {target[:200]!r}, which is not in this layer")
            if found.kind is Kind.DIR:
                raise LayerFormatError(f"hard link {path[:200]!r} names directory {target[:200]!r}")
            self._put(attrs.evolve(entry, link_target=target), ino=self._ino[target])
            return
        self._put(entry)

    def _ensure_dir(self, path: str) -> Entry:
        """The directory at ``path``, made (with implied parents) if the layer never listed it."""
        node = self._nodes.get(path)
        if node is not None:
            if node.kind is Kind.DIR:
                return node
            if node.kind in (Kind.SYMLINK, Kind.HARDLINK):
                raise NotLazy(f"a member is written through link {path[:200]!r}")
            raise LayerFormatError(f"a member is inside {path[:200]!r}, which is a {node.kind}")
        parent, _ = _split(path)
        self._ensure_dir(parent)
        return self._put(Entry(path, Kind.DIR, mode=0o755, implied=True))

    def _merge_dir(self, path: str, entry: Entry) -> None:
        old = self._nodes[path]
        merged = dict(old.xattrs)
        merged.update(entry.xattrs)
        self._nodes[path] = attrs.evolve(entry, xattrs=_sorted_xattrs(merged))

    def _put(self, entry: Entry, ino: int | None = None) -> Entry:
        path = entry.path
        parent, base = _split(path)
        self._ensure_dir(parent)
        old = self._nodes.get(path)
        if old is not None:
            if old.kind is Kind.DIR and entry.kind is Kind.DIR:
                self._merge_dir(path, entry)
                return self._nodes[path]
            self._remove(path)
        self._nodes[path] = entry
        self._children[parent].add(base)
        if entry.kind is Kind.DIR:
            self._children[path] = set()
        if ino is None:
            ino = self._next_ino
            self._next_ino += 1
        self._ino[path] = ino
        return entry

    def _remove(self, path: str) -> None:
        for name in list(self._children.get(path, ())):
            self._remove(f"{path}/{name}" if path else name)
        self._children.pop(path, None)
        del self._nodes[path]
        del self._ino[path]
        parent, base = _split(path)
        self._children[parent].discard(base)

    def finish(self, *, format: Format, blob_digest: str = "", blob_size: int = 0, tar_size: int = 0) -> LayerIndex:
        """The validated index.  Hard links point at the path that holds their bytes now."""
        primary = {self._ino[p]: p for p, e in self._nodes.items() if e.kind is not Kind.HARDLINK}
        entries = []
        for path, entry in self._nodes.items():
            if entry.kind is Kind.HARDLINK:
                target = primary.get(self._ino[path])
                if target is None:
                    raise NotLazy(f"hard link {path[:200]!r}: its target was replaced later in the layer")
                entry = attrs.evolve(entry, link_target=target)
            entries.append(entry)
        return LayerIndex(entries, format=format, blob_digest=blob_digest, blob_size=blob_size, tar_size=tar_size)


# ------------------------------------------------------------------- tar scans
_KINDS = {
    tarfile.REGTYPE: Kind.REG,
    tarfile.AREGTYPE: Kind.REG,
    tarfile.CONTTYPE: Kind.REG,
    tarfile.DIRTYPE: Kind.DIR,
    tarfile.SYMTYPE: Kind.SYMLINK,
    tarfile.LNKTYPE: Kind.HARDLINK,
    tarfile.CHRTYPE: Kind.CHAR,
    tarfile.BLKTYPE: Kind.BLOCK,
    tarfile.FIFOTYPE: Kind.FIFO,
}
_XATTR_PAX = "SCHILY.xattr."
#: tarfile reads streams in blocks of this size: its default (10 KiB) costs a call per 10 KiB skipped, and
#: a large one a copy of the buffer per header read.
_TAR_BUFFER = 64 << 10


def _pax_bytes(value: str) -> bytes:
    # tarfile decodes PAX values as UTF-8, falling back to surrogate escapes: reversible.
    return value.encode("utf-8", "surrogateescape")


def add_tarinfo(builder: TreeBuilder, info: tarfile.TarInfo) -> None:
    """Apply one ``tarfile`` member (its header only; the data stays where it is)."""
    if info.sparse is not None or info.type == tarfile.GNUTYPE_SPARSE:
        raise NotLazy(f"sparse member {info.name[:200]!r} cannot be read lazily")
    kind = _KINDS.get(info.type)
    if kind is None:
        raise LayerFormatError(f"member {info.name[:200]!r} has unsupported tar type {info.type!r}")
    xattrs = {
        _pax_bytes(key[len(_XATTR_PAX) :]): _pax_bytes(value)
        for key, value in info.pax_headers.items()
        if key.startswith(_XATTR_PAX)
    }
    builder.add(
        info.name,
        kind,
        mode=info.mode,
        uid=info.uid,
        gid=info.gid,
        size=info.size,
        mtime=info.mtime,
        link_target=info.linkname,
        devmajor=info.devmajor,
        devminor=info.devminor,
        xattrs=xattrs,
        offset=info.offset_data,
    )


class _Counting:
    """A read-only stream that counts what it handed out: the tar's length."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


def scan_tar(
    stream: BinaryIO,
    *,
    format: Format = Format.TAR,
    blob_digest: str = "",
    blob_size: int = 0,
    seekable_size: int | None = None,
) -> LayerIndex:
    """Read a tar's headers and return its index; offsets are stream offsets.

    By default ``stream`` needs only ``read``: it is read front to back, data skipped
    by reading, and its length is the tar's length.  With ``seekable_size`` (the
    stream's length) data is skipped by seeking, so only headers are read."""
    counting = _Counting(stream)
    builder = TreeBuilder()
    mode = "r:" if seekable_size is not None else "r|"
    source: Any = stream if seekable_size is not None else counting
    try:
        with tarfile.open(  # type: ignore[call-overload]
            fileobj=source, mode=mode, bufsize=_TAR_BUFFER, encoding="utf-8", errors="surrogateescape"
        ) as archive:
            for info in archive:
                add_tarinfo(builder, info)
        if seekable_size is None:
            while counting.read(1 << 20):
                pass
    except tarfile.ReadError as err:
        if "empty file" in str(err) and counting.count == 0 and not seekable_size:
            pass  # a zero-length stream is an empty layer, as for containerd
        else:
            raise LayerFormatError(f"bad tar stream: {err}") from None
    except (tarfile.TarError, EOFError, ValueError, OverflowError) as err:
        raise LayerFormatError(f"bad tar stream: {err}") from None
    tar_size = seekable_size if seekable_size is not None else counting.count
    return builder.finish(format=format, blob_digest=blob_digest, blob_size=blob_size, tar_size=tar_size)
