"""eStargz layers: the footer, the table of contents, and chunk reads.

An eStargz blob is a gzip of a tar in which every chunk of every file sits in gzip
members of its own, so it can be inflated alone.  The last 51 bytes are an empty gzip
member whose extra field says ``%016xSTARGZ``: the offset of the member that holds
the TOC (``stargz.index.json``, the tar's last entry).  The layer annotation
``containerd.io/snapshot/stargz/toc.digest`` pins the TOC's sha256; every chunk's
sha256 is in the TOC, and is checked on every read — the blob itself is never checked
whole by a lazy reader.

The TOC comes from registries and peers, so :func:`parse_toc` is pure and trusts
nothing: it yields a validated :class:`~dffs.layers.tree.LayerIndex` (the same tree
semantics as a tar scan: whiteouts, opaque dirs, hard links) or a
:class:`LayerFormatError`.  A TOC that lies about offsets is caught when a chunk does
not inflate, is short, or fails its digest.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime
import hashlib
import io
import json
import re
import tarfile
import zlib
from typing import Any

import attrs
import trio

from dffs.layers.errors import LayerDigestError, LayerFormatError
from dffs.layers.fetch import Fetch, fetch_exact
from dffs.layers.tree import Chunk, Entry, Format, Kind, LayerIndex, TreeBuilder

TOC_NAME = "stargz.index.json"
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47
#: Bounds on what a TOC may cost before it is trusted.
MAX_TOC_COMPRESSED = 64 << 20
MAX_TOC_JSON = 256 << 20
MAX_ENTRIES = 4_000_000
_OFFSET_RE = re.compile(rb"([0-9a-f]{16})STARGZ")
_TOC_KINDS = {
    "reg": Kind.REG,
    "dir": Kind.DIR,
    "symlink": Kind.SYMLINK,
    "hardlink": Kind.HARDLINK,
    "char": Kind.CHAR,
    "block": Kind.BLOCK,
    "fifo": Kind.FIFO,
}


def parse_footer(tail: bytes) -> int | None:
    """The TOC offset from a blob's last bytes (eStargz 51, or legacy stargz 47), or None."""
    for size, extra_at in ((FOOTER_SIZE, 16), (LEGACY_FOOTER_SIZE, 12)):
        if len(tail) < size:
            continue
        footer = tail[-size:]
        if footer[:4] != b"\x1f\x8b\x08\x04":
            continue
        if size == FOOTER_SIZE and footer[12:14] != b"SG":
            continue
        match = _OFFSET_RE.fullmatch(footer[extra_at : extra_at + 22])
        if match:
            return int(match.group(1), 16)
    return None


def footer_size(tail: bytes) -> int:
    return FOOTER_SIZE if len(tail) >= FOOTER_SIZE and tail[-FOOTER_SIZE:][12:14] == b"SG" else LEGACY_FOOTER_SIZE


def _gunzip(data: bytes, limit: int, what: str) -> bytes:
    """Inflate the gzip member(s) in ``data``, at most ``limit`` bytes of output."""
    out = bytearray()
    rest = data
    while rest and len(out) < limit:
        inflater = zlib.decompressobj(31)
        try:
            out += inflater.decompress(rest, limit - len(out))
        except zlib.error as err:
            raise LayerFormatError(f"{what} does not inflate: {err}") from None
        if not inflater.eof:
            if inflater.unconsumed_tail:
                break  # the limit was reached
            raise LayerFormatError(f"{what} is truncated")
        rest = inflater.unused_data
    return bytes(out)


@attrs.frozen
class Toc:
    json: bytes
    offset: int  # where the TOC's gzip member starts in the blob
    end: int  # where the footer starts
    inner_offset: int  # where the JSON starts in the member's inflated tar


def extract_toc(region: bytes, offset: int, end: int) -> Toc:
    """The TOC JSON from the blob bytes ``[offset, end)`` (its gzip member)."""
    raw = _gunzip(region, MAX_TOC_JSON + 4096, "eStargz TOC")
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
            member = archive.next()
            if member is None or member.name != TOC_NAME or not member.isreg():
                raise LayerFormatError(f"eStargz TOC member is not {TOC_NAME}")
            if member.size > MAX_TOC_JSON:
                raise LayerFormatError(f"eStargz TOC is larger than {MAX_TOC_JSON} bytes")
            start = member.offset_data
    except tarfile.TarError as err:
        raise LayerFormatError(f"eStargz TOC is not a tar entry: {err}") from None
    payload = raw[start : start + member.size]
    if len(payload) != member.size:
        raise LayerFormatError("eStargz TOC is truncated")
    return Toc(payload, offset, end, start)


