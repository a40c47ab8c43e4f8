"""``dffs scheduler`` as a real subprocess, driven by gRPC clients using the generated stubs.

Every wait is on a condition with a deadline; every subprocess is killed at
teardown.
"""

from __future__ import annotations

import os
import queue
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from members import member, member_channel

from dffs.api import common_pb2, dfdaemon_pb2, scheduler_pb2, scheduler_pb2_grpc

#: Upper bound for any single wait; tests finish far sooner.
STEP = 10.0
MiB = 1 << 20

_CLI = "from dffs.cli.main import main; main()"


def wait_for(condition, timeout=STEP, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def write_toml(path: Path, values: dict) -> Path:
    lines = []
    for key, value in values.items():
        lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value!r}")
    path.write_text("\n".join(lines) + "\n")
    return path


class SchedulerProcess:
    """A ``dffs scheduler --listen 127.0.0.1:0`` subprocess and a channel to it."""

    def __init__(self, workdir: Path, **config):
        workdir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-c", _CLI, "scheduler", "--listen", "127.0.0.1:0"]
        if config:
            args += ["--config", str(write_toml(workdir / "scheduler.toml", config))]
        self.log_path = workdir / "scheduler.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.channel = None
        try:
            line = self._read_stdout_line()
            match = re.search(r"listening on (\S+):(\d+)", line)
            assert match, line
            self.port = int(match.group(2))
            self.channel = member_channel(f"127.0.0.1:{self.port}", role="client")  # may speak for any host
            self.stub = scheduler_pb2_grpc.SchedulerStub(self.channel)
        except BaseException:
            self.close()
            raise

    def _read_stdout_line(self) -> str:
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(STEP):
                raise AssertionError(f"scheduler printed nothing; log: {self.log()}")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"scheduler exited {self.proc.wait()}: {self.log()}")
        return line

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, pattern: str) -> re.Match:
        return wait_for(lambda: re.search(pattern, self.log()), what=f"log line {pattern!r}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STEP)
        self.proc.stdout.close()
        self._log.close()


@pytest.fixture(scope="module")
def sched(tmp_path_factory):
    s = SchedulerProcess(tmp_path_factory.mktemp("sched"), max_message_bytes=MiB, retry_interval=0.2)
    try:
        yield s
        assert s.alive(), f"the scheduler died: {s.log()}"
        assert "Traceback" not in s.log(), s.log()
    finally:
        s.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    s = SchedulerProcess(
        tmp_path_factory.mktemp("tiny"),
        host_ttl=0.5,
        gc_interval=0.05,
        candidate_parent_limit=2,
        retry_interval=0.2,
    )
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def ids(request):
    """Unique ids per test (module-scoped schedulers are shared)."""
    base = re.sub(r"\W", "_", request.node.name)
    return lambda name: f"{base}-{name}"


_ips = iter(range(2, 250))


def announce_host(stub, host_id, *, seed=False, ip=None, port=4000, download_port=4001, interval=None, **fields):
    request = scheduler_pb2.AnnounceHostRequest(
        host=common_pb2.Host(
            id=host_id,
            type=common_pb2.HOST_TYPE_SEED if seed else common_pb2.HOST_TYPE_NORMAL,
            hostname=host_id,
            ip=ip or f"10.1.0.{next(_ips)}",
            port=port,
            download_port=download_port,
            **fields,
        )
    )
    if interval is not None:
        request.interval.seconds = interval
    stub.AnnounceHost(request, timeout=STEP)
    return request.host


class PeerStream:
    """One AnnouncePeer stream, request by request."""

    _END = object()

    def __init__(self, stub, host_id, task_id, peer_id):
        self.host_id, self.task_id, self.peer_id = host_id, task_id, peer_id
        self._queue: queue.Queue = queue.Queue()
        self.call = stub.AnnouncePeer(iter(self._queue.get, self._END), timeout=STEP * 3)

    def send(self, **request):
        self._queue.put(
            scheduler_pb2.AnnouncePeerRequest(
                host_id=self.host_id, task_id=self.task_id, peer_id=self.peer_id, **request
            )
        )

    def send_raw(self, message):
        self._queue.put(message)

    def register(self, url="http://origin.example/file", **download):
        self.send(
            register_peer_request=scheduler_pb2.RegisterPeerRequest(download=common_pb2.Download(url=url, **download))
        )

    def recv(self) -> scheduler_pb2.AnnouncePeerResponse:
        return next(self.call)

    def recv_kind(self) -> tuple[str, scheduler_pb2.AnnouncePeerResponse]:
        response = self.recv()
        return response.WhichOneof("response"), response

    def parents(self) -> list[common_pb2.Peer]:
        kind, response = self.recv_kind()
        assert kind == "normal_task_response", response
        return list(response.normal_task_response.candidate_parents)

    def error(self) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            self.recv()
        return info.value

    def piece_from_source(self, number, length=4 * MiB):
        self.send(
            download_piece_back_to_source_finished_request=scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(
                piece=common_pb2.Piece(
                    number=number, offset=number * length, length=length, digest=piece_digest(number)
                )
            )
        )

    def piece_from(self, parent_id, number, length=4 * MiB, cost_ms=20):
        piece = common_pb2.Piece(
            number=number,
            parent_id=parent_id,
            offset=number * length,
            length=length,
            digest=piece_digest(number),
            traffic_type=common_pb2.TRAFFIC_TYPE_REMOTE_PEER,
        )
        piece.cost.nanos = cost_ms * 1_000_000
        self.send(download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(piece=piece))

    def close(self):
        self._queue.put(self._END)
        for _ in self.call:  # the scheduler ends its side once we half-close
            pass


def source_peer(stub, host_id, task_id, peer_id, *, pieces=(0,)):
    """A peer on the origin holding ``pieces`` (it asked for the origin itself)."""
    stream = PeerStream(stub, host_id, task_id, peer_id)
    stream.register(need_back_to_source=True)
    assert stream.recv_kind()[0] == "need_back_to_source_response"
    stream.send(download_peer_back_to_source_started_request={})
    for n in pieces:
        stream.piece_from_source(n)
    return stream


def stat_peer(stub, peer_id):
    return stub.StatPeer(scheduler_pb2.StatPeerRequest(peer_id=peer_id), timeout=STEP)


def find_peer(stub, peer_id):
    try:
        return stat_peer(stub, peer_id)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None


def wait_pieces(stub, peer_id, count):
    wait_for(lambda: len(stat_peer(stub, peer_id).pieces) >= count, what=f"{count} pieces on {peer_id}")


def code_of(fn, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=STEP, **kwargs)
    return info.value.code()


# ---- the happy paths -------------------------------------------------------------


def test_announce_host_says_whether_the_scheduler_knew_the_host(sched, ids):
    """host_known: false at a host's first announce (or after it was deleted: the scheduler then
    knows none of its tasks, and the daemon registers its finished ones again), true after."""
    stub = sched.stub
    request = scheduler_pb2.AnnounceHostRequest(
        host=common_pb2.Host(
            id=ids("h"), type=common_pb2.HOST_TYPE_NORMAL, hostname="h", ip="10.1.9.1", port=4000, download_port=4001
        )
    )
    assert stub.AnnounceHost(request, timeout=STEP).host_known is False
    assert stub.AnnounceHost(request, timeout=STEP).host_known is True
    stub.DeleteHost(scheduler_pb2.DeleteHostRequest(host_id=ids("h")), timeout=STEP)
    assert stub.AnnounceHost(request, timeout=STEP).host_known is False


def test_first_peer_goes_to_source_and_becomes_the_second_ones_parent(sched, ids):
    stub = sched.stub
    h1 = announce_host(stub, ids("h1"), idc="dc1")
    announce_host(stub, ids("h2"))
    task = ids("task")
    first = PeerStream(stub, h1.id, task, ids("p1"))
    first.register()
    kind, response = first.recv_kind()
    assert kind == "need_back_to_source_response", response
    first.send(download_peer_back_to_source_started_request={})
    first.piece_from_source(0)
    first.piece_from_source(1)
    wait_pieces(stub, ids("p1"), 2)

    second = PeerStream(stub, ids("h2"), task, ids("p2"))
    second.register()
    (parent,) = second.parents()
    assert parent.id == ids("p1")
    assert (parent.host.id, parent.host.ip, parent.host.port, parent.host.download_port) == (h1.id, h1.ip, 4000, 4001)
    assert parent.host.idc == "dc1" and parent.state == "back_to_source" and parent.task.id == task

    second.send(download_peer_started_request={})
    second.piece_from(ids("p1"), 0)
    first.send(
        download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest(
            content_length=8 * MiB, piece_count=2
        )
    )
    second.piece_from(ids("p1"), 1)
    second.send(
        download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest(content_length=8 * MiB, piece_count=2)
    )
    first.close()
    second.close()
    stat = stub.StatTask(scheduler_pb2.StatTaskRequest(task_id=task), timeout=STEP)
    assert (stat.state, stat.content_length, stat.piece_count, stat.peer_count) == ("succeeded", 8 * MiB, 2, 2)
    assert stat_peer(stub, ids("p2")).state == "succeeded"


@pytest.fixture(scope="module")
def patient(tmp_path_factory):
    """A scheduler whose rounds last a minute: any answer sooner was woken by a change."""
    s = SchedulerProcess(tmp_path_factory.mktemp("patient"), retry_interval=60)
    try:
        yield s
        assert s.alive() and "Traceback" not in s.log(), s.log()
    finally:
        s.close()


def _source_and_waiting_peer(stub, ids):
    """p1 told to take the origin, then p2 registered on the same task with no parent yet."""
    for h in ("h1", "h2"):
        announce_host(stub, ids(h))
    task = ids("task")
    first = PeerStream(stub, ids("h1"), task, ids("p1"))
    first.register()
    assert first.recv_kind()[0] == "need_back_to_source_response"
    second = PeerStream(stub, ids("h2"), task, ids("p2"))
    second.register()
    wait_for(lambda: find_peer(stub, ids("p2")), what="p2 registered")
    return first, second


def test_a_waiting_peer_is_answered_as_soon_as_a_parent_has_a_piece(patient, ids):
    first, second = _source_and_waiting_peer(patient.stub, ids)
    first.piece_from_source(0)
    # The next round is 60 s away and the stream's deadline 30 s: an answer at all means the
    # piece report itself woke the waiting peer (no stopwatch needed).
    assert [p.id for p in second.parents()] == [ids("p1")]
    first.close()
    second.close()


def test_a_stream_waiting_for_its_reschedule_still_has_its_reports_applied_at_once(patient, ids):
    """p1, on the origin, asked to be rescheduled (no parent in sight: its next round a minute
    away) and goes on reporting. Each report is applied as it arrives, not after that answer: its
    first piece answers p2, which waits for a parent, at once; its finished report drops the
    pending answer, and the stream ends at once (not at its 30 s deadline)."""
    stub = patient.stub
    task = ids("task")
    first, second = _source_and_waiting_peer(stub, ids)
    first.send(download_peer_back_to_source_started_request={})
    first.send(reschedule_request=scheduler_pb2.RescheduleRequest())
    patient.wait_log(rf"event=reschedule task={task} peer={ids('p1')}")
    first.piece_from_source(0)
    assert [p.id for p in second.parents()] == [ids("p1")]
    first.send(
        download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest(
            content_length=4 * MiB, piece_count=1
        )
    )
    first.close()  # no answer owed any more: the stream ends OK, with no response for the reschedule
    assert stat_peer(stub, ids("p1")).state == "succeeded"
    second.close()


def test_a_crowd_of_waiting_peers_is_answered_by_the_pieces_of_the_ones_before(patient, ids):
    """30 peers wait on a task whose one source has no piece yet. Its first piece wakes as
    many as its upload slots serve (8 / 4 parents each); their first pieces wake the rest."""
    stub = patient.stub
    announce_host(stub, ids("src"), labels={"upload_slots": "8"})
    task = ids("task")
    source = PeerStream(stub, ids("src"), task, ids("source"))
    source.register(need_back_to_source=True)
    assert source.recv_kind()[0] == "need_back_to_source_response"
    crowd = []
    for i in range(30):
        announce_host(stub, ids(f"h{i}"))
        peer = PeerStream(stub, ids(f"h{i}"), task, ids(f"p{i}"))
        peer.register()
        crowd.append(peer)
    for i in range(30):
        wait_for(lambda i=i: find_peer(stub, ids(f"p{i}")), what=f"p{i} registered")
    with futures.ThreadPoolExecutor(30) as pool:
        answers = [pool.submit(peer.parents) for peer in crowd]
        source.piece_from_source(0)
        reported: set[int] = set()

        def report_new_answers():
            """Each answered peer gets piece 0 from its first parent, as a daemon would."""
            for i, answer in enumerate(answers):
                if answer.done() and i not in reported:
                    reported.add(i)
                    crowd[i].piece_from(answer.result()[0].id, 0)
            return len(reported) == len(crowd)

        wait_for(report_new_answers, what="every waiting peer answered")
        parents = [a.result() for a in answers]
    first_wave = [ps for ps in parents if [p.id for p in ps] == [ids("source")]]
    assert len(first_wave) >= 2  # the source's slots served the oldest first
    assert all(p.state in ("back_to_source", "running") for ps in parents for p in ps)
    for peer in (source, *crowd):
        peer.close()


def test_no_parent_for_a_few_rounds_means_back_to_source(sched, ids):
    stub = sched.stub
    for h in ("h1", "h2"):
        announce_host(stub, ids(h))
    task = ids("task")
    first = PeerStream(stub, ids("h1"), task, ids("p1"))
    first.register()
    assert first.recv_kind()[0] == "need_back_to_source_response"
    second = PeerStream(stub, ids("h2"), task, ids("p2"))
    started = time.monotonic()
    second.register()
    kind, response = second.recv_kind()
    assert kind == "need_back_to_source_response"
    assert "3 rounds" in response.need_back_to_source_response.description
    assert time.monotonic() - started >= 0.55
    first.close()
    second.close()


def test_empty_task(sched, ids):
    stub = sched.stub
    for h in ("h1", "h2"):
        announce_host(stub, ids(h))
    first = PeerStream(stub, ids("h1"), ids("task"), ids("p1"))
    first.register()
    assert first.recv_kind()[0] == "need_back_to_source_response"
    first.send(
        download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest(
            content_length=0, piece_count=0
        )
    )
    first.close()
    second = PeerStream(stub, ids("h2"), ids("task"), ids("p2"))
    second.register()
    assert second.recv_kind()[0] == "empty_task_response"
    second.close()


def piece_digest(number: int) -> str:
    """A well-formed digest, the same for a piece wherever it is reported (as real bytes would be)."""
    return "blake3:" + f"{number:064x}"


class FakeSeed:
    """A seed daemon's DfdaemonUpload with just DownloadTask: records requests."""

    def __init__(self):
        self.requests: queue.Queue = queue.Queue()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))

        def download_task(request, context):
            self.requests.put(request)
            yield dfdaemon_pb2.DownloadTaskResponse(
                task_id="t", download_task_started_response=dfdaemon_pb2.DownloadTaskStartedResponse()
            )

        handler = grpc.method_handlers_generic_handler(
            "dffs.dfdaemon.DfdaemonUpload",
            {
                "DownloadTask": grpc.unary_stream_rpc_method_handler(
                    download_task,
                    request_deserializer=dfdaemon_pb2.DownloadTaskRequest.FromString,
                    response_serializer=dfdaemon_pb2.DownloadTaskResponse.SerializeToString,
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = member("daemon", "fake-seed").add_port(self.server, "127.0.0.1:0")
        self.server.start()

    def close(self):
        self.server.stop(0).wait(STEP)


@pytest.fixture
def fake_seed():
    seed = FakeSeed()
    try:
        yield seed
    finally:
        seed.close()


def test_seed_is_triggered_and_offered_as_parent(tiny, ids, fake_seed):
    # Its own instance: a seed host changes decisions for every later task.
    stub = tiny.stub
    seed_host = announce_host(stub, ids("seed"), seed=True, ip="127.0.0.1", port=fake_seed.port, interval=10)
    announce_host(stub, ids("h1"), interval=10)
    task = ids("task")
    peer = PeerStream(stub, ids("h1"), task, ids("p1"))
    peer.register(url="http://origin.example/big", tag="v2", piece_length=4 * MiB)
    (parent,) = peer.parents()
    assert parent.host.id == seed_host.id and parent.host.type == common_pb2.HOST_TYPE_SEED
    assert (parent.host.ip, parent.host.port) == ("127.0.0.1", fake_seed.port)
    assert parent.state == "triggered" and not parent.pieces

    request = fake_seed.requests.get(timeout=STEP)
    assert (request.download.url, request.download.tag, request.download.piece_length) == (
        "http://origin.example/big",
        "v2",
        4 * MiB,
    )
    tiny.wait_log(
        rf"event=seed_triggered task={task} peer={ids('p1')} seed_host={seed_host.id} "
        rf"seed_peer={re.escape(parent.id)}"
    )
    tiny.wait_log(rf"event=seed_trigger_accepted task={task}")
    assert stat_peer(stub, parent.id).state == "triggered"

    # The seed daemon registers the task: it goes to the origin and takes over the placeholder.
    seed = PeerStream(stub, seed_host.id, task, ids("seed-peer"))
    seed.register(url="http://origin.example/big", tag="v2", piece_length=4 * MiB)
    assert seed.recv_kind()[0] == "need_back_to_source_response"
    assert stat_peer(stub, parent.id).id == ids("seed-peer")
    seed.piece_from_source(0)
    peer.piece_from(parent.id, 0)  # the child keeps using the id it was given
    wait_pieces(stub, ids("p1"), 1)
    peer.close()
    seed.close()
    fake_seed.requests.put(None)
    assert fake_seed.requests.get_nowait() is None  # exactly one trigger
    stub.DeleteHost(scheduler_pb2.DeleteHostRequest(host_id=seed_host.id), timeout=STEP)


def test_unreachable_seed_falls_back_to_the_origin(tiny, ids):
    stub = tiny.stub
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    announce_host(stub, ids("seed"), seed=True, ip="127.0.0.1", port=dead_port, interval=10)
    announce_host(stub, ids("h1"), interval=10)
    peer = PeerStream(stub, ids("h1"), ids("task"), ids("p1"))
    peer.register()
    (parent,) = peer.parents()
    tiny.wait_log(rf"event=seed_trigger_failed task={ids('task')}")
    peer.send(reschedule_request=scheduler_pb2.RescheduleRequest(candidate_parents=[common_pb2.Peer(id=parent.id)]))
    assert peer.recv_kind()[0] == "need_back_to_source_response"
    peer.close()
    stub.DeleteHost(scheduler_pb2.DeleteHostRequest(host_id=ids("seed")), timeout=STEP)


def test_failed_parents_are_not_offered_again(sched, ids):
    stub = sched.stub
    for h in ("a", "b", "c", "d"):
        announce_host(stub, ids(h))
    task = ids("task")
    a = source_peer(stub, ids("a"), task, ids("pa"))
    b = source_peer(stub, ids("b"), task, ids("pb"))
    wait_pieces(stub, ids("pa"), 1)
    wait_pieces(stub, ids("pb"), 1)
    child = PeerStream(stub, ids("c"), task, ids("pc"))
    child.register()
    assert sorted(p.id for p in child.parents()) == sorted([ids("pa"), ids("pb")])
    # A permanent piece failure blocks pa for this child ...
    child.send(
        download_piece_failed_request=scheduler_pb2.DownloadPieceFailedRequest(
            piece_number=0, parent_id=ids("pa"), temporary=False, description="digest mismatch"
        )
    )
    child.send(reschedule_request=scheduler_pb2.RescheduleRequest())
    assert [p.id for p in child.parents()] == [ids("pb")]
    # ... and a parent whose own download failed is offered to nobody.
    b.send(
        download_peer_back_to_source_failed_request=scheduler_pb2.DownloadPeerBackToSourceFailedRequest(
            description="origin 500"
        )
    )
    wait_for(lambda: stat_peer(stub, ids("pb")).state == "failed", what="pb failed")
    newcomer = PeerStream(stub, ids("d"), task, ids("pd"))
    newcomer.register()
    assert [p.id for p in newcomer.parents()] == [ids("pa")]
    for s in (a, b, child, newcomer):
        s.close()


def test_candidate_parent_limit(tiny, ids):
    stub = tiny.stub
    task = ids("task")
    streams = []
    for i in range(4):
        announce_host(stub, ids(f"h{i}"), interval=10)
        streams.append(source_peer(stub, ids(f"h{i}"), task, ids(f"p{i}"), pieces=range(i + 1)))
    for i in range(4):
        wait_pieces(stub, ids(f"p{i}"), i + 1)
    announce_host(stub, ids("child-host"), interval=10)
    child = PeerStream(stub, ids("child-host"), task, ids("child"))
    child.register()
    assert [p.id for p in child.parents()] == [ids("p3"), ids("p2")]  # K = 2, most pieces first
    for s in (*streams, child):
        s.close()


def test_silent_host_is_dropped_with_its_peers(tiny, ids):
    stub = tiny.stub
    announce_host(stub, ids("silent"))  # no interval: host_ttl (0.5 s)
    peer = source_peer(stub, ids("silent"), ids("task"), ids("p1"))
    wait_pieces(stub, ids("p1"), 1)

    def gone():
        try:
            stat_peer(stub, ids("p1"))
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
        return False

    wait_for(gone, what="the silent host's peer to be dropped")
    tiny.wait_log(rf"event=gc hosts=[^ ]*{ids('silent')}")
    # Its stream now refers to a deleted peer.
    peer.piece_from_source(1)
    assert peer.error().code() == grpc.StatusCode.NOT_FOUND


# ---- bad input ---------------------------------------------------------------------


def test_bad_stream_input_gets_clean_statuses(sched, ids):
    stub = sched.stub
    announce_host(stub, ids("h1"))
    task = ids("task")

    s = PeerStream(stub, ids("h1"), task, ids("p0"))
    s.send(download_peer_started_request={})
    assert s.error().code() == grpc.StatusCode.FAILED_PRECONDITION

    s = PeerStream(stub, ids("nohost"), task, ids("p0"))
    s.register()
    assert s.error().code() == grpc.StatusCode.NOT_FOUND

    s = PeerStream(stub, ids("h1"), task, "")
    s.register()
    assert s.error().code() == grpc.StatusCode.INVALID_ARGUMENT

    s = PeerStream(stub, ids("h1"), task, ids("p1"))
    s.register()
    assert s.recv_kind()[0] == "need_back_to_source_response"
    s.send_raw(
        scheduler_pb2.AnnouncePeerRequest(
            host_id=ids("h1"), task_id=task, peer_id="someone-else", download_peer_started_request={}
        )
    )
    error = s.error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "differs" in error.details()

    alive = source_peer(stub, ids("h1"), task, ids("alive"))
    s = PeerStream(stub, ids("h1"), task, ids("alive"))  # the same peer id on a second stream
    s.register()
    assert s.error().code() == grpc.StatusCode.ALREADY_EXISTS
    alive.close()

    s = PeerStream(stub, ids("h1"), task, ids("p2"))
    s.register()
    s.recv()
    s.piece_from_source(1 << 30)
    error = s.error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "piece number" in error.details()

    s = PeerStream(stub, ids("h1"), task, ids("p3"))
    s.register(url="http://origin.example/" + "x" * (2 * MiB))
    assert s.error().code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    assert sched.alive()
    stat = stub.StatTask(scheduler_pb2.StatTaskRequest(task_id=task), timeout=STEP)
    assert stat.id == task


def test_bad_unary_input_gets_clean_statuses(sched, ids):
    stub = sched.stub
    assert code_of(stub.StatTask, scheduler_pb2.StatTaskRequest(task_id="no-such-task")) == grpc.StatusCode.NOT_FOUND
    assert code_of(stub.StatTask, scheduler_pb2.StatTaskRequest()) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(stub.StatPeer, scheduler_pb2.StatPeerRequest(peer_id="nope")) == grpc.StatusCode.NOT_FOUND
    assert code_of(stub.DeletePeer, scheduler_pb2.DeletePeerRequest(peer_id="nope")) == grpc.StatusCode.NOT_FOUND
    assert code_of(stub.DeleteHost, scheduler_pb2.DeleteHostRequest(host_id="nope")) == grpc.StatusCode.NOT_FOUND
    assert code_of(stub.DeleteTask, scheduler_pb2.DeleteTaskRequest(host_id="x", task_id="y")) == (
        grpc.StatusCode.NOT_FOUND
    )
    bad_host = scheduler_pb2.AnnounceHostRequest(host=common_pb2.Host(id=ids("h"), ip="nope", port=1, download_port=2))
    assert code_of(stub.AnnounceHost, bad_host) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(stub.AnnounceHost, scheduler_pb2.AnnounceHostRequest()) == grpc.StatusCode.INVALID_ARGUMENT
    # Bytes that are not a protobuf at all.
    raw = sched.channel.unary_unary("/dffs.scheduler.Scheduler/StatTask")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff\xff", timeout=STEP)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in info.value.details()
    raw_stream = sched.channel.stream_stream("/dffs.scheduler.Scheduler/AnnouncePeer")
    with pytest.raises(grpc.RpcError) as info:
        list(raw_stream(iter([b"\xff\xff\xff"]), timeout=STEP))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sched.alive()
    announce_host(stub, ids("h1"))
    source_peer(stub, ids("h1"), ids("task"), ids("p1")).close()
    assert stub.StatTask(scheduler_pb2.StatTaskRequest(task_id=ids("task")), timeout=STEP).id == ids("task")


def test_deletes(sched, ids):
    stub = sched.stub
    announce_host(stub, ids("h1"))
    announce_host(stub, ids("h2"))
    a = source_peer(stub, ids("h1"), ids("task"), ids("p1"))
    b = source_peer(stub, ids("h2"), ids("task"), ids("p2"))
    a.close()
    b.close()
    stub.DeleteTask(scheduler_pb2.DeleteTaskRequest(host_id=ids("h1"), task_id=ids("task")), timeout=STEP)
    assert code_of(stub.StatPeer, scheduler_pb2.StatPeerRequest(peer_id=ids("p1"))) == grpc.StatusCode.NOT_FOUND
    stub.DeletePeer(scheduler_pb2.DeletePeerRequest(peer_id=ids("p2")), timeout=STEP)
    assert stub.StatTask(scheduler_pb2.StatTaskRequest(task_id=ids("task")), timeout=STEP).peer_count == 0
    stub.DeleteHost(scheduler_pb2.DeleteHostRequest(host_id=ids("h1")), timeout=STEP)
    assert code_of(stub.DeleteHost, scheduler_pb2.DeleteHostRequest(host_id=ids("h1"))) == grpc.StatusCode.NOT_FOUND


# ---- process lifecycle -------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_with_open_streams(tmp_path, sig):
    s = SchedulerProcess(tmp_path)
    try:
        announce_host(s.stub, "h1")
        announce_host(s.stub, "h2")
        first = source_peer(s.stub, "h1", "t", "p1", pieces=())
        waiting = PeerStream(s.stub, "h2", "t", "p2")
        waiting.register()  # waits for rounds on the server
        wait_for(lambda: find_peer(s.stub, "p2"), what="p2 registered")
        s.proc.send_signal(sig)
        assert s.proc.wait(STEP) == 0
        assert "Traceback" not in s.log(), s.log()
        assert waiting.error().code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        del first
    finally:
        s.close()


def test_usage_and_bind_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-c", _CLI, "scheduler", *args], capture_output=True, text=True, timeout=STEP
        )

    result = run("--listen", "no-port")
    assert result.returncode == 2 and result.stderr.startswith("dffs: error: bad listen address")
    result = run("--config", str(write_toml(tmp_path / "bad.toml", {"candidate_parent_limit": 0})))
    assert result.returncode == 2 and "candidate_parent_limit" in result.stderr
    result = run("--config", str(write_toml(tmp_path / "typo.toml", {"peer_tll": 5})))
    assert result.returncode == 2 and "unknown config key 'peer_tll'" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run("--listen", f"127.0.0.1:{taken.getsockname()[1]}")
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "dffs: error: scheduler cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_flags_win_over_the_config_file(tmp_path):
    from dffs.cli.main import build_parser
    from dffs.cli.scheduler import scheduler_config

    cfg_file = write_toml(tmp_path / "s.toml", {"listen": "127.0.0.1:9", "candidate-parent-limit": 7, "peer_ttl": 60})
    args = build_parser().parse_args(["scheduler", "--config", str(cfg_file), "--listen", "127.0.0.1:0"])
    cfg = scheduler_config(args)
    assert (cfg.listen, cfg.candidate_parent_limit, cfg.peer_ttl) == ("127.0.0.1:0", 7, 60.0)
    args = build_parser().parse_args(["scheduler"])
    assert scheduler_config(args).listen == "0.0.0.0:8002"


# ---- the service in-process, with a fake seed trigger ------------------------------------------


class InProcessScheduler:
    """``server.serve`` on its own event loop thread, with a pluggable seed trigger."""

    def __init__(self, seed_trigger, **config):
        import asyncio

        from dffs.scheduler.config import SchedulerConfig
        from dffs.scheduler.server import serve
        from dffs.security.transport import insecure

        self._asyncio = asyncio
        self._ready = threading.Event()
        self._error: list[BaseException] = []
        cfg = SchedulerConfig(listen="127.0.0.1:0", **config)

        def ready(address, port):
            self.port = port
            self._ready.set()

        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            # In-process plumbing of the seed trigger: plain text (mutual TLS is tests/test_security_*).
            await serve(cfg, self._stop, transport=insecure(), seed_trigger=seed_trigger, ready=ready)

        def run():
            try:
                asyncio.run(main())
            except BaseException as exc:  # surfaced by close()
                self._error.append(exc)
                self._ready.set()

        self._thread = threading.Thread(target=run)
        self._thread.start()
        assert self._ready.wait(STEP) and not self._error, self._error
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")  # serve(transport=insecure())
        self.stub = scheduler_pb2_grpc.SchedulerStub(self.channel)

    def close(self):
        self.channel.close()
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STEP)
        assert not self._thread.is_alive()
        assert not self._error, self._error


def test_pluggable_seed_trigger_success_and_failure():
    calls = []
    fail = threading.Event()

    async def fake_trigger(request):
        calls.append(request)
        if fail.is_set():
            raise RuntimeError("seed said no")

    s = InProcessScheduler(fake_trigger, retry_interval=0.1)
    try:
        announce_host(s.stub, "seed", seed=True, ip="10.9.9.9", port=4100)
        announce_host(s.stub, "h1")
        first = PeerStream(s.stub, "h1", "t1", "p1")
        first.register(url="http://origin.example/one")
        (parent,) = first.parents()
        wait_for(lambda: calls, what="the trigger call")
        assert (calls[0].task_id, calls[0].ip, calls[0].port, calls[0].placeholder_id) == (
            "t1",
            "10.9.9.9",
            4100,
            parent.id,
        )
        assert calls[0].download.url == "http://origin.example/one"
        assert stat_peer(s.stub, parent.id).state == "triggered"

        fail.set()
        second = PeerStream(s.stub, "h1", "t2", "p2")
        second.register(url="http://origin.example/two")
        (parent2,) = second.parents()
        wait_for(lambda: stat_peer(s.stub, parent2.id).state == "failed", what="the placeholder to fail")
        second.send(reschedule_request=scheduler_pb2.RescheduleRequest())
        assert second.recv_kind()[0] == "need_back_to_source_response"
        assert len(calls) == 2
        first.close()
        second.close()
    finally:
        s.close()


# ---- metadata from the swarm -------------------------------------------------------


def test_stat_task_answers_the_validators_a_finished_origin_peer_reported(sched, ids):
    """StatTask and StatTasks (one call for many tasks) give size and the origin's validators as the
    peer that fetched from the origin reported them; a P2P child's word does not overwrite them."""
    stub = sched.stub
    host, child_host = ids("host"), ids("child")
    announce_host(stub, host)
    announce_host(stub, child_host)
    task, other, unknown = ids("task"), ids("other"), ids("unknown")
    stream = source_peer(stub, host, task, ids("peer"), pieces=(0,))
    stream.send(
        download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest(
            content_length=4 * MiB, piece_count=1, etag='"v1"', last_modified="Tue, 01 Dec 2026 10:00:00 GMT"
        )
    )
    stream.close()
    stat = stub.StatTask(scheduler_pb2.StatTaskRequest(host_id=host, task_id=task), timeout=STEP)
    assert (stat.content_length, stat.etag, stat.last_modified) == (4 * MiB, '"v1"', "Tue, 01 Dec 2026 10:00:00 GMT")
    assert stat.has_available_peer and not stat.HasField("content_type")

    # A child that took the piece from a peer and reports other validators fills no field it already has.
    child = PeerStream(stub, child_host, task, ids("child-peer"))
    child.register()
    child.parents()
    child.piece_from(ids("peer"), 0)
    child.send(
        download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest(
            content_length=4 * MiB, piece_count=1, etag='"forged"'
        )
    )
    child.close()
    assert stub.StatTask(scheduler_pb2.StatTaskRequest(host_id=host, task_id=task), timeout=STEP).etag == '"v1"'

    # Many at once: a task nobody finished has no size yet; an unknown one is left out.
    source_peer(stub, host, other, ids("other-peer"), pieces=(0,)).close()
    answer = stub.StatTasks(
        scheduler_pb2.StatTasksRequest(host_id=host, task_ids=[task, other, unknown, task]), timeout=STEP
    )
    by_id = {t.id: t for t in answer.tasks}
    assert set(by_id) == {task, other}
    assert by_id[task].etag == '"v1"' and by_id[task].content_length == 4 * MiB
    assert not by_id[other].HasField("content_length")

    # Bad input: too many ids, validators that are not one short line.
    too_many = scheduler_pb2.StatTasksRequest(host_id=host, task_ids=[f"t{i}" for i in range(10_001)])
    assert code_of(stub.StatTasks, too_many) == grpc.StatusCode.INVALID_ARGUMENT
    bad = source_peer(stub, host, ids("bad"), ids("bad-peer"), pieces=(0,))
    bad.send(
        download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest(
            content_length=4 * MiB, piece_count=1, etag='"a"\r\nX-Injected: 1'
        )
    )
    assert bad.error().code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sched.alive()


def finished_task(task_id, peer_id, parent_id, *, url="http://origin.example/small", length=100_000, **fields):
    """One entry of AnnounceFinishedTasks: a one-piece task taken from ``parent_id``."""
    piece = common_pb2.Piece(number=0, offset=0, length=length, parent_id=parent_id, digest=piece_digest(0))
    piece.cost.nanos = 3_000_000
    entry = dict(
        task_id=task_id,
        peer_id=peer_id,
        download=common_pb2.Download(url=url),
        content_length=length,
        piece_count=1,
        pieces=[piece],
    )
    entry.update(fields)
    return scheduler_pb2.FinishedTask(**entry)


def test_stat_tasks_names_the_holders_of_small_tasks_and_many_are_registered_in_one_call(sched, ids):
    """Issue 13 part 3: a directory's small files need no conversation each. StatTasks with
    holders_per_task names, per one-piece task, finished holders on other hosts with the piece's
    anchored digest; AnnounceFinishedTasks then registers many such tasks of the caller at once, each
    a finished peer others are offered, a bad entry refused alone."""
    stub = sched.stub
    origin_host, reader, third = ids("origin-host"), ids("reader"), ids("third")
    for host in (origin_host, reader, third):
        announce_host(stub, host)
    small = [ids(f"small{i}") for i in range(3)]
    sources = {}
    for task in small:
        sources[task] = ids(f"src-{task}")
        stream = source_peer(stub, origin_host, task, sources[task], pieces=(0,))
        stream.send(
            download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest(
                content_length=100_000, piece_count=1
            )
        )
        stream.close()
    big = ids("big")  # two pieces: no holders (its pieces go through a conversation)
    big_stream = source_peer(stub, origin_host, big, ids("big-src"), pieces=(0, 1))
    big_stream.send(
        download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest(
            content_length=8 * MiB, piece_count=2
        )
    )
    big_stream.close()

    answer = stub.StatTasks(
        scheduler_pb2.StatTasksRequest(host_id=reader, task_ids=[*small, big], holders_per_task=3), timeout=STEP
    )
    holders = {h.task_id: h for h in answer.holders}
    assert set(holders) == set(small)
    for task in small:
        (peer,) = holders[task].peers
        assert peer.id == sources[task] and peer.host.id == origin_host and peer.host.download_port == 4001
        assert holders[task].piece_digest == piece_digest(0)
    # Asked by the only holder's host: nobody else to fetch from. Without holders_per_task: none.
    assert not stub.StatTasks(
        scheduler_pb2.StatTasksRequest(host_id=origin_host, task_ids=small, holders_per_task=3), timeout=STEP
    ).holders
    assert not stub.StatTasks(scheduler_pb2.StatTasksRequest(host_id=reader, task_ids=small), timeout=STEP).holders

    # The reader fetched them from their holders: one call registers all three; a bad entry is refused alone.
    mine = {task: ids(f"mine-{task}") for task in small}
    bad = finished_task(ids("bad"), ids("bad-peer"), sources[small[0]], piece_count=2)  # 1 piece for 2
    result = stub.AnnounceFinishedTasks(
        scheduler_pb2.AnnounceFinishedTasksRequest(
            host_id=reader,
            tasks=[
                *(finished_task(t, mine[t], sources[t], etag='"child-said"') for t in small),
                bad,
            ],
        ),
        timeout=STEP,
    )
    assert set(result.refused) == {bad.task_id} and "pieces" in result.refused[bad.task_id]
    for task in small:
        peer = stat_peer(stub, mine[task])
        assert peer.state == "succeeded" and [p.number for p in peer.pieces] == [0]
    assert find_peer(stub, bad.peer_id) is None  # nothing half-registered
    # A child's word fills a blank validator only (the origin peer reported none here).
    assert stub.StatTask(scheduler_pb2.StatTaskRequest(host_id=reader, task_id=small[0]), timeout=STEP).etag == (
        '"child-said"'
    )
    # Now a third host is offered both holders; a new peer of the task gets the reader's as a parent too.
    both = stub.StatTasks(
        scheduler_pb2.StatTasksRequest(host_id=third, task_ids=[small[0]], holders_per_task=8), timeout=STEP
    )
    assert {p.id for p in both.holders[0].peers} == {sources[small[0]], mine[small[0]]}
    late = PeerStream(stub, third, small[1], ids("late"))
    late.register()
    assert {p.id for p in late.parents()} <= {sources[small[1]], mine[small[1]]}
    late.close()

    # Bad input: an unannounced host, a host the caller is not (insecure here: permitted), too many tasks,
    # an id registered twice.
    unknown = scheduler_pb2.AnnounceFinishedTasksRequest(
        host_id=ids("nobody"), tasks=[finished_task(ids("t"), ids("p"), sources[small[0]])]
    )
    assert code_of(stub.AnnounceFinishedTasks, unknown) == grpc.StatusCode.NOT_FOUND
    many = scheduler_pb2.AnnounceFinishedTasksRequest(
        host_id=reader, tasks=[finished_task(f"t{i}", f"p{i}", sources[small[0]]) for i in range(1001)]
    )
    assert code_of(stub.AnnounceFinishedTasks, many) == grpc.StatusCode.INVALID_ARGUMENT
    again = stub.AnnounceFinishedTasks(
        scheduler_pb2.AnnounceFinishedTasksRequest(
            host_id=reader, tasks=[finished_task(small[0], mine[small[0]], sources[small[0]])]
        ),
        timeout=STEP,
    )
    assert "already registered" in again.refused[small[0]]

    # A held task registered again after a scheduler forgot the host: its pieces as from the origin
    # (no parent_id) anchor their digests, as back-to-source reports on a stream would.
    held = ids("held")
    entry = finished_task(held, ids("held-peer"), "", etag='"held"')
    entry.pieces[0].ClearField("parent_id")
    assert not stub.AnnounceFinishedTasks(
        scheduler_pb2.AnnounceFinishedTasksRequest(host_id=reader, tasks=[entry]), timeout=STEP
    ).refused
    digests = stub.GetPieceDigests(scheduler_pb2.GetPieceDigestsRequest(host_id=third, task_id=held), timeout=STEP)
    assert dict(digests.digests) == {0: piece_digest(0)}
    assert stub.StatTask(scheduler_pb2.StatTaskRequest(host_id=third, task_id=held), timeout=STEP).etag == '"held"'
    assert sched.alive()


def test_a_daemon_takes_no_absurd_metadata_from_a_schedulers_stat_task():
    """The daemon's side (dffs.daemon.schedulers.swarm_stat, pure): a size past the limit or a validator
    that is not one short line is no answer, so the origin is asked instead; a sound one is the stat."""
    from dffs.daemon.schedulers import swarm_stat

    def task(**fields) -> common_pb2.Task:
        return common_pb2.Task(id="t", has_available_peer=True, **fields)

    url = "http://o/f"
    good = swarm_stat(url, task(content_length=5 * MiB, etag='"v1"'))
    assert good is not None and (good.content_length, good.etag, good.last_modified) == (5 * MiB, '"v1"', None)
    assert swarm_stat(url, task(content_length=2**63 - 1)) is None
    assert swarm_stat(url, task(content_length=1, etag='"a"\r\nX: 1')) is None
    assert swarm_stat(url, task(content_length=1, content_type="x" * 5000)) is None
    assert swarm_stat(url, common_pb2.Task(id="t", content_length=1)) is None  # nobody can serve it
