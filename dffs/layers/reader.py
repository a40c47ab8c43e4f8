"""One reader interface over every layer format: :func:`open_layer` and :func:`build_index`.

``open_layer`` picks the format from the layer descriptor (media type and
annotations) and returns a :class:`Layer`; ``layer.index`` is the tree and
``await layer.read(entry, offset, size)`` the bytes, fetched by range through the
``fetch(offset, length) -> bytes`` the caller gives (the blob's P2P task in the daemon).

==========================  =====================================================
media type                  how it is read
==========================  =====================================================
``…tar`` (uncompressed)     index = the tar's headers; reads are direct ranges
``…tar+gzip`` + TOC digest  eStargz: the TOC from the blob, chunks checked
``…tar+gzip`` + an index    unmodified gzip: checkpoints + tar table (``build_index``)
``…tar+gzip``, no index     eStargz if the blob has its footer, else :class:`IndexRequired`
``…tar+zstd``               :class:`NotLazy` (zstd:chunked is not supported: unpack it)
==========================  =====================================================
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping

import trio

from dffs.errors import DffsError
from dffs.layers import codec, estargz
from dffs.layers.errors import IndexRequired, LayerDigestError, LayerError, LayerFormatError, NotLazy
from dffs.layers.fetch import Fetch, fetch_exact
from dffs.layers.gzindex import DEFAULT_SPACING, GzipIndex, GzipReader, build_gzip_index
from dffs.layers.tree import Entry, Format, Kind, LayerIndex, scan_tar

TAR_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar",
    }
)
GZIP_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
ZSTD_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


def layer_format(media_type: str, annotations: Mapping[str, str] | None = None) -> Format:
    """The format a descriptor says (eStargz needs its TOC annotation to be known here)."""
    kind = media_type.split(";", 1)[0].strip().lower()
    if kind in TAR_TYPES:
        return Format.TAR
    if kind in GZIP_TYPES:
        return Format.ESTARGZ if (annotations or {}).get(estargz.TOC_DIGEST_ANNOTATION) else Format.GZIP
    if kind in ZSTD_TYPES:
        raise NotLazy(f"{kind} layers are not read lazily (zstd); unpack them")
    raise NotLazy(f"media type {kind[:100]!r} is not a layer dffs reads lazily")


class Layer:
    """A layer opened for lazy reads.  ``index`` is its tree; ``read`` its bytes."""

    index: LayerIndex

    def __init__(self, index: LayerIndex) -> None:
        self.index = index

    @property
    def format(self) -> Format:
        return self.index.format

    @property
    def bytes_fetched(self) -> int:
        """Blob bytes asked of ``fetch`` so far (for metrics)."""
        raise NotImplementedError

    def index_bytes(self) -> bytes:
        """The index in its wire form, to share (see :mod:`dffs.layers.codec`)."""
        return codec.dumps(self.index)

    async def read(self, entry: Entry, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of regular file ``entry`` (or a hard link to one) from
        ``offset``; short only at the end of the file."""
        target = self.index.resolve(entry)
        if target.kind is not Kind.REG:
            raise LayerError(f"layer {self.index.blob_digest}: {entry.path[:200]!r} is a {target.kind}, not a file")
        if offset < 0 or size < 0:
            raise LayerError(f"layer {self.index.blob_digest}: negative read of {entry.path[:200]!r}")
        if offset >= target.size or size == 0:
            return b""
        return await self._read(target, offset, min(size, target.size - offset))

    async def _read(self, entry: Entry, offset: int, size: int) -> bytes:
        raise NotImplementedError


class TarLayer(Layer):
    def __init__(self, index: LayerIndex, fetch: Fetch) -> None:
        super().__init__(index)
        self._fetch = fetch
        self._fetched = 0

    @property
    def bytes_fetched(self) -> int:
        return self._fetched

    async def _read(self, entry: Entry, offset: int, size: int) -> bytes:
        data = await fetch_exact(self._fetch, self.index.blob_digest, entry.offset + offset, size)
        self._fetched += size
        return data


class GzipLayer(Layer):
    def __init__(self, index: GzipIndex, fetch: Fetch) -> None:
        super().__init__(index.tree)
        self.gzip_index = index
        self._reader = GzipReader(index, fetch)

    @property
    def bytes_fetched(self) -> int:
        return self._reader.bytes_fetched

    def index_bytes(self) -> bytes:
        return codec.dumps(self.gzip_index)

    async def _read(self, entry: Entry, offset: int, size: int) -> bytes:
        return await self._reader.read(entry.offset + offset, size)


class EStargzLayer(Layer):
    def __init__(self, index: LayerIndex, fetch: Fetch) -> None:
        super().__init__(index)
        self._reader = estargz.EStargzReader(index, fetch)

    @property
    def bytes_fetched(self) -> int:
        return self._reader.bytes_fetched

    async def _read(self, entry: Entry, offset: int, size: int) -> bytes:
        return await self._reader.read(entry, offset, size)