def _int(value: Any, what: str, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 1 << 63:
        raise LayerFormatError(f"eStargz TOC: {what} is not a non-negative integer")
    return value


def _str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise LayerFormatError(f"eStargz TOC: {what} is not a string")
    return value


def _mtime(value: Any, what: str) -> float:
    text = _str(value, what)
    if not text:
        return 0.0
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        raise LayerFormatError(f"eStargz TOC: {what} {text[:40]!r} is not an RFC 3339 time") from None


def _xattrs(value: Any, what: str) -> dict[bytes, bytes]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LayerFormatError(f"eStargz TOC: {what} is not an object")
    out = {}
    for name, encoded in value.items():
        try:
            out[name.encode("utf-8", "surrogateescape")] = base64.b64decode(_str(encoded, what), validate=True)
        except (binascii.Error, ValueError):
            raise LayerFormatError(f"eStargz TOC: {what} value is not base64") from None
    return out


def parse_toc(toc: Toc, *, blob_size: int, blob_digest: str = "") -> LayerIndex:
    """A validated tree from a TOC (see the module docstring)."""
    try:
        doc = json.loads(toc.json)
    except (ValueError, RecursionError) as err:
        raise LayerFormatError(f"eStargz TOC is not JSON: {str(err)[:200]}") from None
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("entries"), list):
        raise LayerFormatError("eStargz TOC is not a version 1 table of contents")
    raw_entries = doc["entries"]
    if len(raw_entries) > MAX_ENTRIES:
        raise LayerFormatError(f"eStargz TOC has more than {MAX_ENTRIES} entries")
    if not toc.offset < toc.end <= blob_size:
        raise LayerFormatError("eStargz TOC lies outside the blob")

    # Pass 1: entries in tar order with their chunks (chunk entries follow their file).
    members: list[dict[str, Any]] = []
    chunk_starts = {toc.offset}
    last_reg: dict[str, Any] | None = None
    for number, raw in enumerate(raw_entries):
        what = f"entry {number}"
        if not isinstance(raw, dict):
            raise LayerFormatError(f"eStargz TOC: {what} is not an object")
        name = _str(raw.get("name"), f"{what} name")
        kind_name = _str(raw.get("type"), f"{what} type")
        if kind_name == "chunk":
            if last_reg is None or last_reg["name"] != name:
                raise LayerFormatError(f"eStargz TOC: chunk {what} follows no file named {name[:200]!r}")
            last_reg["chunks"].append(_chunk_fields(raw, what, toc))
            chunk_starts.add(last_reg["chunks"][-1][2])
            continue
        kind = _TOC_KINDS.get(kind_name)
        if kind is None:
            raise LayerFormatError(f"eStargz TOC: {what} has unknown type {kind_name[:40]!r}")
        member: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "mode": _int(raw.get("mode"), f"{what} mode") & 0o7777,
            "uid": _int(raw.get("uid"), f"{what} uid"),
            "gid": _int(raw.get("gid"), f"{what} gid"),
            "size": _int(raw.get("size"), f"{what} size") if kind is Kind.REG else 0,
            "mtime": _mtime(raw.get("modtime"), f"{what} modtime"),
            "link_target": _str(raw.get("linkName"), f"{what} linkName"),
            "devmajor": _int(raw.get("devMajor"), f"{what} devMajor"),
            "devminor": _int(raw.get("devMinor"), f"{what} devMinor"),
            "xattrs": _xattrs(raw.get("xattrs"), f"{what} xattrs"),
            "chunks": [],
        }
        if kind is Kind.REG:
            last_reg = member
            if member["size"]:
                member["chunks"].append(_chunk_fields(raw, what, toc))
                chunk_starts.add(member["chunks"][-1][2])
        else:
            last_reg = None
        members.append(member)

    # Pass 2: each chunk's compressed data ends where the next one (or the TOC) starts.
    starts = sorted(chunk_starts)
    following = {start: starts[i + 1] if i + 1 < len(starts) else toc.end for i, start in enumerate(starts)}
    builder = TreeBuilder()
    for member in members:
        chunks = []
        position = 0
        raw_chunks = member.pop("chunks")
        for file_offset, size, blob_offset, inner, digest in raw_chunks:
            if size == 0:  # "the rest of the file" (a file in one chunk)
                size = member["size"] - file_offset
            if file_offset != position or size <= 0:
                raise LayerFormatError(f"eStargz TOC: chunks of {member['name'][:200]!r} do not cover the file")
            chunks.append(Chunk(file_offset, size, blob_offset, following[blob_offset], inner, digest))
            position += size
        builder.add(member.pop("name"), member.pop("kind"), chunks=chunks, **member)
    toc_chunk = Chunk(0, len(toc.json), toc.offset, toc.end, toc.inner_offset, _sha256(toc.json))
    builder.add(TOC_NAME, Kind.REG, mode=0, size=len(toc.json), mtime=0, chunks=[toc_chunk] if toc.json else [])
    return builder.finish(format=Format.ESTARGZ, blob_digest=blob_digest, blob_size=blob_size)


