"""Trust with real processes: outsiders get nothing, remote requests are limited, parents are not
believed blindly, credentials stay home, and nonsense from a scheduler or a parent costs nothing.

Hosts are network namespaces (tests/netns.py); every dffs process is a real one, authenticated by the
session's cluster key (conftest). The intruder and the remote caller are ``tests/trust_probe.py``,
run inside a host's namespace with no certificate, another cluster's, or a member's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cli import sha256_file
from cluster import Daemon, Process
from members import member
from netns import Network

from dffs.api import common_pb2, dfdaemon_pb2, scheduler_pb2
from dffs.idgen import host_id, task_id
from dffs.security.ca import create_cluster_key
from dffs.storage import StorageManager

MiB = 1024 * 1024
PROBE = Path(__file__).with_name("trust_probe.py")
DAEMON_CONFIG = "announce_interval = 1\nparent_wait = 2\nparent_rounds = 3\n"
#: Keep a stopped daemon's host (and its peers) while it restarts.
SCHEDULER_CONFIG = "host_ttl_intervals = 60\n"


@pytest.fixture
def net():
    with Network(subnet="10.79.0") as network:
        yield network


def probe(net, host, *args: str) -> dict:
    out = net.check_output(host, [sys.executable, str(PROBE), *args], timeout=90)
    return json.loads(out.strip().splitlines()[-1])


def start_scheduler(net, host, tmp_path) -> Process:
    config = tmp_path / "scheduler.toml"
    config.write_text(SCHEDULER_CONFIG)
    sched = Process(
        ["scheduler", "--listen", f"{host.ip}:8002", "--config", str(config)],
        tmp_path / "scheduler.log",
        r"listening on (\S+):(\d+)",
        prefix=host.command([]),
    ).start()
    net.processes.append(sched.proc)
    return sched


def start_daemon(net, tmp_path, host, scheduler: str | None, *, seed: bool = False, mount: bool = False) -> Daemon:
    config = tmp_path / "daemon.toml"
    config.write_text(DAEMON_CONFIG)
    daemon = Daemon(
        tmp_path,
        host.name,
        scheduler,
        ip=host.ip,
        seed=seed,
        mount=mount,
        prefix=host.command([]),
        extra=("--config", str(config), "--proxy-port", "-1", "--metrics-port", "-1"),
    ).start()
    net.processes.append(daemon.proc)
    return daemon


def get(daemon: Daemon, url: str, out: Path, *headers: str) -> subprocess.CompletedProcess:
    """``dffs get`` through the daemon's socket (local: any scheme, any address)."""
    argv = [sys.executable, "-m", "dffs", "get", url, "-O", str(out), "--data-dir", str(daemon.data_dir)]
    for header in headers:
        argv += ["--header", header]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180)


def ports(daemon: Daemon) -> tuple[int, int]:
    return int(daemon.match.group(1)), int(daemon.match.group(2))