async def open_layer(
    media_type: str,
    annotations: Mapping[str, str] | None,
    fetch: Fetch,
    size: int,
    index_bytes: bytes | None = None,
    *,
    digest: str | None = None,
) -> Layer:
    """Open a layer blob of ``size`` bytes for lazy reads (see the module docstring).

    ``index_bytes`` is a shared index (from :func:`build_index` or ``Layer.index_bytes``);
    it must describe this blob (its size, and ``digest`` when given).  eStargz layers
    always read their TOC from the blob, where the annotation pins it."""
    fmt = layer_format(media_type, annotations)
    label = f"layer {digest}" if digest else "layer"
    if fmt is Format.ESTARGZ:
        toc_digest = (annotations or {})[estargz.TOC_DIGEST_ANNOTATION]
        return EStargzLayer(await estargz.load_toc(fetch, size, toc_digest=toc_digest, blob_digest=digest or ""), fetch)
    if index_bytes is not None:
        index = codec.loads(index_bytes)
        tree = index.tree if isinstance(index, GzipIndex) else index
        if tree.blob_size != size or (digest is not None and tree.blob_digest != digest):
            raise LayerFormatError(
                f"{label}: the index describes {tree.blob_digest} of {tree.blob_size} bytes, not this blob ({size})"
            )
        if fmt is Format.TAR and tree.format is Format.TAR:
            return TarLayer(tree, fetch)
        if fmt is Format.GZIP and isinstance(index, GzipIndex):
            return GzipLayer(index, fetch)
        if fmt is Format.GZIP and tree.format is Format.ESTARGZ:
            return EStargzLayer(tree, fetch)
        raise LayerFormatError(f"{label}: the index is for a {tree.format} layer, the descriptor says {fmt}")
    if fmt is Format.TAR:
        return TarLayer(await scan_remote_tar(fetch, size, digest=digest or ""), fetch)
    # gzip without an index: eStargz converted without its annotation still has its footer.
    if size >= estargz.LEGACY_FOOTER_SIZE:
        tail_size = min(size, estargz.FOOTER_SIZE)
        tail = await fetch_exact(fetch, digest or "", size - tail_size, tail_size)
        if estargz.parse_footer(tail) is not None:
            return EStargzLayer(await estargz.load_toc(fetch, size, blob_digest=digest or ""), fetch)
    raise IndexRequired(f"{label}: a gzip layer needs its index (build_index) to be read lazily")


# ------------------------------------------------------------------ tar scans
class _FetchFile(io.RawIOBase):
    """A blocking, seekable view of the blob for ``tarfile`` on a worker thread: reads
    call ``fetch`` on the event loop, in blocks of ``block`` bytes so that the headers
    of many small files come in one request."""

    def __init__(self, fetch: Fetch, size: int, digest: str, block: int = 128 << 10) -> None:
        super().__init__()
        self._fetch, self._size, self._digest, self._block = fetch, size, digest, block
        self._pos = 0
        self._buf = b""
        self._buf_at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._size - self._pos
        size = min(size, self._size - self._pos)
        if size <= 0:
            return b""
        if not (self._buf_at <= self._pos and self._pos + size <= self._buf_at + len(self._buf)):
            length = min(max(size, self._block), self._size - self._pos)
            self._buf = trio.from_thread.run(fetch_exact, self._fetch, self._digest, self._pos, length)
            self._buf_at = self._pos
        start = self._pos - self._buf_at
        self._pos += size
        return self._buf[start : start + size]


async def scan_remote_tar(fetch: Fetch, size: int, *, digest: str = "") -> LayerIndex:
    """The index of an uncompressed tar layer, from its headers fetched by range."""

    def scan() -> LayerIndex:
        view = _FetchFile(fetch, size, digest)
        return scan_tar(view, format=Format.TAR, blob_digest=digest, blob_size=size, seekable_size=size)  # type: ignore[arg-type]

    return await trio.to_thread.run_sync(scan)


# --------------------------------------------------------------- index builds
class _StreamReader:
    """``read(n)`` for a builder on a worker thread, from an async iterable of chunks."""

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._iterator: AsyncIterator[bytes] = aiter(chunks)
        self._rest = b""
        self._done = False

    async def _next(self) -> bytes:
        try:
            return bytes(await anext(self._iterator))
        except StopAsyncIteration:
            return b""

    def read(self, size: int = -1) -> bytes:
        while not self._rest and not self._done:
            chunk = trio.from_thread.run(self._next)
            if not chunk:
                self._done = True
            self._rest = chunk
        if size is None or size < 0:
            size = len(self._rest)
        out, self._rest = self._rest[:size], self._rest[size:]
        return out


class _Hashing:
    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.sha256 = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._read(size)
        self.sha256.update(data)
        self.count += len(data)
        return data


async def build_index(
    media_type: str,
    chunks: AsyncIterable[bytes],
    *,
    digest: str | None = None,
    spacing: int = DEFAULT_SPACING,
) -> bytes:
    """Index a layer from its blob streamed front to back (what a seed does while it
    downloads), and return the index's wire form for :func:`open_layer`.

    gzip layers get checkpoints every ``spacing`` uncompressed bytes plus the tar
    table; tar layers their table.  The blob's sha256 is computed on the way and must
    be ``digest`` when given.  eStargz layers need no index (their TOC is in the blob)."""
    fmt = layer_format(media_type, None)
    reader = _StreamReader(chunks)

    def build() -> bytes:
        if fmt is Format.GZIP:
            return codec.dumps(build_gzip_index(reader.read, spacing=spacing, expected_digest=digest))
        hashing = _Hashing(reader.read)
        tree = scan_tar(hashing, format=Format.TAR)  # type: ignore[arg-type]
        while hashing.read(1 << 20):
            pass
        actual = "sha256:" + hashing.sha256.hexdigest()
        if digest is not None and actual != digest:
            raise LayerDigestError(f"layer blob is {actual}, expected {digest}")
        tree = LayerIndex(
            tree.entries, format=Format.TAR, blob_digest=actual, blob_size=hashing.count, tar_size=tree.tar_size
        )
        return codec.dumps(tree)

    try:
        return await trio.to_thread.run_sync(build)
    except DffsError:
        raise
    except Exception as err:  # a bug or an unexpected library error: still one line, still not fatal
        raise LayerFormatError(f"layer {digest or '?'}: index build failed: {err!r}") from err
