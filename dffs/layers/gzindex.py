"""Unmodified gzip layers through a seekable index (the zran idea, as SOCI's zTOC uses it).

**Build** (:func:`build_gzip_index`), in one pass over the blob as a stream, the way a
seed sees it while it downloads: every compressed byte is read once and handed to two
consumers — ``indexed_gzip`` (zlib's own inflate, which alone knows where deflate
blocks end) records a checkpoint about every ``spacing`` bytes of uncompressed output,
and a stdlib ``zlib`` inflate feeds ``tarfile`` for the file table.  Two inflates
because ``indexed_gzip`` can build from an unseekable stream but cannot also return
its output there: every read restarts from a seek point.  They run on two threads
(``build_full_index`` keeps the GIL while it inflates, so they mostly take turns).
The blob's sha256 is computed on the way, so an index always names the digest of the
bytes it was built from.

**Read** (:class:`GzipReader`): a byte range of the tar starts at the last checkpoint
at or before it; the compressed bytes from there are fetched in growing steps (never
past the next checkpoint after the range, give or take a few bytes) and inflated with
stdlib ``zlib``, primed with the checkpoint's 32 KiB window.  zlib cannot be primed
with the partial byte a checkpoint may start in (no ``inflatePrime`` in Python), so
the bits of that byte that end the previous block are replaced by empty deflate
blocks of the same length modulo 8 (see :func:`_empty_blocks_prefix`); shifting the
stream instead would break at the next stored block, which is byte-aligned.  A
checkpoint at the start of each gzip member (``indexed_gzip`` makes them) carries
reads across member boundaries.

Sequential readers (a big file read 128 KiB at a time through FUSE) do not restart
from the checkpoint each time: the inflate state where a read stopped is kept (a few
per layer) and the next read near it continues from there.
"""

from __future__ import annotations

import hashlib
import io
import queue
import struct
import threading
import zlib
from collections.abc import Callable
from typing import Any

import attrs
import trio

from dffs.layers.errors import LayerDigestError, LayerFormatError
from dffs.layers.fetch import Fetch, fetch_exact
from dffs.layers.tree import Format, LayerIndex, scan_tar

#: Uncompressed bytes between checkpoints (SOCI and the issue: about 4 MiB).
DEFAULT_SPACING = 4 << 20
WINDOW_SIZE = 32 << 10
_READ_CHUNK = 1 << 20
_INFLATE_STEP = 1 << 20
_GZIDX_MAGIC = b"GZIDX"
_GZIDX_HEAD = struct.Struct("<5sBBQQIII")
_GZIDX_POINT = struct.Struct("<QQBB")


@attrs.frozen
class Checkpoint:
    """Where raw inflate can resume.  The deflate stream continues at bit ``8 - bits``
    of byte ``compressed_offset - 1`` when ``bits`` is set, else at byte
    ``compressed_offset``; ``window`` is the 32 KiB of output before it, empty at the
    start of a gzip member (where ``compressed_offset`` is just past its header)."""

    compressed_offset: int
    uncompressed_offset: int
    bits: int = 0
    window: bytes = b""

    @property
    def start(self) -> int:
        """First blob byte a reader needs."""
        return self.compressed_offset - (1 if self.bits else 0)


@attrs.frozen(eq=True)
class GzipIndex:
    """A gzip layer's file table plus its checkpoints: what the cluster shares."""

    tree: LayerIndex
    checkpoints: tuple[Checkpoint, ...]
    spacing: int = DEFAULT_SPACING

    def __attrs_post_init__(self) -> None:
        validate_checkpoints(self.tree, self.checkpoints, self.spacing)

    def checkpoint_at(self, offset: int) -> int:
        """Index of the last checkpoint at or before uncompressed ``offset``."""
        lo, hi = 0, len(self.checkpoints)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.checkpoints[mid].uncompressed_offset <= offset:
                lo = mid
            else:
                hi = mid
        return lo

    def compressed_bound(self, end: int) -> int:
        """A blob offset by which all output before uncompressed ``end`` has been produced."""
        for point in self.checkpoints[self.checkpoint_at(end) :]:
            if point.uncompressed_offset >= end:
                return min(self.tree.blob_size, point.compressed_offset + 8)
        return self.tree.blob_size


