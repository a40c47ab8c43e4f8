"""The test origins themselves, checked with stdlib clients and curl only."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import subprocess
import threading
import time
import urllib.request
import uuid

import pytest

try:
    from .origins import Behavior, FaultyOrigin, NginxOrigin, OriginError
except ImportError:
    from origins import Behavior, FaultyOrigin, NginxOrigin, OriginError


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def curl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, check=check)


def raw_request(port: int, request: bytes, timeout: float = 5.0) -> tuple[bytes, BaseException | None]:
    """Send ``request`` on a fresh connection; read until EOF or error."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        try:
            while chunk := s.recv(65536):
                data += chunk
        except OSError as e:
            return data, e
    return data, None


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


def get(port: int, path: str, **headers: str) -> bytes:
    hdrs = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{hdrs}Connection: close\r\n\r\n".encode()


# --------------------------------------------------------------------------- #
# nginx
# --------------------------------------------------------------------------- #


@pytest.fixture
def served(tmp_path, make_file):
    root = tmp_path / "root"
    root.mkdir()
    size = 3 * 1024 * 1024 + 17
    digest = make_file(root / "blob.bin", size, seed=1)
    return root, size, digest


def test_nginx_serves_exact_bytes_and_counts_them(nginx_origin, served):
    root, size, digest = served
    origin = nginx_origin(root)
    assert origin.url("blob.bin") == f"http://127.0.0.1:{origin.port}/blob.bin"
    with urllib.request.urlopen(origin.url("blob.bin")) as resp:
        data = resp.read()
        assert resp.headers["ETag"] and resp.headers["Last-Modified"]
        assert resp.headers["Accept-Ranges"] == "bytes"
    assert sha256(data) == digest
    [entry] = origin.wait_for_requests(1)
    assert (entry.method, entry.path, entry.query, entry.status) == ("GET", "/blob.bin", "", 200)
    assert entry.body_bytes == size and entry.completed
    assert entry.range is None and entry.if_none_match is None
    assert origin.body_bytes("/blob.bin") == size


def test_nginx_sync_log_waits_for_the_sentinel_and_hides_it(nginx_origin, served):
    root, size, _ = served
    origin = nginx_origin(root)
    origin.sync_log()
    assert origin.requests() == []  # the sentinel itself never shows
    for _ in range(3):
        with urllib.request.urlopen(origin.url("blob.bin")) as resp:
            resp.read()
    origin.sync_log()  # no waiting for a count: every finished request is in
    assert [(e.path, e.body_bytes, e.client) for e in origin.requests()] == [("/blob.bin", size, "127.0.0.1")] * 3
    assert len(origin._sentinels) == 2
    origin.stop()
    with pytest.raises(OriginError, match="not running"):
        origin.sync_log()
    several = NginxOrigin(root, master_process=True, workers=2)  # never started: refused before that matters
    try:
        with pytest.raises(OriginError, match="one nginx worker"):
            several.sync_log()
    finally:
        several.close()


def test_nginx_range_head_and_query_accounting(nginx_origin, served):
    root, size, _ = served
    origin = nginx_origin(root)
    content = (root / "blob.bin").read_bytes()
    r = curl("-r", "1000-1999", "-D", "-", "-o", "-", origin.url("blob.bin?x=1&y=%22q%22"))
    status, headers, body = split_response(r.stdout)
    assert status == 206
    assert headers["content-range"] == f"bytes 1000-1999/{size}"
    assert body == content[1000:2000]
    conn = http.client.HTTPConnection("127.0.0.1", origin.port)
    conn.request("HEAD", "/blob.bin")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == size
    assert resp.read() == b""
    conn.close()
    rng, head = origin.wait_for_requests(2)
    assert rng.status == 206 and rng.body_bytes == 1000 and rng.range == "bytes=1000-1999"
    assert rng.path == "/blob.bin" and rng.query == "x=1&y=%22q%22"
    assert head.method == "HEAD" and head.status == 200 and head.body_bytes == 0
    assert origin.body_bytes() == 1000
    assert origin.body_bytes(method="HEAD") == 0
    assert origin.body_bytes("/blob.bin", "GET") == 1000