def _chunk_fields(raw: dict[str, Any], what: str, toc: Toc) -> tuple[int, int, int, int, str]:
    blob_offset = _int(raw.get("offset"), f"{what} offset")
    if blob_offset >= toc.offset:
        raise LayerFormatError(f"eStargz TOC: {what} data at {blob_offset} is not before the TOC")
    digest = _str(raw.get("chunkDigest"), f"{what} chunkDigest")
    return (
        _int(raw.get("chunkOffset"), f"{what} chunkOffset"),
        _int(raw.get("chunkSize"), f"{what} chunkSize"),
        blob_offset,
        _int(raw.get("innerOffset"), f"{what} innerOffset"),
        digest,
    )


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def load_toc(fetch: Fetch, size: int, *, toc_digest: str | None = None, blob_digest: str = "") -> LayerIndex:
    """Fetch the footer and the TOC of an eStargz blob of ``size`` bytes; return its tree."""
    label = f"layer {blob_digest}" if blob_digest else "eStargz layer"
    if size < LEGACY_FOOTER_SIZE:
        raise LayerFormatError(f"{label}: {size} bytes is too short for an eStargz footer")
    tail_size = min(size, FOOTER_SIZE)
    tail = await fetch_exact(fetch, blob_digest, size - tail_size, tail_size)
    offset = parse_footer(tail)
    if offset is None:
        raise LayerFormatError(f"{label}: no eStargz footer")
    end = size - footer_size(tail)
    if not 0 <= offset < end:
        raise LayerFormatError(f"{label}: footer points the TOC at {offset}, outside the blob")
    if end - offset > MAX_TOC_COMPRESSED:
        raise LayerFormatError(f"{label}: TOC of {end - offset} bytes is larger than {MAX_TOC_COMPRESSED}")
    region = await fetch_exact(fetch, blob_digest, offset, end - offset)
    toc = extract_toc(region, offset, end)
    if toc_digest is not None and _sha256(toc.json) != toc_digest:
        raise LayerDigestError(f"{label}: TOC is {_sha256(toc.json)}, the annotation says {toc_digest}")
    return parse_toc(toc, blob_size=size, blob_digest=blob_digest)


class EStargzReader:
    """Reads files of an eStargz layer chunk by chunk, each chunk checked against its digest.

    Decoded chunks are kept in a byte-bounded LRU cache (a FUSE reader asks for 128 KiB
    at a time of 4 MiB chunks), and one fetch per chunk serves concurrent readers."""

    #: Inflating this much goes to a worker thread, off the event loop.
    THREAD_THRESHOLD = 256 << 10

    def __init__(self, index: LayerIndex, fetch: Fetch, *, cache_bytes: int = 32 << 20) -> None:
        self.index = index
        self._fetch = fetch
        self._cache: collections.OrderedDict[Chunk, bytes] = collections.OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0
        self._inflight: dict[Chunk, trio.Event] = {}
        self.bytes_fetched = 0

    async def read(self, entry: Entry, offset: int, size: int) -> bytes:
        end = min(offset + size, entry.size)
        out = bytearray()
        for chunk in entry.chunks:
            chunk_end = chunk.file_offset + chunk.size
            if chunk_end <= offset or chunk.file_offset >= end:
                continue
            data = await self._chunk(entry, chunk)
            out += data[max(0, offset - chunk.file_offset) : min(chunk.size, end - chunk.file_offset)]
        return bytes(out)

    async def _chunk(self, entry: Entry, chunk: Chunk) -> bytes:
        while True:
            cached = self._cache.get(chunk)
            if cached is not None:
                self._cache.move_to_end(chunk)
                return cached
            event = self._inflight.get(chunk)
            if event is None:
                break
            await event.wait()  # another reader fetches it; take it from the cache (or try ourselves)
        event = self._inflight[chunk] = trio.Event()
        try:
            data = await self._load(entry, chunk)
            self._remember(chunk, data)
            return data
        finally:
            del self._inflight[chunk]
            event.set()

    async def _load(self, entry: Entry, chunk: Chunk) -> bytes:
        digest = self.index.blob_digest
        length = chunk.blob_end - chunk.blob_offset
        compressed = await fetch_exact(self._fetch, digest, chunk.blob_offset, length)
        self.bytes_fetched += length
        what = f"layer {digest}: chunk of {entry.path[:200]!r} at {chunk.blob_offset}"
        want = chunk.inner_offset + chunk.size
        if length >= self.THREAD_THRESHOLD:
            raw = await trio.to_thread.run_sync(_gunzip, compressed, want, what)
        else:
            raw = _gunzip(compressed, want, what)
        data = raw[chunk.inner_offset : want]
        if len(data) != chunk.size:
            raise LayerFormatError(f"{what} holds {len(data)} of its {chunk.size} bytes")
        if _sha256(data) != chunk.digest:
            raise LayerDigestError(f"{what} does not match its digest {chunk.digest}")
        return data

    def _remember(self, chunk: Chunk, data: bytes) -> None:
        if len(data) > self._cache_bytes:
            return
        self._cache[chunk] = data
        self._cached += len(data)
        while self._cached > self._cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= len(dropped)