def test_outsiders_get_nothing_and_credentials_stay_home(net, tmp_path, nginx_origin, make_file):
    hosts = {name: net.add_host(name) for name in ("sched", "origin", "seed", "intruder")}
    digest = make_file(tmp_path / "www" / "f.bin", 9 * MiB + 7, seed=71)
    origin = nginx_origin(tmp_path / "www", host=hosts["origin"].ip, port=8080, netns=hosts["origin"].netns)
    sched = start_scheduler(net, hosts["sched"], tmp_path)
    sched_addr = f"{hosts['sched'].ip}:8002"
    seed = start_daemon(net, tmp_path, hosts["seed"], sched_addr, seed=True)
    # A signed URL and credential headers: the seed uses them at the origin, and nowhere else.
    url = f"http://{origin.host}:8080/f.bin?X-Amz-Signature=sig0123secret&v=1"
    result = get(seed, url, tmp_path / "f.out", "Authorization: Bearer s3cr3t-token", "Cookie: sid=c00kie-value")
    assert result.returncode == 0, (result.stderr, seed.output()[-3000:])
    assert sha256_file(tmp_path / "f.out") == digest
    tid = task_id(url)
    upload_port, rpc_port = ports(seed)
    seed_rpc, seed_upload = f"{hosts['seed'].ip}:{rpc_port}", f"{hosts['seed'].ip}:{upload_port}"
    foreign = tmp_path / "foreign.key"
    create_cluster_key(foreign)
    intruder = hosts["intruder"]

    # Outsiders: no certificate, or one from another cluster. Nothing answers them.
    for creds in ("plain", f"foreign:{foreign}"):
        for call, args in (("announce", [sched_addr]), ("sync", [seed_rpc, tid]), ("download", [seed_rpc, url])):
            answer = probe(net, intruder, call, creds, *args)
            assert not answer["ok"] and answer["code"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), (call, creds, answer)
        piece = probe(net, intruder, "piece", creds, seed_upload, tid)
        assert piece == {"ok": False, "status": 401, "details": piece["details"]} and "signature" in piece["details"]

    # The same calls as members do work (so the refusals above were for the right reason) ...
    assert probe(net, intruder, "sync", "member:daemon", seed_rpc, tid) == {"ok": True, "pieces": 3}
    assert probe(net, intruder, "piece", "member:daemon", seed_upload, tid)["status"] == 200
    # ... but a daemon speaks only for its own host, and only schedulers and managers trigger downloads.
    denied = probe(net, intruder, "announce", "member:daemon", sched_addr)
    assert (denied["ok"], denied["code"]) == (False, "PERMISSION_DENIED"), denied
    denied = probe(net, intruder, "download", "member:daemon", seed_rpc, url)
    assert (denied["code"], "only schedulers and managers" in denied["details"]) == ("PERMISSION_DENIED", True)

    # StatTask, asked by a member: the task, without any credential; and no log line has one.
    stat = probe(net, intruder, "stat", "member:client", sched_addr, tid)
    assert stat["ok"] and stat["task"]["id"] == tid, stat
    text = json.dumps(stat)
    for secret in ("s3cr3t-token", "c00kie-value", "sig0123secret"):
        assert secret not in text, (secret, stat)
        for process in (seed, sched):
            assert secret not in process.output(), (secret, process.log_path)
    assert "X-Amz-Signature=REDACTED" in seed.output()  # the log says a signature was there, not what it was


def test_remote_requests_may_not_name_local_files_or_internal_addresses(net, tmp_path, nginx_origin, make_file):
    hosts = {name: net.add_host(name) for name in ("seed", "caller")}
    seed_host = hosts["seed"]
    # An internal service on the seed's host, at a link-local address (where cloud metadata lives).
    subprocess.run(
        ["ip", "-n", seed_host.netns, "addr", "add", "169.254.10.1/16", "dev", seed_host.veth],
        check=True,
        capture_output=True,
    )
    make_file(tmp_path / "meta" / "iam.json", 4096, seed=72)
    internal = nginx_origin(tmp_path / "meta", host="169.254.10.1", port=8080, netns=seed_host.netns)
    (tmp_path / "local.txt").write_text("a file on the seed's disk\n")
    seed = start_daemon(net, tmp_path, seed_host, None, seed=True)
    seed_rpc = f"{seed_host.ip}:{ports(seed)[1]}"
    caller = hosts["caller"]

    # From the network, even as a member: refused with the reason, nothing fetched.
    answer = probe(net, caller, "download", "member:scheduler", seed_rpc, "http://169.254.10.1:8080/iam.json")
    assert answer["code"] == "PERMISSION_DENIED" and "metadata" in answer["details"], answer
    answer = probe(net, caller, "download", "member:manager", seed_rpc, f"file://{tmp_path / 'local.txt'}")
    assert answer["code"] == "PERMISSION_DENIED" and "file scheme" in answer["details"], answer
    internal.sync_log()
    assert internal.requests("/iam.json") == []
    assert seed.output().count("event=remote_download_refused") == 2

    # On the host itself (the control socket): both work.
    assert get(seed, "http://169.254.10.1:8080/iam.json", tmp_path / "iam.out").returncode == 0
    assert (tmp_path / "iam.out").read_bytes() == (tmp_path / "meta" / "iam.json").read_bytes()
    assert get(seed, f"file://{tmp_path / 'local.txt'}", tmp_path / "local.out").returncode == 0
    assert (tmp_path / "local.out").read_text() == "a file on the seed's disk\n"
    assert seed.alive()


