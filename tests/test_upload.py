"""The P2P piece data plane: protocol rules, the upload server, the piece client."""

from __future__ import annotations

import functools
import os
import socket
import sqlite3
import time
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from dffs.digest import format_piece_digest, piece_digest
from dffs.errors import DigestMismatch
from dffs.storage import StorageManager, TaskMeta
from dffs.upload import (
    ParentBusy,
    ParentUnreachable,
    PeerProtocolError,
    PieceClient,
    PieceDigestMismatch,
    PieceNotAvailable,
    PieceUploadServer,
    TokenBucket,
)
from dffs.upload import protocol as P

KiB = 1024
MiB = 1024 * KiB
TID = "ab" * 32
BIG_TID = "cd" * 32
PIECE = 256 * KiB
TASK_LENGTH = 5 * PIECE + 1000  # six pieces, the last 1000 bytes
PRESENT = (0, 1, 2, 5)
LOCAL = "127.0.0.1"


def piece_bytes(n: int, length: int = PIECE) -> bytes:
    return (bytes([n % 251, 7, (n * 13) % 256]) * (length // 3 + 1))[:length]


def piece_len(n: int) -> int:
    return min(PIECE, TASK_LENGTH - n * PIECE)


# =================================================================== protocol
class TestProtocol:
    def test_valid_requests(self):
        assert P.parse_request(b"GET", f"/pieces/{TID}/0".encode()) == P.PieceRequest("GET", TID, 0)
        req = P.parse_request("HEAD", f"/pieces/{TID}/4294967295")
        assert req.is_head and req.number == P.MAX_PIECE_NUMBER

    @pytest.mark.parametrize(
        "target",
        [
            f"/pieces/{TID}/01",  # leading zero
            f"/pieces/{TID}/00",
            f"/pieces/{TID}/-1",
            f"/pieces/{TID}/+1",
            f"/pieces/{TID}/1.0",
            f"/pieces/{TID}/1e3",
            f"/pieces/{TID}/0x10",
            f"/pieces/{TID}/",
            f"/pieces/{TID}/4294967296",  # over uint32
            f"/pieces/{TID}/" + "9" * 5000,  # huge: refused before int()
            f"/pieces/{TID}/\u0661",  # ARABIC-INDIC DIGIT ONE: int() would take it
            f"/pieces/{TID.upper()}/1",
            f"/pieces/{TID[:-1]}/1",
            f"/pieces/{TID}0/1",
            f"/pieces/{'g' * 64}/1",
            f"/pieces/{TID}/1/extra",
            f"/pieces/{TID}/1/",
            f"/pieces//{TID}/1",
            f"/pieces/{TID}",
            "/pieces/",
            "/pieces",
            f"/pieces/{TID}/1?x=1",
            f"/pieces/{TID}/1?",
            f"/pieces/{TID}/1#frag",
            f"/pieces/{TID}/1;v=1",
            f"/pieces/{TID}/%31",  # "1", percent-encoded
            f"/pieces/{TID}%2f1",
            "/pieces/%2e%2e/%2e%2e/etc/passwd",
            "/pieces/../../etc/passwd",
            f"/pieces/{TID}/../1",
            f"/pieces/./{TID}/1",
            "/../pieces/x/1",
            f"/pieces\\{TID}\\1",
            f"/pieces/{TID}/1 HTTP/1.1",
            f"/pieces/{TID}/1\x00",
            f"http://example.com/pieces/{TID}/1",  # absolute-form
            "*",
            "",
        ],
    )
    def test_malformed_targets_are_400(self, target):
        with pytest.raises(P.BadRequest) as info:
            P.parse_request("GET", target)
        assert info.value.status == 400 and not info.value.close

    def test_non_ascii_bytes_are_400(self):
        with pytest.raises(P.BadRequest):
            P.parse_target(f"/pieces/{TID}/1".encode() + b"\xff")

    @pytest.mark.parametrize("target", ["/", "/favicon.ico", f"/Pieces/{TID}/1", f"/piecesx/{TID}/1", "/tasks/x"])
    def test_other_resources_are_404(self, target):
        with pytest.raises(P.NotFound) as info:
            P.parse_request("GET", target)
        assert info.value.status == 404

    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "get", "OPTIONS", b"PATCH"])
    def test_other_methods_are_405(self, method):
        with pytest.raises(P.MethodNotAllowed) as info:
            P.parse_request(method, f"/pieces/{TID}/1")
        assert info.value.status == 405
        assert ("Allow", "GET, HEAD") in info.value.headers()

    def test_target_is_judged_before_the_method(self):
        with pytest.raises(P.BadRequest):
            P.parse_request("POST", "/pieces/../x/1")

    def test_out_of_range_is_416_with_the_task_shape(self):
        P.check_piece_number(5, task_length=TASK_LENGTH, piece_length=PIECE, piece_count=6)
        with pytest.raises(P.PieceOutOfRange) as info:
            P.check_piece_number(6, task_length=TASK_LENGTH, piece_length=PIECE, piece_count=6)
        assert info.value.status == 416
        assert dict(info.value.headers()) == {P.HEADER_TASK_LENGTH: str(TASK_LENGTH), P.HEADER_PIECE_LENGTH: str(PIECE)}

    def test_busy_and_errors(self):
        busy = P.Busy("full", retry_after=2)
        assert busy.status == 503 and busy.headers() == [("Retry-After", "2")]
        assert P.error_body(busy) == b"503 Service Unavailable: full\n"
        assert P.MalformedHttp("x", 431).status == 431 and P.MalformedHttp("x", 431).code == "headers_too_large"
        assert P.MalformedHttp("x", 999).status == 400 and P.MalformedHttp("x").close

    def test_has_body(self):
        assert not P.has_body([(b"host", b"x")])
        assert not P.has_body([(b"content-length", b"0")])
        assert P.has_body([(b"content-length", b"5")])
        assert P.has_body([(b"transfer-encoding", b"chunked")])

    def test_piece_headers(self):
        digest = bytes(range(32))
        headers = dict(P.piece_headers(length=1000, digest=digest, task_length=TASK_LENGTH, piece_length=PIECE))
        assert headers["Content-Length"] == "1000"
        assert headers[P.HEADER_PIECE_DIGEST] == "blake3:" + digest.hex()
        assert P.parse_piece_digest(headers[P.HEADER_PIECE_DIGEST]) == digest
        assert headers[P.HEADER_TASK_LENGTH] == str(TASK_LENGTH) and headers[P.HEADER_PIECE_LENGTH] == str(PIECE)

    @pytest.mark.parametrize(
        "value",
        [
            None,
            "",
            "blake3:",
            "sha256:" + "00" * 32,
            "blake3:" + "00" * 31,
            "blake3:" + "zz" * 32,
            "blake3:" + "00" * 33,
        ],
    )
    def test_malformed_digests(self, value):
        with pytest.raises(ValueError):
            P.parse_piece_digest(value)

    def test_piece_urls(self):
        assert P.piece_url("10.0.0.5", 4000, TID, 3) == f"http://10.0.0.5:4000/pieces/{TID}/3"
        assert P.piece_url("::1", 4000, TID, 0) == f"http://[::1]:4000/pieces/{TID}/0"
        assert P.piece_url("[fd00::5]", 80, TID, 0) == f"http://[fd00::5]:80/pieces/{TID}/0"
        assert P.piece_url("peer-7.example", 4000, TID, 1).startswith("http://peer-7.example:4000/")
        for bad in [
            ("h", 4000, TID.upper(), 0),
            ("h", 4000, TID, -1),
            ("h", 4000, TID, 2**32),
            ("h", 0, TID, 0),
            ("h", 70000, TID, 0),
            ("", 4000, TID, 0),
            ("a/b", 4000, TID, 0),
            ("fe80::1%eth0", 4000, TID, 0),
            ("h", 4000, TID, True and 1.5),
        ]:
            with pytest.raises(ValueError):
                P.piece_url(*bad)

    @given(
        st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
        st.integers(0, P.MAX_PIECE_NUMBER),
        st.sampled_from(["127.0.0.1", "::1", "fd00::1:2", "host.example"]),
    )
    def test_url_round_trip(self, task_id, number, host):
        url = P.piece_url(host, 4000, task_id, number)
        parts = urlsplit(url)
        assert parts.hostname == host and parts.port == 4000
        assert P.parse_request("GET", parts.path) == P.PieceRequest("GET", task_id, number)

    @given(st.one_of(st.text(max_size=120), st.binary(max_size=120)))
    def test_any_target_is_accepted_or_refused_cleanly(self, target):
        try:
            request = P.parse_request("GET", target)
        except P.PieceRequestError as exc:
            assert exc.status in (400, 404)
        else:  # anything accepted has exactly the canonical spelling
            text = target.decode() if isinstance(target, bytes) else target
            assert text == P.piece_path(request.task_id, request.number)