def test_nginx_conditionals_and_keepalive(nginx_origin, served):
    root, size, _ = served
    origin = nginx_origin(root)
    conn = http.client.HTTPConnection("127.0.0.1", origin.port)
    conn.request("HEAD", "/blob.bin")
    resp = conn.getresponse()
    resp.read()
    etag = resp.headers["ETag"]
    conn.request("GET", "/blob.bin", headers={"If-None-Match": etag})
    resp = conn.getresponse()
    assert resp.status == 304 and resp.read() == b""
    conn.request("GET", "/blob.bin", headers={"If-Range": etag, "Range": "bytes=-10"})
    resp = conn.getresponse()
    assert resp.status == 206 and len(resp.read()) == 10
    conn.request("GET", "/blob.bin", headers={"If-Range": '"stale"', "Range": "bytes=0-9"})
    resp = conn.getresponse()
    assert resp.status == 200 and len(resp.read()) == size
    conn.close()
    entries = origin.wait_for_requests(4)
    assert [e.status for e in entries] == [200, 304, 206, 200]
    assert [e.body_bytes for e in entries] == [0, 0, 10, size]
    assert entries[1].if_none_match == etag
    assert entries[2].if_range == etag and entries[3].if_range == '"stale"'
    assert len({e.connection for e in entries}) == 1, "keep-alive: one connection"
    assert [e.connection_requests for e in entries] == [1, 2, 3, 4]


def test_nginx_autoindex_listing(nginx_origin, tmp_path, make_file):
    make_file(tmp_path / "site" / "dir" / "a.txt", 10)
    make_file(tmp_path / "site" / "dir" / "b.bin", 20)
    origin = nginx_origin(tmp_path / "site")
    with urllib.request.urlopen(origin.url("dir/")) as resp:
        listing = resp.read().decode()
    assert 'href="a.txt"' in listing and 'href="b.bin"' in listing
    # No trailing slash: nginx redirects to the directory (urllib follows).
    with urllib.request.urlopen(origin.url("dir")) as resp:
        assert resp.url == origin.url("dir/")
    statuses = [e.status for e in origin.wait_for_requests(3)]
    assert statuses == [200, 301, 200]


def test_nginx_limit_rate_slows_transfer(nginx_origin, tmp_path, make_file):
    digest = make_file(tmp_path / "r" / "f", 2 * 1024 * 1024)
    fast = nginx_origin(tmp_path / "r")
    slow = nginx_origin(tmp_path / "r", limit_rate="1m")
    timings = {}
    for name, origin in (("fast", fast), ("slow", slow)):
        start = time.monotonic()
        with urllib.request.urlopen(origin.url("f")) as resp:
            assert sha256(resp.read()) == digest
        timings[name] = time.monotonic() - start
    # nginx lets the first second's worth through at once: 2 MiB at 1m takes ~1 s. (Only lower
    # bounds: how fast the unlimited one is says nothing about limit_rate.)
    assert timings["slow"] >= 0.8, timings
    slow.sync_log()
    [entry] = slow.requests()
    assert entry.request_time >= 0.8 and entry.body_bytes == 2 * 1024 * 1024


def test_nginx_kill_then_start_same_port(nginx_origin, served):
    root, size, digest = served
    origin = nginx_origin(root)
    port = origin.port
    with urllib.request.urlopen(origin.url("blob.bin")) as resp:
        resp.read()
    origin.kill()
    assert not origin.running and origin.processes() == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    origin.start()
    assert origin.port == port
    with urllib.request.urlopen(origin.url("blob.bin")) as resp:
        assert sha256(resp.read()) == digest
    assert [e.body_bytes for e in origin.wait_for_requests(2)] == [size, size]
    origin.stop()
    assert origin.processes() == []
    origin.start()
    assert origin.port == port and origin.running


def test_nginx_kill_mid_download_is_logged_as_partial(nginx_origin, served):
    root, size, _ = served
    origin = nginx_origin(root, limit_rate="1m")
    conn = http.client.HTTPConnection("127.0.0.1", origin.port)
    conn.request("GET", "/blob.bin")
    resp = conn.getresponse()
    assert resp.read(4096)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    conn.close()  # client dies mid-download
    [entry] = origin.wait_for_requests(1)
    assert not entry.completed and 0 < entry.body_bytes < size


