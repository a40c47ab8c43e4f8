"""The proxy on real sockets: a real docker-registry (and FaultyOrigin where an origin must
misbehave on purpose), the ProxyServer in-process on its own TaskManager (no scheduler:
pieces come from the origin), clients on real HTTP connections (http.client in threads,
raw sockets for bad input)."""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import random
import re
import socket
import subprocess

import pytest
import trio
from cli import run_dffs
from cluster import Daemon
from netns import Network
from origins import Behavior
from registry import Registry

from dffs.idgen import DEFAULT_PIECE_LENGTH, pieces_for_range
from dffs.metrics import DAEMON
from dffs.peertask import TaskManager
from dffs.proxy import ProxyConfig, ProxyServer
from dffs.source import SourceRegistry
from dffs.storage import StorageManager

MiB = 1024 * 1024
PIECE = DEFAULT_PIECE_LENGTH


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture
async def proxies(tmp_path):
    """``await proxies(**ProxyConfig fields) -> ProxyServer`` on a free loopback port, each with
    its own storage; all stopped (and their storage closed) at teardown."""
    made = []

    async def hold_task_manager(storage, sources, *, task_status):
        # Entered and left in the fixture's nursery: a TaskManager's nursery belongs to one task.
        async with TaskManager(storage, sources) as tasks:
            task_status.started(tasks)
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:

        async def make(**options) -> ProxyServer:
            storage = StorageManager(tmp_path / f"data{len(made)}")
            sources = SourceRegistry()
            tasks = await nursery.start(hold_task_manager, storage, sources)
            server = ProxyServer(tasks, ProxyConfig(**{"port": 0, **options}))
            made.append((storage, sources))
            await nursery.start(server.serve)
            return server

        yield make
        nursery.cancel_scope.cancel()
    for storage, sources in made:
        storage.close()
        await sources.aclose()


# ------------------------------------------------------------------ clients
def _request(port, method, target, headers=None, body=None, conn=None):
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        if own:
            conn.close()


async def request(port, method, target, headers=None, body=None):
    return await trio.to_thread.run_sync(_request, port, method, target, headers, body)


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes; the answer up to the end of its first response (or EOF)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                head, sep, body = received.partition(b"\r\n\r\n")
                match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if sep and match and len(body) >= int(match.group(1)) and not head.startswith(b"HTTP/1.1 200 Conn"):
                    break
        except ConnectionResetError:
            pass
        return received


async def raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    return await trio.to_thread.run_sync(_raw, port, data, timeout)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# -------------------------------------------------------------------- tests
async def test_blob_through_the_mirror_with_many_ranges(registry, proxies):
    data = random.Random(61).randbytes(2 * PIECE + 12345)
    digest = registry.push_blob("test/ranges", data)
    proxy = await proxies(registry_mirror=registry.url)
    path = f"/v2/test/ranges/blobs/{digest}?ns={registry.address}"

    status, headers, body = await request(proxy.port, "HEAD", path)
    assert status == 200 and body == b"" and int(headers["content-length"]) == len(data)
    assert headers["docker-content-digest"] == digest and headers["accept-ranges"] == "bytes"

    status, headers, body = await request(proxy.port, "GET", path)
    assert status == 200 and body == data

    rng = random.Random(62)
    size = len(data)
    cases = [
        (f"bytes={a}-{b}", a, b) for a, b in (sorted((rng.randrange(size), rng.randrange(size))) for _ in range(60))
    ]
    cases += [(f"bytes={a}-", a, size - 1) for a in (0, 1, PIECE - 1, PIECE, size - 1, rng.randrange(size))]
    cases += [(f"bytes=-{n}", size - n, size - 1) for n in (1, 2, 100, PIECE + 7, size)]
    cases += [
        ("bytes=-99999999999", 0, size - 1),
        (f"bytes={size - 1}-{size - 1}", size - 1, size - 1),
        (f"bytes=0-{size + 1000}", 0, size - 1),
        ("bytes=0-0", 0, 0),
        (f"bytes={PIECE - 1}-{PIECE}", PIECE - 1, PIECE),
    ]

    def check_all():
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)  # one keep-alive connection
        try:
            for value, start, end in cases:
                status, headers, body = _request(proxy.port, "GET", path, {"Range": value}, conn=conn)
                assert status == 206, value
                assert headers["content-range"] == f"bytes {start}-{end}/{size}", value
                assert body == data[start : end + 1], value
            for value in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
                status, headers, body = _request(proxy.port, "GET", path, {"Range": value}, conn=conn)
                assert status == 416 and headers["content-range"] == f"bytes */{size}", value
            status, _, body = _request(proxy.port, "GET", path, {"Range": "bytes=0-1,5-6"}, conn=conn)
            assert status == 200 and body == data  # several ranges: the whole blob, as RFC 9110 allows
        finally:
            conn.close()

    await trio.to_thread.run_sync(check_all)
    assert registry.blob_bytes(digest) == size  # every byte left the registry once
    assert proxy.stats["blobs_verified"] >= 1  # the whole-blob GET checked the sha256