# ================================================================ test tools
@pytest.fixture
def storage(tmp_path):
    manager = StorageManager(tmp_path / "data")
    store = manager.create_task(TaskMeta(task_id=TID, url="http://o/f", content_length=TASK_LENGTH, piece_length=PIECE))
    for n in PRESENT:
        store.write_piece(n, piece_bytes(n, piece_len(n)))
    yield manager
    manager.close()


@asynccontextmanager
async def running(server: PieceUploadServer):
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()


@pytest.fixture
async def client():
    async with PieceClient(connect_timeout=2, read_timeout=5) as c:
        yield c


async def raw_connect(port: int, *, rcvbuf: int | None = None, family=socket.AF_INET, host=LOCAL):
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def send_all(sock, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view) :]


async def read_response(sock, pending: bytes = b"", *, head_request: bool = False):
    """(status, lower-cased headers, body, bytes after it) of one response."""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in pending:
            chunk = await sock.recv(65536)
            assert chunk, f"connection closed before a response head: {pending!r}"
            pending += chunk
        head, pending = pending.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = 0 if head_request else int(headers.get("content-length", 0))
        body = bytearray(pending)
        while len(body) < length:
            chunk = await sock.recv(max(65536, length - len(body)))
            if not chunk:
                break
            body += chunk
    return status, headers, bytes(body[:length]), bytes(body[length:])