def test_nginx_clear_log_loses_and_repeats_nothing(nginx_origin, tmp_path, make_file):
    make_file(tmp_path / "c" / "small", 100)
    origin = nginx_origin(tmp_path / "c")
    total = 60
    done = threading.Event()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", origin.port)
        for i in range(total):
            conn.request("GET", f"/small?i={i}")
            conn.getresponse().read()
        conn.close()
        done.set()

    t = threading.Thread(target=client)
    t.start()
    seen = []
    while not done.is_set():
        seen += origin.clear_log()
    t.join()
    origin.wait_for_requests(total - len(seen))
    seen += origin.requests()
    assert sorted(int(e.query[2:]) for e in seen) == list(range(total))
    origin.clear_log()
    assert origin.requests() == [] and origin.body_bytes() == 0


def test_nginx_bad_config_reports_error_log(tmp_path):
    origin = NginxOrigin(tmp_path, extra_locations="no_such_directive on;")
    try:
        with pytest.raises(OriginError, match="unknown directive"):
            origin.start()
    finally:
        origin.close()


def test_nginx_master_process_mode_kill_takes_workers(nginx_origin, served):
    root, size, digest = served
    origin = nginx_origin(root, master_process=True, workers=2)
    with urllib.request.urlopen(origin.url("blob.bin")) as resp:
        assert sha256(resp.read()) == digest
    deadline = time.monotonic() + 10  # the master forks its workers on its own time
    while len(origin.processes()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(origin.processes()) == 3
    origin.kill()
    assert origin.processes() == []  # workers too (dead ones may linger as zombies)


def test_nginx_in_network_namespace(nginx_origin, served):
    root, size, digest = served
    ns = f"dffs-origins-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode:
        pytest.skip("cannot create network namespaces here")
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        origin = nginx_origin(root, netns=ns, host="127.0.0.1", port=8080)
        r = subprocess.run(
            ["ip", "netns", "exec", ns, "curl", "-sS", origin.url("blob.bin")], capture_output=True, check=True
        )
        assert sha256(r.stdout) == digest
        origin.sync_log()  # the sentinel goes in from inside the namespace
        [entry] = origin.requests()
        assert entry.body_bytes == size and entry.client == "127.0.0.1"
        origin.stop()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


# --------------------------------------------------------------------------- #
# FaultyOrigin
# --------------------------------------------------------------------------- #

BODY = os.urandom(100_000)


def test_faulty_normal_get_head_keepalive(faulty_origin):
    o = faulty_origin
    assert o.add("/f", BODY) == f"http://127.0.0.1:{o.port}/f"
    conn = http.client.HTTPConnection("127.0.0.1", o.port)
    for _ in range(3):
        conn.request("GET", "/f")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == BODY
        assert int(resp.headers["Content-Length"]) == len(BODY)
        assert resp.headers["ETag"] == o.etag("/f")
        assert resp.headers["Last-Modified"] == o.last_modified("/f")
        assert resp.headers["Accept-Ranges"] == "bytes"
    conn.request("HEAD", "/f")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b""
    assert int(resp.headers["Content-Length"]) == len(BODY)
    conn.request("GET", "/missing")
    assert conn.getresponse().status == 404
    conn.close()
    assert o.connections == 1
    assert o.count("/f", "GET") == 3 and o.count("/f", "HEAD") == 1
    assert o.counts("/f") == {"GET": 3, "HEAD": 1}
    assert o.body_bytes("/f") == 3 * len(BODY) and o.body_bytes(method="HEAD") == 0
    r = curl(o.url("/f"))
    assert r.stdout == BODY


def test_faulty_ranges(faulty_origin):
    o = faulty_origin
    o.add("/f", BODY, etag="v1", last_modified=1_700_000_000)
    n = len(BODY)
    conn = http.client.HTTPConnection("127.0.0.1", o.port)

    def fetch(**headers):
        conn.request("GET", "/f", headers={k.replace("_", "-"): v for k, v in headers.items()})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()

    status, h, body = fetch(Range="bytes=10-19")
    assert (status, h["Content-Range"], body) == (206, f"bytes 10-19/{n}", BODY[10:20])
    status, h, body = fetch(Range=f"bytes={n - 5}-")
    assert (status, h["Content-Range"], body) == (206, f"bytes {n - 5}-{n - 1}/{n}", BODY[-5:])
    status, h, body = fetch(Range="bytes=-7")
    assert (status, h["Content-Range"], body) == (206, f"bytes {n - 7}-{n - 1}/{n}", BODY[-7:])
    status, h, body = fetch(Range=f"bytes=5-{n + 100}")
    assert (status, body) == (206, BODY[5:])
    for unsatisfiable in (f"bytes={n}-", "bytes=-0", f"bytes={n + 1}-{n + 5}"):
        status, h, body = fetch(Range=unsatisfiable)
        assert (status, h["Content-Range"], body) == (416, f"bytes */{n}", b"")
    status, h, body = fetch(Range="bytes=0-1,5-6")  # several ranges: ignored
    assert (status, body) == (200, BODY)
    assert fetch(If_None_Match='"v1"')[0] == 304
    assert fetch(If_None_Match='"other", W/"v1"')[0] == 304
    assert fetch(If_None_Match='"other"')[0] == 200
    assert fetch(If_Range='"v1"', Range="bytes=0-0")[:3:2] == (206, BODY[:1])
    assert fetch(If_Range='"old"', Range="bytes=0-0")[:3:2] == (200, BODY)
    assert fetch(If_Range=o.last_modified("/f"), Range="bytes=0-0")[0] == 206
    conn.close()
    assert o.ranges("/f")[:3] == ["bytes=10-19", f"bytes={n - 5}-", "bytes=-7"]
    assert o.connections == 1
    # 10 + 5 + 7 + (n-5) + 0*3 + n + 0 + 0 + n + 1 + n + 1
    assert o.body_bytes("/f") == 10 + 5 + 7 + (n - 5) + n + n + 1 + n + 1
    assert curl("-r", "100-199", o.url("/f")).stdout == BODY[100:200]


def test_faulty_status_then_normal(faulty_origin):
    o = faulty_origin
    o.add("/f", BODY, behavior=Behavior.status(503, times=2, headers=[("Retry-After", "1")]))
    conn = http.client.HTTPConnection("127.0.0.1", o.port)
    got = []
    for _ in range(3):
        conn.request("GET", "/f")
        resp = conn.getresponse()
        got.append((resp.status, len(resp.read()), resp.headers["Retry-After"]))
    assert got == [(503, 0, "1"), (503, 0, "1"), (200, len(BODY), None)]
    o.set_behavior("/f", Behavior.status(404))
    for _ in range(3):
        conn.request("GET", "/f")
        resp = conn.getresponse()
        assert resp.status == 404 and resp.read() == b""
    conn.close()
    assert [r.status for r in o.requests("/f")] == [503, 503, 200, 404, 404, 404]
    assert o.body_bytes("/f") == len(BODY)


def test_faulty_reset_before_response(faulty_origin):
    o = faulty_origin
    o.add("/f", BODY, behavior=Behavior.reset())
    data, err = raw_request(o.port, get(o.port, "/f"))
    assert data == b"" and isinstance(err, ConnectionResetError)
    assert o.body_bytes("/f") == 0 and o.count("/f") == 1
    assert curl(o.url("/f"), check=False).returncode == 56  # recv failure


def test_faulty_reset_after_part_of_body(faulty_origin):
    o = faulty_origin
    o.add("/f", BODY, behavior=Behavior.reset(after=1000))
    data, err = raw_request(o.port, get(o.port, "/f"))
    status, headers, body = split_response(data)
    assert status == 200 and int(headers["content-length"]) == len(BODY)
    assert body == BODY[:1000] and isinstance(err, ConnectionResetError)
    assert o.body_bytes("/f") == 1000
    conn = http.client.HTTPConnection("127.0.0.1", o.port)
    conn.request("GET", "/f")
    resp = conn.getresponse()
    try:
        with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
            resp.read()
    finally:
        resp.close()
        conn.close()


def test_faulty_truncate(faulty_origin):
    o = faulty_origin
    o.add("/f", BODY, behavior=Behavior.truncate(after=12345))
    data, err = raw_request(o.port, get(o.port, "/f"))
    status, headers, body = split_response(data)
    assert err is None, "clean close (FIN)"
    assert status == 200 and int(headers["content-length"]) == len(BODY)
    assert body == BODY[:12345]
    data, err = raw_request(o.port, get(o.port, "/f", Range="bytes=100-199"))
    status, headers, body = split_response(data)
    assert status == 206 and headers["content-length"] == "100"
    assert body == BODY[100:199], "never all that was announced"
    assert curl(o.url("/f"), check=False).returncode == 18  # partial file
    assert o.body_bytes("/f") == 12345 + 99 + 12345


def test_faulty_bad_content_range(faulty_origin):
    o = faulty_origin
    o.add("/f", BODY, behavior=Behavior.bad_content_range())
    data, _ = raw_request(o.port, get(o.port, "/f", Range="bytes=100-199"))
    status, headers, body = split_response(data)
    assert status == 206 and headers["content-range"] != f"bytes 100-199/{len(BODY)}"
    first, last = map(int, headers["content-range"].split()[1].split("/")[0].split("-"))
    assert body == BODY[first : last + 1] and len(body) == 100
    data, _ = raw_request(o.port, get(o.port, "/f"))
    assert split_response(data)[::2] == (200, BODY)


@pytest.mark.parametrize("kind", ["ignore_range", "no_range_support"])
def test_faulty_range_not_honoured(faulty_origin, kind):
    o = faulty_origin
    o.add("/f", BODY, behavior=getattr(Behavior, kind)())
    for req in ("GET", "HEAD"):
        conn = http.client.HTTPConnection("127.0.0.1", o.port)
        conn.request(req, "/f", headers={"Range": "bytes=0-9"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == (BODY if req == "GET" else b"")
        assert resp.headers["Content-Range"] is None
        accept = resp.headers["Accept-Ranges"]
        assert accept == ("bytes" if kind == "ignore_range" else None)
        conn.close()
    assert o.ranges("/f") == ["bytes=0-9", "bytes=0-9"]


def test_faulty_no_head(faulty_origin):
    o = faulty_origin
    o.add("/f", BODY, behavior=Behavior.no_head())
    r = curl("-I", "-o", "/dev/null", "-w", "%{http_code}", o.url("/f"))
    assert r.stdout == b"405"
    assert curl(o.url("/f")).stdout == BODY
    assert o.count("/f", "HEAD") == 1 and o.count("/f", "GET") == 1


def test_faulty_stall_then_stop_is_prompt():
    o = FaultyOrigin()
    o.start()
    o.add("/f", BODY, behavior=Behavior.stall(after=10))
    o.add("/g", BODY, behavior=Behavior.stall(after=None))
    socks = []
    try:
        s = socket.create_connection(("127.0.0.1", o.port), timeout=5)
        socks.append(s)
        s.sendall(get(o.port, "/f"))
        data = b""
        while not data.endswith(BODY[:10]):
            data += s.recv(65536)
        s.settimeout(0.2)
        with pytest.raises(socket.timeout):
            s.recv(1)  # stalled: nothing more, not closed
        g = socket.create_connection(("127.0.0.1", o.port), timeout=5)
        socks.append(g)
        g.sendall(get(o.port, "/g"))
        o.wait_for_requests(1, path="/g")
        socks.append(socket.create_connection(("127.0.0.1", o.port)))  # idle keep-alive
        o.add("/big", bytes(32 << 20))
        big = socket.create_connection(("127.0.0.1", o.port))  # never reads its body
        socks.append(big)
        big.sendall(get(o.port, "/big"))
        o.wait_for_requests(1, path="/big")
        deadline = time.monotonic() + 5
        while o.connections < 4 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert o.connections == 4
        assert o.body_bytes("/f") == 10
    finally:
        # The stalls never end by themselves: stop() returning (it raises if a handler
        # thread is still alive after its timeout) is what shows it released them.
        o.stop()
        for s in socks:
            s.close()
    assert o.threads() == [] and o.errors == []


def test_faulty_stall_for_a_while_then_resume(faulty_origin):
    o = faulty_origin
    o.add("/f", BODY, behavior=Behavior.stall(after=500, duration=0.3))
    start = time.monotonic()
    data, err = raw_request(o.port, get(o.port, "/f"))
    assert time.monotonic() - start >= 0.3
    assert err is None and split_response(data)[::2] == (200, BODY)
    o.set_behavior("/f", Behavior.stall(after=500, duration=0.05, resume=False))
    data, err = raw_request(o.port, get(o.port, "/f"))
    assert split_response(data)[2] == BODY[:500]
    assert o.body_bytes("/f") == len(BODY) + 500


def test_faulty_slow(faulty_origin):
    o = faulty_origin
    o.add("/f", BODY[:50_000], behavior=Behavior.slow(100_000))
    start = time.monotonic()
    with urllib.request.urlopen(o.url("/f")) as resp:
        assert resp.read() == BODY[:50_000]
    assert time.monotonic() - start >= 0.45
    # A client that gives up mid-body: once the handler is through, the count
    # says what was really written, not the whole body.
    s = socket.create_connection(("127.0.0.1", o.port))
    s.sendall(get(o.port, "/f"))
    data = b""
    while len(data.partition(b"\r\n\r\n")[2]) < 1000:
        data += s.recv(65536)
    s.close()
    o.wait_idle()
    last = o.requests("/f")[-1]
    assert last.done and 1000 <= last.body_bytes < 50_000


def test_faulty_chunked(faulty_origin):
    o = faulty_origin
    o.add("/f", BODY, behavior=Behavior.chunked(chunk_size=4096))
    data, _ = raw_request(o.port, get(o.port, "/f"))
    status, headers, raw_body = split_response(data)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers
    assert raw_body.startswith(b"1000\r\n") and raw_body.endswith(b"0\r\n\r\n")
    conn = http.client.HTTPConnection("127.0.0.1", o.port)
    conn.request("GET", "/f")
    resp = conn.getresponse()
    assert resp.chunked and resp.read() == BODY
    conn.request("GET", "/f", headers={"Range": "bytes=5-9"})  # still keep-alive
    resp = conn.getresponse()
    assert resp.status == 206 and resp.read() == BODY[5:10]
    conn.close()
    assert curl(o.url("/f")).stdout == BODY
    assert o.body_bytes("/f") == 3 * len(BODY) + 5  # payload, not framing


def test_faulty_redirects(faulty_origin):
    o = faulty_origin
    o.add("/target", BODY)
    o.add("/rel", b"", behavior=Behavior.redirect("/target"))
    o.add("/abs", b"", behavior=Behavior.redirect("/target", 301, absolute=True))
    o.add("/tmp", b"", behavior=Behavior.redirect("target", 307))
    for path, code, location in (("/rel", 302, "/target"), ("/abs", 301, o.url("/target")), ("/tmp", 307, "target")):
        data, _ = raw_request(o.port, get(o.port, path))
        status, headers, body = split_response(data)
        assert (status, headers["location"], body) == (code, location, b"")
        assert curl("-L", o.url(path)).stdout == BODY
    with urllib.request.urlopen(o.url("/abs")) as resp:
        assert resp.read() == BODY
    assert o.body_bytes("/target") == 4 * len(BODY)
    assert o.body_bytes("/rel") == 0


async def test_async_waits_let_trio_clients_run(nginx_origin, faulty_origin, served):
    import trio

    root, size, _ = served
    ngx = nginx_origin(root)
    faulty_origin.add("/f", BODY)

    async def fetch(port: int, path: str) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(get(port, path))
            while await stream.receive_some(65536):
                pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetch, ngx.port, "/blob.bin")
        nursery.start_soon(fetch, faulty_origin.port, "/f")
        [entry] = await ngx.async_wait_for_requests(1)
        await faulty_origin.async_wait_for_requests(1, path="/f")
    assert entry.body_bytes == size
    assert faulty_origin.body_bytes("/f") == len(BODY)


def test_faulty_accounting_is_thread_safe(faulty_origin):
    o = faulty_origin
    o.add("/f", BODY)
    errors = []

    def client():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", o.port)
            for _ in range(5):
                conn.request("GET", "/f", headers={"Range": "bytes=0-"})
                assert conn.getresponse().read() == BODY
            conn.close()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert o.count("/f") == 40 and o.connections == 8
    assert o.body_bytes("/f") == 40 * len(BODY)
    assert o.ranges("/f") == ["bytes=0-"] * 40


# --------------------------------------------------------------------------- #
# Must stay last: nothing left behind by the tests above.
# --------------------------------------------------------------------------- #


def test_zz_nothing_left_behind():
    assert NginxOrigin.instances, "the nginx tests above did run"
    leftovers = {str(o.workdir): pids for o in NginxOrigin.instances if (pids := o.processes())}
    assert not leftovers, f"nginx processes left: {leftovers}"
    for o in NginxOrigin.instances:  # the same, the way a human would look
        r = subprocess.run(["pgrep", "-f", f"{o.workdir}/"], capture_output=True, text=True)
        assert r.stdout.split() == [], (o.workdir, r.stdout)
    alive = [t.name for t in threading.enumerate() if t.name.startswith("faulty-origin-")]
    assert not alive, f"FaultyOrigin threads left: {alive}"
