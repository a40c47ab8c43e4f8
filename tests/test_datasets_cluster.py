"""Datasets across a real cluster on loopback: manager, scheduler, a seed and a peer (with its mount and
proxy), all real processes talking real gRPC; nginx with autoindex is the origin."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import threading

import pytest
from cli import run_dffs, sha256_file
from cluster import Daemon, Manager, Process
from test_p2p_cluster import done_line, wait_for

KiB = 1024
MiB = 1024 * KiB


def ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dffs", "ctl", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def dataset(tmp_path, make_file):
    """A tree of small and not-so-small files (one is several pieces)."""
    root = tmp_path / "www" / "ds"
    layout = {f"train/{i:03d}.bin": 112 * KiB + i for i in range(12)}
    layout |= {f"val/{i:02d}.bin": 16 * KiB + i for i in range(5)}
    layout["big.bin"] = 9 * MiB + 7
    digests = {path: make_file(root / path, size, seed=i) for i, (path, size) in enumerate(layout.items())}
    return tmp_path / "www", digests


@pytest.fixture
def cluster(tmp_path):
    """Manager, scheduler (registered with it), a seed, and a peer with a mount and a proxy."""
    (tmp_path / "sched.toml").write_text("manager_refresh_interval = 0.5\n")
    (tmp_path / "daemon.toml").write_text(
        'announce_interval = 1\nmanager_refresh_interval = 0.5\nproxy_rules = ["[.]bin$"]\n'
    )
    processes: list[Process] = []
    try:
        manager = Manager(tmp_path).start()
        processes.append(manager)
        sched = Process(
            ["scheduler", "--listen", "127.0.0.1:0", "--manager", manager.grpc_address, "--config"]
            + [str(tmp_path / "sched.toml")],
            tmp_path / "sched.log",
            r"listening on (\S+):(\d+)",
        ).start()
        processes.append(sched)
        wait_for(lambda: manager.http("GET", "/schedulers")[1]["schedulers"], what="scheduler registered")
        common = ("--config", str(tmp_path / "daemon.toml"), "--metrics-port", "-1")
        seed = Daemon(
            tmp_path, "seed", None, manager=manager.grpc_address, seed=True, extra=(*common, "--proxy-port", "-1")
        ).start()
        processes.append(seed)
        peer = Daemon(
            tmp_path, "peer", None, manager=manager.grpc_address, mount=True, extra=(*common, "--proxy-port", "0")
        ).start()
        processes.append(peer)
        yield manager, seed, peer
    finally:
        for process in reversed(processes):
            process.stop()


def test_recursive_preheat_then_recursive_get_takes_no_file_bytes_from_the_origin(
    cluster, dataset, tmp_path, nginx_origin
):
    manager, seed, peer = cluster
    www, digests = dataset
    origin = nginx_origin(www)

    # Not a directory URL: refused before any job exists.
    bad = ctl("--manager", manager.grpc_address, "preheat", "--recursive", origin.url("/ds/big.bin"))
    assert bad.returncode == 2 and "directory URLs ending with '/'" in bad.stderr, bad

    done = ctl(
        "--manager",
        manager.grpc_address,
        "--json",
        "preheat",
        "--recursive",
        origin.url("/ds/"),
        "--wait",
        "--timeout",
        "90",
    )
    assert done.returncode == 0, (done.stdout, done.stderr, manager.output()[-3000:])
    job = json.loads(done.stdout)
    assert job["state"] == "succeeded" and job["preheat"]["recursive"] is True
    assert {r["tasks"][0]["url"] for r in job["results"]} == {origin.url(f"/ds/{p}") for p in digests}
    assert all(r["success"] and r["hostname"] == "seed" for r in job["results"])
    origin.sync_log()
    for path in digests:
        assert origin.body_bytes(f"/ds/{path}", "GET") == (www / "ds" / path).stat().st_size, path  # once, to the seed

    # The peer fetches the whole tree through its daemon: every file's bytes from the seed.
    origin.clear_log()
    out = tmp_path / "out"
    got = run_dffs("get", "-r", origin.url("/ds/"), "-O", str(out), "--data-dir", str(peer.data_dir), timeout=120)
    assert got.returncode == 0, (got.stderr, peer.output()[-3000:])
    assert {str(p.relative_to(out)): sha256_file(p) for p in out.rglob("*") if p.is_file()} == digests
    origin.sync_log()
    assert sum(r.body_bytes for r in origin.requests() if not r.path.endswith("/")) == 0
    origin_bytes = [done_line(line)[0] for line in peer.output().splitlines() if "event=download_done" in line]
    assert len(origin_bytes) == len(digests) and not any(origin_bytes)


class ConnectionCounter:
    """Listens where the stopped origin was and counts every connection made to it (closing each at once)."""

    def __init__(self, port: int):
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_with_the_origin_stopped_after_a_preheat_the_peer_reads_by_mount_get_and_proxy(
    cluster, dataset, tmp_path, nginx_origin
):
    """Metadata comes from the swarm (the scheduler's StatTask): a peer that never saw the files reads them
    through its mount, `dffs get` and its proxy with the origin gone, and connects to the origin not once."""
    manager, seed, peer = cluster
    www, digests = dataset
    origin = nginx_origin(www)
    done = ctl("--manager", manager.grpc_address, "preheat", "--recursive", origin.url("/ds/"), "--wait")
    assert done.returncode == 0, (done.stdout, done.stderr)
    # Another peer, whose mount has the dataset as a source (so no directory on the way needs the origin).
    reader = Daemon(
        tmp_path,
        "reader",
        None,
        manager=manager.grpc_address,
        mount=True,
        extra=("--config", str(tmp_path / "daemon.toml"), "--metrics-port", "-1", "--proxy-port", "-1")
        + ("--source", f"ds={origin.url('/ds/')}"),
    ).start()
    # Its listing of the dataset's top directory learns the ETag of every file the swarm holds there in one
    # StatTasks exchange (nginx's listing has none), so those files are pinned for the kernel's cache.
    listed = sorted(p.name for p in (reader.mountpoint / "ds").iterdir())
    assert listed == ["big.bin", "train", "val"]
    wait_for(lambda: "event=swarm_listing_metadata files=1 known=1 pinned=1" in reader.output(), what="swarm ETags")
    origin.stop()
    counter = ConnectionCounter(origin.port)

    members = {"reader": reader, "peer": peer, "seed": seed}

    def read(path) -> str:
        """The file's digest, or a failure that says why the daemons could not serve it."""
        try:
            return sha256_file(path)
        except OSError as exc:
            logs = "\n".join(f"--- {d.name}\n{d.output()[-4000:]}" for name, d in members.items())
            raise AssertionError(f"{path}: {exc}\n{logs}") from exc

    try:
        # The mount: the file's size and validators from the scheduler, its bytes from the seed.
        assert read(reader.mountpoint / "ds" / "big.bin") == digests["big.bin"]
        # dffs get through the peer's daemon.
        out = tmp_path / "got.bin"
        got = run_dffs("get", origin.url("/ds/val/03.bin"), "-O", str(out), "--data-dir", str(peer.data_dir))
        assert got.returncode == 0, (got.stderr, peer.output()[-3000:])
        assert sha256_file(out) == digests["val/03.bin"]
        # The proxy (a forward-proxy GET whose URL matches a P2P rule).
        proxy_port = re.search(r"proxy_port=(\d+)", peer.match.string).group(1)
        fetched = subprocess.run(
            ["curl", "-sSf", "-x", f"http://127.0.0.1:{proxy_port}", origin.url("/ds/train/005.bin")],
            capture_output=True,
            timeout=60,
        )
        assert fetched.returncode == 0, (fetched.stderr, peer.output()[-3000:])
        assert hashlib.sha256(fetched.stdout).hexdigest() == digests["train/005.bin"]
        assert counter.accepted == 0, (peer.output()[-3000:], reader.output()[-3000:])

        # Deeper paths through the mount still read right: the directories on the way cannot be asked of the
        # origin, so they are taken for directories while it is unreachable (the files come from the swarm).
        assert read(peer.path("/ds/train/007.bin", origin)) == digests["train/007.bin"]
        assert read(reader.mountpoint / "ds" / "train" / "008.bin") == digests["train/008.bin"]
    finally:
        counter.close()
        reader.stop()