async def read_to_eof(sock, limit: float = 10) -> bytes:
    data = bytearray()
    with trio.fail_after(limit):
        while True:
            try:
                chunk = await sock.recv(1 << 20)
            except ConnectionResetError:
                return bytes(data)
            if not chunk:
                return bytes(data)
            data += chunk


def request(method: str, target: str, extra: str = "") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: peer\r\n{extra}\r\n".encode()


# =================================================================== server
async def test_fetch_pieces_bytes_digests_keepalive_and_sendfile(storage, client, monkeypatch):
    calls = []
    real_sendfile = os.sendfile

    def counting_sendfile(*args):
        sent = real_sendfile(*args)
        calls.append(sent)
        return sent

    monkeypatch.setattr(os, "sendfile", counting_sendfile)
    async with running(PieceUploadServer(storage, host=LOCAL, port=0)) as server:
        for n in PRESENT:
            buf = bytearray(piece_len(n))
            digest = await client.fetch(LOCAL, server.port, TID, n, buf)
            assert bytes(buf) == piece_bytes(n, piece_len(n))
            assert digest == piece_digest(buf) == storage.open_task(TID).piece_digest(n)
        # The digest the scheduler announced, raw or as text, is checked too.
        buf = bytearray(PIECE)
        await client.fetch(LOCAL, server.port, TID, 1, buf, expected_digest=piece_digest(piece_bytes(1)))
        await client.fetch(
            LOCAL,
            server.port,
            TID,
            1,
            memoryview(buf),
            expected_digest=format_piece_digest(piece_digest(piece_bytes(1))),
        )
        stats = server.stats
    total = sum(piece_len(n) for n in PRESENT) + 2 * PIECE
    assert stats.uploads_served == len(PRESENT) + 2
    assert stats.bytes_uploaded == total
    # Every body byte went out through os.sendfile.
    assert stats.sendfile_bytes == total and sum(calls) == total and stats.sendfile_calls == len(calls) > 0
    assert stats.fallback_bytes == 0
    # Keep-alive: six pieces, one connection.
    assert stats.connections_accepted == 1 and client.http.pool.connections_opened == 1
    assert stats.rejected == {}