async def test_a_range_on_a_blob_nobody_has_fetches_only_its_pieces(registry, proxies):
    data = random.Random(63).randbytes(5 * PIECE - 1000)
    digest = registry.push_blob("test/lazy", data)
    proxy = await proxies(registry_mirror=registry.url)
    path = f"/v2/test/lazy/blobs/{digest}"
    fetched: set[int] = set()
    for start, end in [(2 * PIECE + 10, 2 * PIECE + 4095), (3 * PIECE - 5, 4 * PIECE + 5), (len(data) - 1, None)]:
        value = f"bytes={start}-{'' if end is None else end}"
        end = len(data) - 1 if end is None else end
        status, headers, body = await request(proxy.port, "GET", path, {"Range": value})
        assert status == 206 and body == data[start : end + 1]
        fetched |= set(pieces_for_range(start, end - start + 1, len(data), PIECE))
        assert registry.blob_bytes(digest) == sum(min(PIECE, len(data) - n * PIECE) for n in fetched)
    assert sorted(fetched) == [2, 3, 4]
    (task,) = [proxy.tasks.active(t) for t in proxy.tasks._tasks]
    assert task.store.present_pieces() == [2, 3, 4]


async def test_the_answer_streams_before_the_blob_is_complete(faulty_origin, proxies):
    data = random.Random(64).randbytes(3 * PIECE)
    digest = sha(data)
    path = f"/v2/test/stream/blobs/{digest}"
    faulty_origin.add(path, data)
    proxy = await proxies(registry_mirror=faulty_origin.url("/").rstrip("/"))
    status, _, body = await request(proxy.port, "GET", path, {"Range": "bytes=0-0"})  # piece 0 only
    assert status == 206 and body == data[:1]
    # From now on the origin answers nothing: only piece 0 is here, yet the whole-blob
    # GET must start, and deliver piece 0, at once.
    faulty_origin.add(path, data, behavior=Behavior.stall(after=None).replace(methods=("GET",)))

    def first_piece():
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == 200 and int(response.getheader("content-length")) == len(data)
            return response.read(PIECE)
        finally:
            conn.close()

    assert await trio.to_thread.run_sync(first_piece) == data[:PIECE]
    (task,) = [proxy.tasks.active(t) for t in proxy.tasks._tasks]
    assert not task.store.is_complete()


