"""No wrong byte through the registry mirror while the GC evicts (issue 16).

The one-hour soak saw blobs served by a daemon's mirror with zeros in their last
partial page (a 721-byte blob all zeros, a 6 MiB + 1331-byte one zero from
6 MiB). The cause: the proxy sent pieces with ``sendfile``, which queues the
page cache's own pages in the socket; once the piece's pin was released the GC
punched its hole, and the kernel zeroes a partially covered page (or large
folio) in place — bytes a client had not read yet.

The first test makes that happen on purpose: a client asks for a blob and reads
nothing until the GC has evicted the blob's piece, then reads the body. The
second is the soak in small: one real ``dffs daemon`` (mount, proxy
as a registry mirror in front of a real ``docker-registry``) runs with a
``--storage-quota`` far below what goes through it: threads pull a few blobs of
one and two pieces through the mirror again and again, each body checked
against its sha256, while ``dffs get`` exports the same blobs (hard links to the
content files, so removals detach them) and the mount reads larger files, all
forcing evictions. Every body must match; the GC must have evicted pieces of the
pulled blobs meanwhile (else the test proved nothing).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import re
import socket
import struct
import termios
import threading
import time
import urllib.request
from pathlib import Path

from cli import run_dffs
from mounts import MountProcess
from registry import Registry

MiB = 1024 * 1024
REPO = "test/gc"
#: Rounds of pulls per thread (a count, not a duration).
ROUNDS = 12


def _daemon(tmp_path: Path, registry: Registry, quota: str) -> MountProcess:
    config = tmp_path / "daemon.toml"
    config.write_text("gc_interval = 0.5\n")
    return MountProcess(
        tmp_path / "mnt",
        tmp_path / "data",
        "--upload-port",
        "0",
        "--rpc-port",
        "0",
        "--proxy-port",
        "0",
        "--registry-mirror",
        registry.url,
        "--storage-quota",
        quota,
        "--config",
        str(config),
        command=("daemon",),
    )


def _proxy_port(daemon: MountProcess) -> int:
    return int(re.search(r"event=proxy_listening address=[\d.]+:(\d+)", daemon.output()).group(1))


def _pending(sock: socket.socket) -> int:
    """Bytes received on ``sock`` and not read yet (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def test_a_blob_the_client_has_not_read_yet_keeps_its_bytes_when_its_piece_is_evicted(tmp_path):
    rng = random.Random(721)
    blobs = {
        "tiny": rng.randbytes(721),  # one piece, one partial page
        "small": rng.randbytes(100 * 1024 + 123),  # one piece ending in a partial page; fits a receive queue
    }
    fillers = [rng.randbytes(5 * MiB + 1) for _ in range(3)]
    with Registry(tmp_path / "registry") as registry:
        digests = {name: registry.push_blob(REPO, data) for name, data in blobs.items()}
        filler_digests = [registry.push_blob(REPO, data) for data in fillers]
        daemon = _daemon(tmp_path, registry, "12MiB")
        try:
            daemon.start()
            port = _proxy_port(daemon)
            for name, data in blobs.items():
                with contextlib.closing(socket.create_connection(("127.0.0.1", port), timeout=60)) as sock:
                    sock.sendall(
                        f"GET /v2/{REPO}/blobs/{digests[name]} HTTP/1.1\r\nHost: mirror\r\n"
                        "Connection: close\r\n\r\n".encode()
                    )
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):  # a byte at a time: the body stays queued
                        byte = sock.recv(1)
                        assert byte, f"the proxy closed before its answer's head: {head!r}"
                        head += byte
                    assert head.startswith(b"HTTP/1.1 200"), head
                    tid = re.search(rb"(?i)x-dffs-task-id: ([0-9a-f]{64})", head).group(1).decode()
                    deadline = time.monotonic() + 60
                    while _pending(sock) < len(data):  # the whole body sent, none of it read
                        assert time.monotonic() < deadline, f"only {_pending(sock)} of {len(data)} bytes came"
                        time.sleep(0.01)
                    # Other blobs through the mirror until the GC has evicted this one's piece.
                    evicted = f"task={tid} event=gc_evict_pieces"
                    before = daemon.output().count(evicted)
                    for _ in range(10):
                        for digest in filler_digests:
                            url = f"http://127.0.0.1:{port}/v2/{REPO}/blobs/{digest}"
                            with urllib.request.urlopen(url, timeout=120) as answer:
                                answer.read()
                        if daemon.output().count(evicted) > before:
                            break
                    assert daemon.output().count(evicted) > before, f"the GC never evicted {name}'s piece"
                    body = b""
                    while chunk := sock.recv(1 << 20):
                        body += chunk
                    assert len(body) == len(data), (name, len(body))
                    wrong = [i for i in range(len(data)) if body[i] != data[i]]
                    assert not wrong, f"{name}: bytes {wrong[0]}..{wrong[-1]} wrong ({len(wrong)} bytes)"
        finally:
            code = daemon.stop()
        assert code == 0, daemon.output()[-3000:]