async def test_head(storage, client):
    async with running(PieceUploadServer(storage, host=LOCAL, port=0)) as server:
        url = P.piece_url(LOCAL, server.port, TID, 5)
        async with client.http.exchange("HEAD", url) as (head, body):
            assert head.status == 200
            assert head.content_length == 1000
            assert P.parse_piece_digest(head.get("x-dffs-piece-digest")) == piece_digest(piece_bytes(5, 1000))
            assert head.get("x-dffs-task-length") == str(TASK_LENGTH)
            assert head.get("x-dffs-piece-length") == str(PIECE)
            assert body.body_remaining == 0
        async with client.http.exchange("HEAD", P.piece_url(LOCAL, server.port, TID, 3)) as (head, _):
            assert head.status == 404
        # A GET on the same connection still works after the HEADs.
        buf = bytearray(PIECE)
        await client.fetch(LOCAL, server.port, TID, 0, buf)
        assert server.stats.heads_served == 1 and server.stats.uploads_served == 1
        assert server.stats.connections_accepted == 1


async def test_unknown_task_absent_piece_and_out_of_range(storage, client):
    async with running(PieceUploadServer(storage, host=LOCAL, port=0)) as server:
        buf = bytearray(PIECE)
        with pytest.raises(PieceNotAvailable) as info:
            await client.fetch(LOCAL, server.port, "ef" * 32, 0, buf)
        assert info.value.status == 404 and not info.value.retryable
        with pytest.raises(PieceNotAvailable) as info:
            await client.fetch(LOCAL, server.port, TID, 3, buf)
        assert info.value.status == 404
        assert "piece 3" in str(info.value) and TID in str(info.value) and f"{LOCAL}:{server.port}" in str(info.value)
        with pytest.raises(PieceNotAvailable) as info:
            await client.fetch(LOCAL, server.port, TID, 6, buf)
        assert info.value.status == 416
        assert server.stats.rejected == {"not_found": 2, "out_of_range": 1}
        # The error answers kept the connection.
        assert server.stats.connections_accepted == 1


async def test_bad_requests_on_one_raw_connection(storage):
    async with running(PieceUploadServer(storage, host=LOCAL, port=0)) as server:
        sock = await raw_connect(server.port)
        with sock:
            pending = b""
            for target, status in [
                (f"/pieces/{TID}/01", 400),
                (f"/pieces/{TID}/1?x", 400),
                ("/pieces/../../etc/passwd", 400),
                (f"/pieces/{TID}/99999999999", 400),
                ("/etc/passwd", 404),
                (f"/pieces/{TID}/4", 404),
            ]:
                await send_all(sock, request("GET", target))
                got, headers, body, pending = await read_response(sock, pending)
                assert got == status, target
                assert body.startswith(f"{status} ".encode()) and len(body) < 200
            await send_all(sock, request("DELETE", f"/pieces/{TID}/1"))
            got, headers, _, pending = await read_response(sock, pending)
            assert got == 405 and headers["allow"] == "GET, HEAD"
            # Pipelined: two requests in one write, two answers in order.
            await send_all(sock, request("HEAD", f"/pieces/{TID}/0") + request("GET", f"/pieces/{TID}/5"))
            got, headers, body, pending = await read_response(sock, pending, head_request=True)
            assert got == 200 and body == b"" and headers["content-length"] == str(PIECE)
            got, headers, body, pending = await read_response(sock, pending)
            assert got == 200 and body == piece_bytes(5, 1000)
            assert pending == b""
        assert server.stats.rejected == {"bad_request": 4, "not_found": 2, "method": 1}
        assert server.stats.connections_accepted == 1


async def test_garbage_gets_400_close_and_others_are_served(storage, client):
    async with running(PieceUploadServer(storage, host=LOCAL, port=0)) as server:
        for garbage in [
            b"\x00\x01\x02 garbage \xff\xfe\r\n\r\n",
            b"GET /pieces HTTP/9\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
            request("GET", f"/pieces/{TID}/0", "Content-Length: 5\r\n") + b"hello",
            request("GET", f"/pieces/{TID}/0", "Transfer-Encoding: chunked\r\n"),
        ]:
            sock = await raw_connect(server.port)
            with sock:
                await send_all(sock, garbage)
                status, headers, _, rest = await read_response(sock)
                assert status == 400 and headers["connection"] == "close", garbage
                assert rest + await read_to_eof(sock) == b""  # and closed
        buf = bytearray(PIECE)
        await client.fetch(LOCAL, server.port, TID, 2, buf)
        assert bytes(buf) == piece_bytes(2)
        assert server.stats.rejected == {"malformed": 5}