async def test_a_blob_that_does_not_match_its_digest_is_never_served_whole(faulty_origin, proxies):
    proxy = await proxies(registry_mirror=faulty_origin.url("/").rstrip("/"))
    small, big = b"the registry lies" * 10, random.Random(65).randbytes(2 * PIECE + 100)
    small_path = f"/v2/test/bad/blobs/{sha(b'something else')}"
    big_path = f"/v2/test/bad/blobs/{sha(b'another thing')}"
    faulty_origin.add(small_path, small)
    faulty_origin.add(big_path, big)
    for _ in range(2):  # the bad task is dropped, so the second try starts over and fails again
        status, _, body = await request(proxy.port, "GET", small_path)
        assert status == 502 and b"digest mismatch" in body

    def truncated():
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        try:
            conn.request("GET", big_path)
            response = conn.getresponse()
            assert response.status == 200  # streaming had started: the body is cut short instead
            with pytest.raises(http.client.IncompleteRead) as info:
                response.read()
            return len(info.value.partial)
        finally:
            conn.close()

    assert await trio.to_thread.run_sync(truncated) < len(big)
    assert proxy.stats["digest_mismatches"] == 3
    assert not proxy.tasks._tasks  # every bad task was deleted


async def test_manifests_pass_through_and_writes_are_refused(registry, proxies):
    from registry import build_busybox_image

    image = build_busybox_image(registry, "test/manifest", "v1")
    proxy = await proxies(registry_mirror=registry.url)
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    status, headers, body = await request(
        proxy.port, "GET", f"/v2/test/manifest/manifests/v1?ns={registry.address}", accept
    )
    assert status == 200 and sha(body) == image.manifest_digest
    assert headers["docker-content-digest"] == image.manifest_digest and "x-dffs-task-id" not in headers
    status, headers, _ = await request(
        proxy.port, "HEAD", f"/v2/test/manifest/manifests/{image.manifest_digest}", accept
    )
    assert status == 200 and headers["docker-content-digest"] == image.manifest_digest
    status, _, body = await request(proxy.port, "GET", "/v2/")
    assert status == 200
    status, _, _ = await request(proxy.port, "POST", "/v2/test/manifest/blobs/uploads/", body=b"")
    assert status == 405