def validate_checkpoints(tree: LayerIndex, checkpoints: tuple[Checkpoint, ...], spacing: int) -> None:
    """Checkpoints in stream order inside the blob and the tar, starting at a member."""
    where = f"layer {tree.blob_digest}" if tree.blob_digest else "gzip index"
    if tree.format is not Format.GZIP:
        raise LayerFormatError(f"{where}: checkpoints for a {tree.format} layer")
    if not WINDOW_SIZE <= spacing < 1 << 32:
        raise LayerFormatError(f"{where}: checkpoint spacing {spacing} out of range")
    if not checkpoints or checkpoints[0].uncompressed_offset != 0 or checkpoints[0].window:
        raise LayerFormatError(f"{where}: checkpoints do not start at the stream's start")
    previous = (0, 0)
    for point in checkpoints:
        here = (point.compressed_offset, point.uncompressed_offset)
        if here[0] < previous[0] or here[1] < previous[1]:
            raise LayerFormatError(f"{where}: checkpoints out of order at {here[0]}")
        if not (0 <= point.bits <= 7 and here[0] <= tree.blob_size and here[1] <= tree.tar_size):
            raise LayerFormatError(f"{where}: checkpoint at {here[0]} lies outside the blob")
        if len(point.window) not in (0, WINDOW_SIZE) or (point.bits and not point.window) or point.start < 0:
            raise LayerFormatError(f"{where}: checkpoint at {here[0]} has a bad window")
        previous = here


# ---------------------------------------------------------------------- build
def parse_gzidx(data: bytes) -> tuple[int, list[Checkpoint]]:
    """``indexed_gzip``'s export format (GZIDX v0/v1, little-endian): (spacing, checkpoints)."""
    try:
        magic, version, _flags, _csize, _usize, spacing, window, count = _GZIDX_HEAD.unpack_from(data, 0)
        if magic != _GZIDX_MAGIC or version > 1 or window != WINDOW_SIZE:
            raise LayerFormatError(f"unexpected indexed_gzip export (version {version}, window {window})")
        pos = _GZIDX_HEAD.size
        raw = []
        for number in range(count):
            if version == 1:
                cmp, uncmp, bits, has_window = _GZIDX_POINT.unpack_from(data, pos)
                pos += _GZIDX_POINT.size
            else:
                cmp, uncmp, bits = struct.unpack_from("<QQB", data, pos)
                has_window = number > 0
                pos += 17
            raw.append((cmp, uncmp, bits, has_window))
        points = []
        for cmp, uncmp, bits, has_window in raw:
            window_bytes = b""
            if has_window:
                window_bytes = data[pos : pos + WINDOW_SIZE]
                if len(window_bytes) != WINDOW_SIZE:
                    raise LayerFormatError("indexed_gzip export is truncated")
                pos += WINDOW_SIZE
            points.append(Checkpoint(cmp, uncmp, bits, window_bytes))
    except struct.error as err:
        raise LayerFormatError(f"indexed_gzip export is truncated: {err}") from None
    return spacing, points