async def test_oversized_headers_are_refused(storage):
    async with running(PieceUploadServer(storage, host=LOCAL, port=0, max_header_bytes=16 * KiB)) as server:
        sock = await raw_connect(server.port)
        with sock:
            big = request("GET", f"/pieces/{TID}/0", "X-Big: " + "a" * (64 * KiB) + "\r\n")
            with trio.move_on_after(5):
                try:
                    await send_all(sock, big)
                except OSError:  # the server may close before reading it all
                    pass
            status, headers, _, _ = await read_response(sock)
            assert status == 431 and headers["connection"] == "close"
        assert server.stats.rejected == {"headers_too_large": 1}


async def test_silent_and_slow_clients_are_dropped(storage, client):
    async with running(PieceUploadServer(storage, host=LOCAL, port=0, head_timeout=0.3)) as server:
        silent = await raw_connect(server.port)
        slow = await raw_connect(server.port)
        with silent, slow:
            await send_all(slow, b"GET /pieces/")  # a head that never completes
            start = trio.current_time()
            assert await read_to_eof(silent) == b""
            assert trio.current_time() - start >= 0.25
            status, headers, _, rest = await read_response(slow)
            assert status == 408 and rest + await read_to_eof(slow) == b""
        assert server.stats.rejected == {"timeout": 2}
        assert server.stats.connections_active == 0
        buf = bytearray(PIECE)
        await client.fetch(LOCAL, server.port, TID, 0, buf)  # still serving


async def test_idle_keepalive_connection_expires_and_client_reconnects(storage, client):
    async with running(PieceUploadServer(storage, host=LOCAL, port=0, idle_timeout=0.2)) as server:
        buf = bytearray(PIECE)
        await client.fetch(LOCAL, server.port, TID, 0, buf)
        sock = await raw_connect(server.port)
        with sock:
            await send_all(sock, request("HEAD", f"/pieces/{TID}/0"))
            status, _, _, _ = await read_response(sock, head_request=True)
            assert status == 200
            assert await read_to_eof(sock) == b""  # closed after idle_timeout, without a 408
        # The pooled connection was closed by the server meanwhile: the client reconnects by itself.
        await client.fetch(LOCAL, server.port, TID, 1, buf)
        assert bytes(buf) == piece_bytes(1)
        assert server.stats.rejected == {}


def _max_send_buffer() -> int:
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * MiB