async def test_bad_input_gets_4xx_or_5xx_and_the_proxy_stays_up(registry, faulty_origin, proxies):
    proxy = await proxies(registry_mirror=registry.url)
    port = proxy.port
    digest = sha(b"x")
    for data, expected in [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
        (b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
        (b"GET ftp://example.com/file HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
        (b"GET gopher://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
        (b"GET /v2/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /v2/test/%2e%2e/%2e%2e/blobs/" + digest.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /v2/test/..%2f..%2fetc/blobs/" + digest.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET http://example.com/../../etc/passwd HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
        (b"CONNECT nowhere HTTP/1.1\r\nHost: nowhere\r\n\r\n", 400),
        (b"GET /etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ]:
        response = await raw(port, data)
        assert status_of(response) == expected, (data[:80], response[:300])

    # Origins that refuse: the client sees the origin's own status (and challenge).
    status, _, _ = await request(port, "GET", f"/v2/test/none/blobs/{digest}")  # the real registry: unknown blob
    assert status == 404
    faulty_origin.add(
        "/v2/auth/blobs/" + digest,
        b"x",
        behavior=Behavior.status(
            401, headers=[("WWW-Authenticate", 'Bearer realm="http://auth.example/token",service="registry"')]
        ),
    )
    faulty_origin.add("/v2/broken/blobs/" + digest, b"x", behavior=Behavior.status(500))
    status, headers, _ = await request(
        port, "GET", f"{faulty_origin.url('/v2/auth/blobs/')}{digest}", {"Authorization": "Bearer expired"}
    )
    assert status == 401 and headers["www-authenticate"].startswith("Bearer realm=")
    assert faulty_origin.requests("/v2/auth/blobs/" + digest)[-1].headers.get("authorization") == "Bearer expired"
    status, _, _ = await request(port, "GET", f"{faulty_origin.url('/v2/broken/blobs/')}{digest}")
    assert status == 500

    # Still serving.
    status, _, _ = await request(port, "GET", "/v2/")
    assert status == 200
    assert proxy.stats.get("error", 0) == 0


def daemon_download_bytes() -> float:
    """Piece bytes this process's TaskManagers made present (the daemon's download metric)."""
    return sum(DAEMON.get_sample_value("dffs_daemon_download_bytes_total", {"source": s}) or 0 for s in SOURCES)


SOURCES = ("origin", "peer", "local")


async def test_forward_proxy_connect_and_bypass(registry, proxies):
    data = random.Random(66).randbytes(100_000)
    # "localhost" names the same registry as registry.url (127.0.0.1): bypassed by name only.
    proxy = await proxies(bypass=["localhost"])
    port = proxy.port
    # A plain forward proxy relays request bodies both ways: a monolithic blob upload.
    status, headers, _ = await request(port, "POST", f"{registry.url}/v2/test/fwd/blobs/uploads/", body=b"")
    assert status == 202
    location = headers["location"]
    location = location if location.startswith("http") else registry.url + location
    digest = sha(data)
    status, _, _ = await request(
        port, "PUT", f"{location}&digest={digest}", {"Content-Type": "application/octet-stream"}, body=data
    )
    assert status == 201
    # A blob URL through the forward proxy goes through P2P (a task), with ranges.
    status, headers, body = await request(
        port, "GET", f"{registry.url}/v2/test/fwd/blobs/{digest}", {"Range": "bytes=-10"}
    )
    assert status == 206 and body == data[-10:] and "x-dffs-task-id" in headers
    # CONNECT: a byte tunnel (here HTTP inside it, to see it work).
    response = await raw(
        port,
        f"CONNECT {registry.address} HTTP/1.1\r\nHost: {registry.address}\r\n\r\n"
        f"GET /v2/ HTTP/1.1\r\nHost: {registry.address}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert response.startswith(b"HTTP/1.1 200") and b"\r\n\r\nHTTP/1.1 200 OK" in response
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    response = await raw(port, f"CONNECT 127.0.0.1:{closed_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status_of(response) == 502
    # The bypass list keeps a host off P2P: the same blob by a bypassed name passes straight through,
    # served by the registry, while no piece is fetched, sent or counted as a download.
    p2p, p2p_bytes, passthrough, downloaded = (
        proxy.stats.get("p2p", 0),
        proxy.p2p_bytes,
        proxy.stats["passthrough"],
        daemon_download_bytes(),
    )
    assert p2p == 1 and p2p_bytes == 10  # the ranged GET above did go through P2P
    tasks, served = set(proxy.tasks._tasks), registry.blob_gets(digest)
    status, headers, body = await request(port, "GET", f"http://localhost:{registry.port}/v2/test/fwd/blobs/{digest}")
    assert status == 200 and body == data and "x-dffs-task-id" not in headers
    assert (proxy.stats.get("p2p", 0), proxy.p2p_bytes) == (p2p, p2p_bytes)
    assert proxy.stats["passthrough"] == passthrough + 1
    assert daemon_download_bytes() == downloaded and set(proxy.tasks._tasks) == tasks
    with trio.fail_after(10):  # the registry answered the passthrough itself (its log line may lag)
        while registry.blob_gets(digest) == served:
            await trio.sleep(0.01)
    assert registry.blob_gets(digest) == served + 1


def test_never_an_open_relay_to_other_hosts(tmp_path, nginx_origin):
    """A real ``dffs daemon`` whose proxy listens on every address of its host, with
    ``proxy_allow`` naming a /30 that holds one other host: hosts are network namespaces
    on one bridge (tests/netns.py), every client is curl on its own host."""
    data = random.Random(68).randbytes(300_000)
    blob = f"/v2/test/relay/blobs/{sha(data)}"  # a P2P URL (the default rule): refusing it must fetch nothing
    (tmp_path / "www" / blob.lstrip("/")).parent.mkdir(parents=True)
    (tmp_path / "www" / blob.lstrip("/")).write_bytes(data)
    (tmp_path / "www" / "a.txt").write_text("passthrough")
    with Network(subnet="10.79.0") as net:
        # Addresses in order: .2 origin, .3 outside, .4 inside, .5 proxy; 10.79.0.4/30 is .4 to .7.
        origin_host, outside, inside, proxy_host = (net.add_host(n) for n in ("origin", "outside", "inside", "proxy"))
        allowed = f"{inside.ip}/30"
        assert ipaddress.ip_address(outside.ip) not in ipaddress.ip_network(allowed)
        origin = nginx_origin(tmp_path / "www", host=origin_host.ip, port=8080, netns=origin_host.netns)
        config = tmp_path / "daemon.toml"
        config.write_text(f'proxy_listen = "0.0.0.0"\nproxy_allow = ["{allowed}"]\n')
        daemon = Daemon(
            tmp_path,
            "proxy",
            None,
            ip=proxy_host.ip,
            prefix=proxy_host.command([]),
            extra=("--proxy-port", "4001", "--config", str(config)),
        )
        try:
            daemon.start()
            net.processes.append(daemon.proc)

            def through_proxy(host, address: str, url: str) -> tuple[int, bytes]:
                out = tmp_path / f"{host.name}.body"
                code = net.check_output(
                    host, ["curl", "-s", "-m", "30", "-o", str(out), "-w", "%{http_code}", "-x", address, url]
                )
                return int(code), out.read_bytes()

            proxy = f"http://{proxy_host.ip}:4001"
            status, body = through_proxy(outside, proxy, origin.url(blob))
            assert status == 403 and b"may not use this proxy" in body, (status, body)
            origin.sync_log()
            assert origin.requests() == []  # refused before anything was fetched
            assert ctl_tasks(daemon) == []
            assert f"event=proxy_client_refused client={outside.ip}" in daemon.output()

            assert through_proxy(inside, proxy, origin.url(blob)) == (200, data)  # inside the allowed /30
            assert through_proxy(proxy_host, "http://127.0.0.1:4001", origin.url("/a.txt")) == (200, b"passthrough")
            origin.sync_log()
            assert [(e.path, e.client) for e in origin.requests(method="GET")] == [
                (blob, proxy_host.ip),  # fetched for the inside client, as a task (a single piece)
                ("/a.txt", proxy_host.ip),
            ]
            assert [t["url"] for t in ctl_tasks(daemon)] == [origin.url(blob)]
        finally:
            daemon.stop()


def ctl_tasks(daemon: Daemon) -> list[dict]:
    result = run_dffs("ctl", "--data-dir", str(daemon.data_dir), "tasks", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_connection_limit_and_head_timeout(proxies):
    small = await proxies(max_connections=2, head_timeout=0.5)
    with socket.create_connection(("127.0.0.1", small.port)), socket.create_connection(("127.0.0.1", small.port)):
        with trio.fail_after(10):
            while small.connections_active < 2:  # both accepted
                await trio.sleep(0.01)
        assert status_of(await raw(small.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")) == 503
    # A head that never completes gets 408 and the connection closes.
    assert status_of(await raw(small.port, b"GET /v2/ HTTP/1.1\r\nHost:")) == 408
    assert small.stats["refused_busy"] == 1


def test_dffs_daemon_runs_the_mirror_and_refuses_bad_settings(registry, tmp_path):
    import sys

    data = random.Random(67).randbytes(300_000)
    digest = registry.push_blob("test/daemon", data)
    base = [
        sys.executable,
        "-m",
        "dffs",
        "daemon",
        "--data-dir",
        str(tmp_path / "data"),
        "--upload-port",
        "0",
        "--rpc-port",
        "0",
    ]
    proc = subprocess.Popen(
        [*base, "--proxy-port", "0", "--registry-mirror", registry.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"proxy_port=(\d+)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        status, headers, body = _request(int(match.group(1)), "GET", f"/v2/test/daemon/blobs/{digest}")
        assert status == 200 and body == data and headers["docker-content-digest"] == digest
    finally:
        proc.terminate()
        proc.wait(20)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0
    bad = subprocess.run(
        [*base, "--proxy-port", "0", "--registry-mirror", "ftp://registry"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--registry-mirror" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = subprocess.run(
            [*base, "--proxy-port", str(taken.getsockname()[1])], capture_output=True, text=True, timeout=60
        )
    assert busy.returncode == 1 and "Address already in use" in busy.stderr and busy.stderr.count("\n") == 1