class _Handoff:
    """The compressed bytes, passed from the reading thread to ``indexed_gzip``'s.

    A file object for ``indexed_gzip`` (unseekable, ``read`` never returns more than
    asked: zran copies the answer into a buffer of exactly that size)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._rest = b""
        self._ended = False

    # producer side
    def put(self, chunk: bytes | None) -> None:
        self._queue.put(chunk)

    # indexed_gzip's side
    def read(self, size: int = -1) -> bytes:
        if not self._rest and not self._ended:
            chunk = self._queue.get()
            if chunk is None:
                self._ended = True
            else:
                self._rest = chunk
        if size is None or size < 0:
            size = len(self._rest)
        out, self._rest = self._rest[:size], self._rest[size:]
        return out

    def drain(self) -> None:
        """Take everything until the end marker, so the producer never blocks on us."""
        while not self._ended:
            if self._queue.get() is None:
                self._ended = True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, *args: Any) -> int:
        raise OSError("unseekable")

    def tell(self) -> int:
        raise OSError("unseekable")


class _Checkpointer(threading.Thread):
    """Runs ``indexed_gzip`` over the handoff; owned (started and joined) by one build."""

    def __init__(self, handoff: _Handoff, spacing: int) -> None:
        super().__init__(name="dffs-gzindex", daemon=True)
        self.handoff = handoff
        self.spacing = spacing
        self.export: bytes | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            import indexed_gzip

            gz = indexed_gzip._IndexedGzipFile(
                fileobj=self.handoff, spacing=self.spacing, window_size=WINDOW_SIZE, readbuf_size=_READ_CHUNK
            )
            try:
                gz.build_full_index()
                out = io.BytesIO()
                gz.export_index(fileobj=out)
                self.export = out.getvalue()
            finally:
                gz.close()
        except BaseException as err:  # reported to the build's thread, which raises it
            self.error = err
        finally:
            self.handoff.drain()


class _TeeInflater:
    """What ``tarfile`` reads: the blob inflated (all gzip members), while every
    compressed byte is also hashed, counted and handed to the checkpointer."""

    def __init__(self, read: Callable[[int], bytes], handoff: _Handoff, checkpointer: _Checkpointer) -> None:
        self._read = read
        self._handoff = handoff
        self._checkpointer = checkpointer
        self.sha256 = hashlib.sha256()
        self.compressed = 0
        self.uncompressed = 0
        self._inflate: Any = zlib.decompressobj(31)
        self._in_member = True  # expecting (or inside) a gzip member
        self._tail = b""  # compressed input not yet given to the inflater
        self._out = b""
        self._out_pos = 0
        self._source_done = False
        self._more_out = False

    def _pull(self) -> bool:
        """Read more compressed input; False at the end of the blob."""
        if self._source_done:
            return False
        chunk = self._read(_READ_CHUNK)
        if not chunk:
            self._source_done = True
            self._handoff.put(None)
            return False
        self.sha256.update(chunk)
        self.compressed += len(chunk)
        if self._checkpointer.error is not None:
            raise LayerFormatError(f"bad gzip stream: {self._checkpointer.error}")
        self._handoff.put(chunk)
        self._tail += chunk
        return True

    def _produce(self) -> bool:
        """Inflate some more output; False at the clean end of the stream."""
        while True:
            if self._inflate.eof:
                rest = self._inflate.unused_data
                self._tail = rest + self._tail
                self._inflate = zlib.decompressobj(31)
                self._in_member = False
            if not self._in_member:
                # Between members: another member, zero padding, or the end.
                self._tail = self._tail.lstrip(b"\0")
                if not self._tail and not self._pull():
                    return False
                if not self._tail:
                    continue
                self._in_member = True
            data = self._inflate.unconsumed_tail + self._tail
            self._tail = b""
            if not data and not self._more_out:
                if not self._pull():
                    raise LayerFormatError(f"gzip stream truncated after {self.compressed} bytes")
                continue
            try:
                out = self._inflate.decompress(data, _INFLATE_STEP)
            except zlib.error as err:
                raise LayerFormatError(f"bad gzip stream near byte {self.compressed}: {err}") from None
            # A full answer may leave output inside zlib with all input taken: ask again first.
            self._more_out = len(out) == _INFLATE_STEP
            if out:
                self.uncompressed += len(out)
                self._out, self._out_pos = out, 0
                return True

    def read(self, size: int = -1) -> bytes:
        if self._out_pos >= len(self._out) and not self._produce():
            return b""
        if size is None or size < 0:
            size = len(self._out) - self._out_pos
        out = self._out[self._out_pos : self._out_pos + size]
        self._out_pos += len(out)
        return out


def build_gzip_index(
    read: Callable[[int], bytes], *, spacing: int = DEFAULT_SPACING, expected_digest: str | None = None
) -> GzipIndex:
    """Index a gzip layer from ``read(n) -> bytes`` (b"" at the end), in one pass.

    Blocking and CPU-bound: run it in a worker thread (``reader.build_index`` does).
    Raises :class:`LayerFormatError` for a blob that is not a whole gzip of a tar and
    :class:`LayerDigestError` when it is not ``expected_digest``."""
    handoff = _Handoff()
    checkpointer = _Checkpointer(handoff, spacing)
    checkpointer.start()
    stream = _TeeInflater(read, handoff, checkpointer)
    try:
        tree = scan_tar(stream, format=Format.GZIP)  # type: ignore[arg-type]
        while stream.read(_INFLATE_STEP):  # the rest (tar padding): checked, and seen by the checkpointer
            pass
    finally:
        if not stream._source_done:
            handoff.put(None)
        checkpointer.join()
    if checkpointer.error is not None:
        raise LayerFormatError(f"bad gzip stream: {checkpointer.error}")
    assert checkpointer.export is not None
    digest = "sha256:" + stream.sha256.hexdigest()
    if expected_digest is not None and digest != expected_digest:
        raise LayerDigestError(f"layer blob is {digest}, expected {expected_digest}")
    tree = LayerIndex(
        tree.entries, format=Format.GZIP, blob_digest=digest, blob_size=stream.compressed, tar_size=stream.uncompressed
    )
    spacing, points = parse_gzidx(checkpointer.export)
    return GzipIndex(tree, tuple(points), spacing)


# ----------------------------------------------------------------------- read
def _empty_blocks_prefix(skip: int) -> tuple[bytes, int]:
    """Raw deflate bits that inflate to nothing and end ``skip`` bits into a byte.

    stdlib zlib has no ``inflatePrime``, so a checkpoint that starts ``skip`` bits into
    byte B is reached by replacing those ``skip`` bits (the end of the previous block)
    with whole empty blocks of the right total length, ``8k + skip`` bits: the stream then
    keeps its byte alignment, which stored blocks depend on.  Empty fixed-Huffman blocks
    are 10 bits; an empty dynamic block (only end-of-block coded, zlib's permitted
    single-code case) is 95 bits with 19 code-length codes: together they make every
    length modulo 8.  Returns (the k whole bytes, the last ``skip`` bits as an int).
    """
    bits: list[int] = []

    def put(value: int, count: int) -> None:  # integers go least significant bit first
        bits.extend((value >> i) & 1 for i in range(count))

    def empty_fixed() -> None:
        put(0, 1)  # not final
        put(1, 2)  # fixed Huffman
        put(0, 7)  # end of block: code 0000000

    def empty_dynamic() -> None:
        put(0, 1)
        put(2, 2)  # dynamic Huffman
        put(0, 5)  # 257 literal/length codes
        put(0, 5)  # 1 distance code
        put(15, 4)  # 19 code-length codes
        lengths = {18: 1, 0: 2, 1: 2}  # canonical codes: 18 -> 0, 0 -> 10, 1 -> 11
        for symbol in (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15):
            put(lengths.get(symbol, 0), 3)
        put(0, 1)
        put(138 - 11, 7)  # 138 zero lengths
        put(0, 1)
        put(118 - 11, 7)  # 118 more: symbols 0-255 have no code
        bits.extend((1, 1))  # end-of-block gets length 1
        bits.extend((1, 0))  # the distance code has none
        put(0, 1)  # end of block (Huffman codes go most significant bit first; it is 1 bit)

    if skip % 2:
        empty_dynamic()
    while len(bits) % 8 != skip:
        empty_fixed()
    whole = len(bits) // 8
    data = bytes(sum(bit << i for i, bit in enumerate(bits[8 * n : 8 * n + 8])) for n in range(whole))
    last = sum(bit << i for i, bit in enumerate(bits[8 * whole :]))
    return data, last


_PREFIXES = {skip: _empty_blocks_prefix(skip) for skip in range(1, 8)}


class Cursor:
    """Raw inflate positioned in the tar stream: starts at a checkpoint, is fed the blob's
    bytes from :attr:`fetch_at` on, and produces the tar's bytes from :attr:`position`.

    Pure (no I/O): :class:`GzipReader` fetches, a cursor inflates."""

    def __init__(self, point: Checkpoint) -> None:
        self.point = point
        self.position = point.uncompressed_offset
        self.fetch_at = point.start
        self._skip = 8 - point.bits if point.bits else 0
        if point.window:
            self._inflate: Any = zlib.decompressobj(-15, zdict=point.window)
        else:
            self._inflate = zlib.decompressobj(-15)
        self._pending = b""  # aligned input not consumed yet

    @property
    def ended(self) -> bool:
        """The deflate stream (this gzip member) ended."""
        return bool(self._inflate.eof)

    def feed(self, data: bytes) -> None:
        """Give the next compressed bytes (from :attr:`fetch_at`)."""
        if not data:
            return
        first = self.fetch_at == self.point.start
        self.fetch_at += len(data)
        if first and self._skip:
            whole, last = _PREFIXES[self._skip]
            kept = data[0] & (0xFF << self._skip) & 0xFF  # the new block's first bits
            data = whole + bytes([kept | last]) + data[1:]
        self._pending += data

    def produce(self, skip_to: int, limit: int, out: bytearray) -> None:
        """Inflate what was fed: output before ``skip_to`` is dropped, output is
        appended to ``out`` up to position ``limit``."""
        while not self._inflate.eof and self.position < limit:
            want = min(_INFLATE_STEP, limit - self.position)
            try:
                chunk = self._inflate.decompress(self._pending, want)
            except zlib.error as err:
                raise LayerFormatError(
                    f"gzip data before {self.fetch_at} does not inflate from its checkpoint: {err}"
                ) from None
            self._pending = self._inflate.unconsumed_tail
            if self.position + len(chunk) > skip_to:
                out += chunk[max(0, skip_to - self.position) :]
            self.position += len(chunk)
            if len(chunk) < want:
                break  # needs more input (or the member ended)


class GzipReader:
    """Reads ranges of a gzip layer's tar stream through a :class:`GzipIndex`."""

    #: Inflate states kept for readers that go on where they stopped.
    MAX_CURSORS = 8
    FIRST_FETCH = 64 << 10
    MAX_FETCH = 2 << 20
    #: Inflating this much input goes to a worker thread, off the event loop.
    THREAD_THRESHOLD = 256 << 10

    def __init__(self, index: GzipIndex, fetch: Fetch) -> None:
        self.index = index
        self._fetch = fetch
        self._cursors: list[Cursor] = []
        self.bytes_fetched = 0

    def _take_cursor(self, start: int) -> Cursor:
        points = self.index.checkpoints
        point = points[self.index.checkpoint_at(start)]
        best: Cursor | None = None
        for cursor in self._cursors:
            if point.uncompressed_offset <= cursor.position <= start and not cursor.ended:
                if best is None or cursor.position > best.position:
                    best = cursor
        if best is not None:
            self._cursors.remove(best)
            return best
        return Cursor(point)

    def _keep_cursor(self, cursor: Cursor) -> None:
        if cursor.ended:
            return
        self._cursors.append(cursor)
        if len(self._cursors) > self.MAX_CURSORS:
            self._cursors.pop(0)

    def _next_member(self, cursor: Cursor) -> Cursor:
        """The cursor for the gzip member after the one ``cursor`` finished."""
        for point in self.index.checkpoints[self.index.checkpoint_at(cursor.position) :]:
            if point.uncompressed_offset == cursor.position and not point.window:
                if point.compressed_offset > cursor.point.compressed_offset:
                    return Cursor(point)
            if point.uncompressed_offset > cursor.position:
                break
        raise LayerFormatError(
            f"layer {self.index.tree.blob_digest}: gzip member ends at {cursor.position} but the index has no "
            "checkpoint there"
        )

    async def read(self, start: int, size: int) -> bytes:
        """Bytes ``[start, start + size)`` of the uncompressed tar (short at its end)."""
        tree = self.index.tree
        end = min(start + size, tree.tar_size)
        out = bytearray()
        if start >= end:
            return b""
        cursor = self._take_cursor(start)
        bound = self.index.compressed_bound(end)
        step = self.FIRST_FETCH
        fed = 0  # input given to the cursor and not inflated yet
        while True:
            if fed >= self.THREAD_THRESHOLD:
                await trio.to_thread.run_sync(cursor.produce, start, end, out)
            else:
                cursor.produce(start, end, out)
            if cursor.position >= end:
                break
            if cursor.ended:
                cursor = self._next_member(cursor)
                fed = 0
                continue
            at = cursor.fetch_at
            length = min(step, max(bound - at, self.FIRST_FETCH), tree.blob_size - at)
            if length <= 0:
                raise LayerFormatError(f"layer {tree.blob_digest}: blob ends before tar offset {end}")
            data = await fetch_exact(self._fetch, tree.blob_digest, at, length)
            self.bytes_fetched += len(data)
            cursor.feed(data)
            fed = len(data)
            step = min(step * 2, self.MAX_FETCH)
        self._keep_cursor(cursor)
        return bytes(out)