#: One piece bigger than the server's largest send buffer plus our small receive buffer.
BIG = max(8 * MiB, (2 * _max_send_buffer() // MiB + 1) * MiB)


@pytest.fixture
def big_storage(storage):
    """Adds a task with one BIG piece: more than the loopback socket buffers can hold."""
    store = storage.create_task(TaskMeta(task_id=BIG_TID, url="http://o/big", content_length=BIG, piece_length=BIG))
    store.write_piece(0, piece_bytes(9, BIG))
    return storage


async def test_concurrency_limit_answers_503_without_queueing(big_storage, client):
    async with running(PieceUploadServer(big_storage, host=LOCAL, port=0, max_concurrent_uploads=1)) as server:
        slow = await raw_connect(server.port, rcvbuf=64 * KiB)
        with slow:
            await send_all(slow, request("GET", f"/pieces/{BIG_TID}/0"))
            # Once the head is here the server holds the one slot until the
            # whole BIG piece is sent, which cannot happen while we do not read.
            pending = b""
            while b"\r\n\r\n" not in pending:
                pending += await slow.recv(1024)
            assert pending.startswith(b"HTTP/1.1 200")
            assert server.stats.uploads_active == 1
            buf = bytearray(PIECE)
            with pytest.raises(ParentBusy) as info:
                await client.fetch(LOCAL, server.port, TID, 0, buf)
            assert info.value.status == 503 and info.value.retry_after == 1 and info.value.retryable
            # HEAD needs no slot.
            async with client.http.exchange("HEAD", P.piece_url(LOCAL, server.port, TID, 0)) as (head, _):
                assert head.status == 200
            # Read the body, then a HEAD on the same connection: its answer
            # proves the upload (and its slot) is over.
            status, _, body, pending = await read_response(slow, pending)
            assert status == 200 and body == piece_bytes(9, BIG)
            await send_all(slow, request("HEAD", f"/pieces/{TID}/0"))
            status, _, _, _ = await read_response(slow, pending, head_request=True)
            assert status == 200
            assert server.stats.uploads_active == 0
            await client.fetch(LOCAL, server.port, TID, 0, buf)
        assert server.stats.rejected == {"busy": 1}
        assert server.stats.uploads_served == 2


async def test_a_stalled_reader_loses_its_slot(big_storage, client):
    server = PieceUploadServer(big_storage, host=LOCAL, port=0, max_concurrent_uploads=1, send_timeout=0.3)
    async with running(server):
        stalled = await raw_connect(server.port, rcvbuf=64 * KiB)
        with stalled:
            await send_all(stalled, request("GET", f"/pieces/{BIG_TID}/0"))
            # The stall itself: not reading until the server gives up on us (send_timeout).
            with trio.fail_after(10):
                while server.stats.uploads_aborted == 0:
                    await trio.sleep(0.01)
            received = await read_to_eof(stalled)
            assert received.startswith(b"HTTP/1.1 200") and len(received) < BIG
        assert server.stats.uploads_aborted == 1 and server.stats.uploads_active == 0
        buf = bytearray(PIECE)
        await client.fetch(LOCAL, server.port, TID, 0, buf)


async def test_rate_limit_slows_transfers(storage, client):
    rate = 2 * MiB
    async with running(PieceUploadServer(storage, host=LOCAL, port=0, rate_limit_bytes_per_sec=rate)) as server:
        buf = bytearray(PIECE)
        start = time.monotonic()
        for n in (0, 1, 2, 0):
            await client.fetch(LOCAL, server.port, TID, n, buf)
        elapsed = time.monotonic() - start
    # 1 MiB at 2 MiB/s, minus one burst (~100 KiB): ~0.45 s at least.
    assert elapsed >= 0.35


async def test_token_bucket_shares_its_rate(autojump_clock):
    bucket = TokenBucket(1000, burst=100)
    start = trio.current_time()
    for _ in range(10):
        await bucket.take(100)
    assert 0.9 - 1e-6 <= trio.current_time() - start <= 1.0

    async def taker():
        for _ in range(5):
            await bucket.take(100)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(taker)
    # 2000 bytes by four concurrent takers still take 2 s at 1000 B/s.
    assert trio.current_time() - start >= 2.0 - 1e-6


async def test_corrupt_piece_is_dropped_and_never_sent(tmp_path, client):
    data_dir = tmp_path / "data"
    first = StorageManager(data_dir)
    store = first.create_task(TaskMeta(task_id=TID, url="http://o/f", content_length=TASK_LENGTH, piece_length=PIECE))
    for n in PRESENT:
        store.write_piece(n, piece_bytes(n, piece_len(n)))
    content = store.content_path
    first.close()  # clean: the next process trusts the journal and verifies on first use
    with open(content, "r+b") as f:
        f.seek(PIECE + 1234)  # inside piece 1
        good = f.read(1)
        f.seek(PIECE + 1234)
        f.write(bytes([good[0] ^ 0x55]))
    fresh = StorageManager(data_dir)
    try:
        assert fresh.open_task(TID).has_piece(1) and not fresh.open_task(TID).is_verified(1)
        async with running(PieceUploadServer(fresh, host=LOCAL, port=0)) as server:
            sock = await raw_connect(server.port)
            with sock:
                await send_all(sock, request("GET", f"/pieces/{TID}/1"))
                status, _, body, rest = await read_response(sock)
                assert status == 404 and len(body) < 200 and rest == b""
            assert not fresh.open_task(TID).has_piece(1)
            buf = bytearray(PIECE)
            with pytest.raises(PieceNotAvailable):
                await client.fetch(LOCAL, server.port, TID, 1, buf)
            assert buf == bytearray(PIECE)  # nothing received
            # The intact pieces are still served.
            await client.fetch(LOCAL, server.port, TID, 0, buf)
            assert bytes(buf) == piece_bytes(0)
            assert server.stats.rejected == {"corrupt": 1, "not_found": 1}
            assert server.stats.bytes_uploaded == PIECE
    finally:
        fresh.close()


async def test_small_objects_are_served_from_the_shared_pack(tmp_path, client, monkeypatch):
    """Objects of one small piece live in the shared pack (no task directory): the upload server
    sends each one's own range of it with sendfile, and one damaged at rest is refused alone."""
    sent = []
    real_sendfile = os.sendfile

    def recording_sendfile(out_fd, in_fd, offset, count):
        sent.append(offset)
        return real_sendfile(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", recording_sendfile)
    data_dir = tmp_path / "data"
    first = StorageManager(data_dir)
    objects = {f"{i:02x}" * 32: piece_bytes(i, 1000 + 3000 * i) for i in range(1, 6)}
    for task_id, data in objects.items():
        store = first.create_task(
            TaskMeta(task_id=task_id, url=f"http://o/{task_id}", content_length=len(data), piece_length=4 * MiB)
        )
        store.write_piece(0, data)
    assert list(first.tasks_dir.iterdir()) == []
    first.close()
    damaged = "03" * 32
    with sqlite3.connect(data_dir / "small" / "objects.db") as db:
        (offset,) = db.execute("SELECT offset FROM objects WHERE task_id = ?", (damaged,)).fetchone()
    with open(data_dir / "small" / "objects.pack", "r+b") as f:
        f.seek(offset + 10)
        f.write(b"\xff\x00")
    fresh = StorageManager(data_dir)
    try:
        async with running(PieceUploadServer(fresh, host=LOCAL, port=0)) as server:
            for task_id, data in objects.items():
                buf = bytearray(len(data))
                if task_id == damaged:
                    with pytest.raises(PieceNotAvailable):
                        await client.fetch(LOCAL, server.port, task_id, 0, buf)
                    continue
                digest = await client.fetch(LOCAL, server.port, task_id, 0, buf, expected_digest=piece_digest(data))
                assert bytes(buf) == data and digest == piece_digest(data)
            assert server.stats.rejected == {"corrupt": 1}
            assert server.stats.sendfile_bytes == sum(len(d) for t, d in objects.items() if t != damaged)
        assert len(set(sent)) >= 4 and max(sent) > 0  # each object's own offset in the pack
    finally:
        fresh.close()


async def test_fallback_without_sendfile(storage, client):
    server = PieceUploadServer(storage, host=LOCAL, port=0, rate_limit_bytes_per_sec=64 * MiB)
    server._use_sendfile = False  # as on a platform without os.sendfile
    async with running(server):
        buf = bytearray(PIECE)
        await client.fetch(LOCAL, server.port, TID, 2, buf)
        assert bytes(buf) == piece_bytes(2)
        # A HEAD on the same keep-alive connection is answered only after the upload is accounted for.
        async with client.http.exchange("HEAD", P.piece_url(LOCAL, server.port, TID, 2)) as (head, _):
            assert head.status == 200
        assert server.stats.connections_accepted == 1
        assert server.stats.fallback_bytes == PIECE and server.stats.sendfile_bytes == 0


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
async def test_all_interfaces_dual_stack(storage, client):
    async with running(PieceUploadServer(storage, host=None, port=0)) as server:
        for host in (LOCAL, "::1"):
            buf = bytearray(1000)
            await client.fetch(host, server.port, TID, 5, buf)
            assert bytes(buf) == piece_bytes(5, 1000)
        assert server.stats.connections_accepted == 2


async def test_cancelling_serve_closes_every_connection(storage):
    server = PieceUploadServer(storage, host=LOCAL, port=0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        assert port == server.port
        idle = await raw_connect(port)
        await send_all(idle, request("HEAD", f"/pieces/{TID}/0"))
        await read_response(idle, head_request=True)
        nursery.cancel_scope.cancel()
    with idle:
        assert await read_to_eof(idle) == b""
    assert server.stats.connections_active == 0
    with pytest.raises(OSError):
        await raw_connect(port)


# =================================================================== client
FAKE_DATA = piece_bytes(3, 100 * KiB)
FAKE_DIGEST = piece_digest(FAKE_DATA)


async def _fake_parent(stream: trio.SocketStream) -> None:
    """A parent that misbehaves in the way the piece number asks for."""
    try:
        await _fake_parent_answers(stream)
    except trio.BrokenResourceError:
        pass  # the child hung up on a piece it refused to read


async def _fake_parent_answers(stream: trio.SocketStream) -> None:
    data = b""
    with trio.move_on_after(10):
        while True:
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            head, data = data.split(b"\r\n\r\n", 1)
            number = int(head.split(b" ")[1].rsplit(b"/", 1)[1])
            digest, body, length = FAKE_DIGEST, FAKE_DATA, len(FAKE_DATA)
            if number == 0:  # records a different digest than the bytes it sends
                digest = piece_digest(b"something else")
            elif number == 2:
                await stream.send_all(b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n")
                continue
            elif number == 3:  # dies midway
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Dffs-Piece-Digest: %s\r\n\r\n"
                    % (length, format_piece_digest(digest).encode())
                    + body[:1000]
                )
                return
            elif number == 4:  # a shorter piece than the child expects
                body, length = body[:-1], length - 1
            elif number == 6:  # never answers
                await trio.sleep_forever()
            elif number == 7:  # the bytes differ from what its (honest-looking) header says
                body = bytes([body[0] ^ 1]) + body[1:]
            elif number == 8:
                await stream.send_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
                continue
            headers = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % length
            if number != 5:  # 5: no digest header at all
                headers += b"X-Dffs-Piece-Digest: %s\r\n" % format_piece_digest(digest).encode()
            await stream.send_all(headers + b"\r\n" + body)


@pytest.fixture
async def fake_parent():
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, _fake_parent, 0, host=LOCAL))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def test_client_checks_digests_against_the_header_and_the_expectation(fake_parent):
    port = fake_parent
    async with PieceClient(read_timeout=0.5) as client:
        buf = bytearray(len(FAKE_DATA))
        assert await client.fetch(LOCAL, port, TID, 1, buf) == FAKE_DIGEST and bytes(buf) == FAKE_DATA

        with pytest.raises(PieceDigestMismatch) as info:
            await client.fetch(LOCAL, port, TID, 0, buf)
        err = info.value
        assert isinstance(err, DigestMismatch)
        assert (err.parent, err.task_id, err.number) == (f"{LOCAL}:{port}", TID, 0)
        assert f"{LOCAL}:{port}" in str(err) and TID in str(err) and "piece 0" in str(err)

        with pytest.raises(PieceDigestMismatch, match="received bytes"):
            await client.fetch(LOCAL, port, TID, 7, buf)

        # The parent's digest disagrees with the scheduler's: refused before the body.
        with pytest.raises(PieceDigestMismatch, match="expected"):
            await client.fetch(LOCAL, port, TID, 1, buf, expected_digest=piece_digest(b"other"))
        # a malformed digest or port from a parent or the scheduler is the parent's fault, not a crash
        with pytest.raises(PeerProtocolError, match="malformed piece digest"):
            await client.fetch(LOCAL, port, TID, 1, buf, expected_digest="md5:abc")
        with pytest.raises(PeerProtocolError, match="invalid port"):
            await client.fetch(LOCAL, 0, TID, 1, buf)

        with pytest.raises(ParentBusy) as busy:
            await client.fetch(LOCAL, port, TID, 2, buf)
        assert busy.value.retry_after == 3

        with pytest.raises(ParentUnreachable) as broken:
            await client.fetch(LOCAL, port, TID, 3, buf)
        assert broken.value.retryable

        with pytest.raises(PeerProtocolError, match="sends 102399 bytes"):
            await client.fetch(LOCAL, port, TID, 4, buf)
        with pytest.raises(PeerProtocolError, match="malformed piece digest"):
            await client.fetch(LOCAL, port, TID, 5, buf)
        with pytest.raises(PeerProtocolError) as odd:
            await client.fetch(LOCAL, port, TID, 8, buf)
        assert odd.value.status == 500

        # Piece 6's parent never answers: the client's read timeout (0.5 s) is what ends the wait,
        # as its message says; fail_after only guards against a hang.
        with trio.fail_after(30), pytest.raises(ParentUnreachable, match="no response"):
            await client.fetch(LOCAL, port, TID, 6, buf)


async def test_client_connection_refused_is_retryable():
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        port = s.getsockname()[1]  # nobody listens here once closed
    async with PieceClient(connect_timeout=1) as client:
        with pytest.raises(ParentUnreachable) as info:
            await client.fetch(LOCAL, port, TID, 0, bytearray(10))
        assert info.value.retryable and info.value.number == 0