def _corrupt_every_piece(data_dir: Path, tid: str) -> int:
    """Rewrite each piece with one byte flipped, journaled with the digest of the wrong bytes: the
    daemon will announce and serve them as its own, with matching digests."""
    storage = StorageManager(data_dir)
    try:
        store = storage.open_task(tid)
        assert store is not None and store.is_complete()
        for number in store.present_pieces():
            data = bytearray(store.read_piece(number))
            data[len(data) // 2] ^= 0xFF
            store.write_piece(number, bytes(data))
        return len(store.present_pieces())
    finally:
        storage.close()


def test_a_parent_serving_wrong_bytes_with_matching_digests_is_caught_by_the_anchored_digest(
    net, tmp_path, nginx_origin, make_file
):
    hosts = {name: net.add_host(name) for name in ("sched", "origin", "seed", "good", "evil", "child")}
    size = 24 * MiB + 5
    digest = make_file(tmp_path / "www" / "g.bin", size, seed=73)
    origin = nginx_origin(tmp_path / "www", host=hosts["origin"].ip, port=8080, netns=hosts["origin"].netns)
    url = f"http://{origin.host}:8080/g.bin"
    tid = task_id(url)
    sched = start_scheduler(net, hosts["sched"], tmp_path)
    sched_addr = f"{hosts['sched'].ip}:8002"
    daemons = {"seed": start_daemon(net, tmp_path, hosts["seed"], sched_addr, seed=True)}
    for name in ("good", "evil"):
        daemons[name] = start_daemon(net, tmp_path, hosts[name], sched_addr)
        result = get(daemons[name], url, tmp_path / f"{name}.out")
        assert result.returncode == 0 and sha256_file(tmp_path / f"{name}.out") == digest, result.stderr
    origin.sync_log()
    assert origin.body_bytes("/g.bin", "GET") == size  # the seed fetched it, once: its digests are anchored

    evil = daemons["evil"]
    evil.stop()
    assert _corrupt_every_piece(evil.data_dir, tid) == 7
    evil.start()
    daemons["child"] = child = start_daemon(net, tmp_path, hosts["child"], sched_addr)
    result = get(child, url, tmp_path / "child.out")
    assert result.returncode == 0, (result.stderr, child.output()[-3000:])
    assert sha256_file(tmp_path / "child.out") == digest  # the right bytes, from the other parents

    evil_peer = host_id(hosts["evil"].ip, "evil", False)[:12]
    caught = [line for line in child.output().splitlines() if "event=parent_dropped" in line]
    assert caught and all(f"parent={evil_peer}" in line for line in caught), caught
    assert "the scheduler anchored" in caught[0]
    # reported: the scheduler counts the failure against the evil parent
    assert any("event=piece_failed" in line and f"parent={evil_peer}" in line for line in sched.output().splitlines())
    origin.sync_log()
    assert origin.body_bytes("/g.bin", "GET") == size  # the child took nothing from the origin
    assert all(d.alive() for d in daemons.values())


# ---------------------------------------------------------------- evil scheduler and evil parent


class EvilParent:
    """A 'parent' with a member certificate that announces nonsense and serves worse: SyncPieces with
    the digest the evil scheduler anchors for piece 0, then impossible numbers and malformed digests;
    its upload port answers with the anchored digest and a body of the wrong length."""

    def __init__(self, anchor: str):
        self.anchor = anchor
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        from dffs.api import dfdaemon_pb2_grpc

        evil = self

        class Upload(dfdaemon_pb2_grpc.DfdaemonUploadServicer):
            def SyncPieces(self, request, context):  # noqa: N802
                yield dfdaemon_pb2.SyncPiecesResponse(number=0, digest=evil.anchor)
                yield dfdaemon_pb2.SyncPiecesResponse(number=10**9, digest=evil.anchor)
                yield dfdaemon_pb2.SyncPiecesResponse(number=1, digest="blake3:not-hex")
                evil._stop.wait(60)

        dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(Upload(), self.server)
        self.rpc_port = member("daemon", "evil-parent").add_port(self.server, "127.0.0.1:0")
        self.server.start()
        import socket

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.upload_port = self.listener.getsockname()[1]
        self.served = 0
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            conn.recv(65536)
            self.served += 1
            head = f"HTTP/1.1 200 OK\r\nX-Dffs-Piece-Digest: {self.anchor}\r\nContent-Length: 5\r\n\r\n"
            conn.sendall(head.encode() + b"short")  # not the piece's length

    def close(self):
        self._stop.set()
        self.listener.close()
        self.server.stop(0)


class EvilScheduler:
    """A 'scheduler' with a member certificate that answers every register with unusable parents
    (port 0, a bad address, no id, the asking host itself, an enormous id), an empty answer, and one
    evil parent; anchors a digest no origin byte has; and claims absurd sizes in StatTask."""

    def __init__(self, parent: EvilParent, anchor: str):
        from dffs.api import scheduler_pb2_grpc

        self.registers = 0
        evil = self

        class Scheduler(scheduler_pb2_grpc.SchedulerServicer):
            def AnnouncePeer(self, request_iterator, context):  # noqa: N802
                for request in request_iterator:
                    if request.HasField("register_peer_request"):
                        evil.registers += 1

                        def peer(pid, ip="127.0.0.1", port=1, download_port=1, hid="x"):
                            return common_pb2.Peer(
                                id=pid, host=common_pb2.Host(id=hid, ip=ip, port=port, download_port=download_port)
                            )

                        yield scheduler_pb2.AnnouncePeerResponse(
                            normal_task_response=scheduler_pb2.NormalTaskResponse(
                                candidate_parents=[
                                    peer("zero-port", port=0),
                                    peer("bad-ip", ip="not.an.address"),
                                    peer(""),
                                    peer("itself", hid=request.host_id),
                                    peer("y" * 5000),
                                    peer("evil", port=parent.rpc_port, download_port=parent.upload_port),
                                ]
                            )
                        )
                        yield scheduler_pb2.AnnouncePeerResponse()  # no answer at all

            def AnnounceHost(self, request, context):  # noqa: N802
                from google.protobuf import empty_pb2

                return empty_pb2.Empty()

            def GetPieceDigests(self, request, context):  # noqa: N802
                return scheduler_pb2.GetPieceDigestsResponse(digests={0: anchor, 1: "nonsense", 2: "blake3:zz"})

            def StatTask(self, request, context):  # noqa: N802
                return common_pb2.Task(id=request.task_id, content_length=2**63 - 1, has_available_peer=True)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(Scheduler(), self.server)
        self.port = member("scheduler", "evil").add_port(self.server, "127.0.0.1:0")
        self.server.start()

    def close(self):
        self.server.stop(0)


def test_a_scheduler_and_a_parent_saying_nonsense_cost_a_read_nothing(tmp_path, nginx_origin, make_file):
    digest = make_file(tmp_path / "www" / "h.bin", 9 * MiB + 3, seed=74)
    origin = nginx_origin(tmp_path / "www")
    anchor = "blake3:" + "ab" * 32  # anchored by the evil scheduler: no origin byte hashes to it
    parent = EvilParent(anchor)
    scheduler = EvilScheduler(parent, anchor)
    config = tmp_path / "daemon.toml"
    config.write_text("announce_interval = 1\nparent_wait = 0.5\nparent_rounds = 2\n")
    daemon = Daemon(
        tmp_path,
        "victim",
        f"127.0.0.1:{scheduler.port}",
        mount=True,
        extra=("--config", str(config), "--proxy-port", "-1", "--metrics-port", "0"),
    )
    try:
        daemon.start()
        # Through the mount: every byte right, whatever the scheduler and the parent said.
        assert sha256_file(daemon.path("/h.bin", origin)) == digest
        out = tmp_path / "h.out"
        assert get(daemon, origin.url("/h.bin"), out).returncode == 0 and sha256_file(out) == digest
        assert scheduler.registers >= 1
        log = daemon.output()
        assert "event=parent_ignored" in log and "bad port 0" in log and "it is this host" in log
        assert "event=parent_nonsense" in log  # the impossible piece numbers and malformed digests
        assert daemon.alive()
        metrics_port = int(__import__("re").search(r"metrics_port=(\d+)", daemon.match.string).group(1))
        import urllib.request

        assert urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthy", timeout=10).status == 200
    finally:
        daemon.stop()
        scheduler.close()
        parent.close()