def test_pulls_through_the_mirror_never_get_a_wrong_byte_while_the_gc_evicts(tmp_path, nginx_origin, make_file):
    rng = random.Random(16)
    blobs = {
        "one-tiny": rng.randbytes(721),
        "one-piece": rng.randbytes(300 * 1024),
        "two-pieces": rng.randbytes(6_292_787),  # pieces of 4 MiB: [0, 4 MiB) and [4 MiB, end)
        "two-more": rng.randbytes(5 * MiB + 17),
    }
    www = tmp_path / "www"
    www.mkdir()
    files = {name: make_file(www / name, 8 * MiB, seed=i) for i, name in enumerate(["m1.bin", "m2.bin"])}
    origin = nginx_origin(www)
    with Registry(tmp_path / "registry") as registry:
        digests = {name: registry.push_blob(REPO, data) for name, data in blobs.items()}
        mount = _daemon(tmp_path, registry, "12MiB")
        try:
            mount.start()
            mirror = f"http://127.0.0.1:{_proxy_port(mount)}/v2/{REPO}/blobs"
            wrong: list[str] = []
            errors: list[str] = []
            blob_tasks: set[str] = set()

            def check(what: str, data: bytes, name: str) -> None:
                if hashlib.sha256(data).hexdigest() != digests[name].removeprefix("sha256:"):
                    right = blobs[name]
                    differ = [i for i in range(min(len(data), len(right))) if data[i] != right[i]]
                    where = f"bytes {differ[0]}..{differ[-1]} differ" if differ else "a prefix"
                    wrong.append(f"{what} {name}: {len(data)} of {len(right)} bytes, {where}")

            def pull(seed: int) -> None:
                order = random.Random(seed)
                for _ in range(ROUNDS):
                    name = order.choice(list(blobs))
                    try:
                        with urllib.request.urlopen(f"{mirror}/{digests[name]}", timeout=120) as answer:
                            blob_tasks.add(answer.headers["X-Dffs-Task-Id"])
                            check("pull", answer.read(), name)
                    except OSError as exc:
                        errors.append(f"pull {name}: {exc}")

            def get(seed: int) -> None:
                order = random.Random(seed)
                for i in range(ROUNDS // 2):
                    name = order.choice(list(blobs))
                    out = tmp_path / f"get-{seed}-{i}"
                    result = run_dffs(
                        "get",
                        f"{registry.url}/v2/{REPO}/blobs/{digests[name]}",
                        "-O",
                        str(out),
                        "--data-dir",
                        str(mount.data_dir),
                        "-q",
                        timeout=120,
                    )
                    if result.returncode != 0:
                        errors.append(f"get {name}: {result.stderr.strip()}")
                        continue
                    check("get", out.read_bytes(), name)  # the export stays linked until unlinked
                    if i % 2:
                        out.unlink()

            def read_mount() -> None:
                base = mount.mountpoint / "http" / f"{origin.host}:{origin.port}"
                for _ in range(ROUNDS // 3):
                    for name, digest in files.items():
                        with open(base / name, "rb") as f:
                            data = f.read()
                            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # next read reaches dffs
                        if hashlib.sha256(data).hexdigest() != digest:
                            wrong.append(f"mount {name}")

            workers = [threading.Thread(target=pull, args=(i,)) for i in range(4)]
            workers += [threading.Thread(target=get, args=(100 + i,)) for i in range(2)]
            workers.append(threading.Thread(target=read_mount))
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(600)
            assert not any(worker.is_alive() for worker in workers), "a pull, get or read never returned"
            assert not wrong, wrong
            assert not errors, errors[:5]
            log = mount.output()
            evictions = sum(log.count(f"task={tid} event=gc_evict_pieces") for tid in blob_tasks)
            assert evictions >= 4, f"only {evictions} evictions of the blobs' pieces: the GC did not churn them"
        finally:
            code = mount.stop()
        assert code == 0, mount.output()[-3000:]
