"""A real ``dffs manager`` process driven by real gRPC and HTTP clients, on
SQLite and PostgreSQL: membership with keepalive and TTL, ranking, cluster
config, jobs, restart, bad input, database down."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from members import api_token, member_channel
from pg import wait_for

from dffs.api import manager_pb2 as pb
from dffs.api import manager_pb2_grpc

TTL = 1.0
#: The HTTP API token each database's first manager printed (later starts print none).
_API_TOKENS: dict[str, str] = {}


class ManagerProcess:
    def __init__(self, db_url: str, workdir: Path, *, ttl: float = TTL) -> None:
        self.db_url = db_url
        self.workdir = workdir
        self.config = workdir / "manager.toml"
        self.config.write_text(f"keepalive_ttl = {ttl}\n")
        self.proc: subprocess.Popen | None = None
        self.channel: grpc.Channel | None = None

    def start(self) -> ManagerProcess:
        self.stderr = open(self.workdir / "manager.stderr", "ab")
        cmd = [sys.executable, "-m", "dffs", "manager", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
        cmd += ["--db", self.db_url, "--config", str(self.config)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in self.proc.stdout], daemon=True).start()  # noqa: E741
        ports = []
        deadline = time.monotonic() + 20
        while len(ports) < 2:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"manager did not start: {self.stderr_text()}") from None
            if (token := api_token(line)) is not None:
                _API_TOKENS[self.db_url] = token  # printed at a database's first start only
                continue
            ports.append(int(line.rsplit("(port ", 1)[1].rstrip(")\n")))
        self.grpc_port, self.http_port = ports
        self.channel = member_channel(f"127.0.0.1:{self.grpc_port}", role="client")
        self.stub = manager_pb2_grpc.ManagerStub(self.channel)
        return self

    def stderr_text(self) -> str:
        return (self.workdir / "manager.stderr").read_text(errors="replace")

    def http(self, method: str, path: str, body: bytes | dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if isinstance(body, dict | list) else body
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        if path.startswith("/api/") and self.db_url in _API_TOKENS:
            request.add_header("Authorization", f"Bearer {_API_TOKENS[self.db_url]}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self) -> int | None:
        """SIGTERM (the channel closes after, so open streams are cut by the
        manager's shutdown, not by their clients); kill if it lingers."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.proc.stdout.close()
        self.stderr.close()
        code, self.proc = self.proc.returncode, None
        return code


class KeepAlive:
    """A member's KeepAlive stream: a message every ``interval`` until paused
    (the stream stays open but silent) or closed (the stream ends)."""

    def __init__(self, stub, source_type, hostname: str, ip: str, interval: float = 0.1) -> None:
        self.request = pb.KeepAliveRequest(source_type=source_type, hostname=hostname, ip=ip)
        self.interval = interval
        self.paused = threading.Event()
        self.closed = threading.Event()
        self.sent = 0
        self.future = stub.KeepAlive.future(self._messages())

    def _messages(self):
        while not self.closed.is_set():
            if not self.paused.is_set():
                self.sent += 1
                yield self.request
            self.closed.wait(self.interval)

    def close(self) -> None:
        self.closed.set()
        try:
            self.future.result(timeout=5)
        except grpc.RpcError:
            pass


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/manager.db"
    return request.getfixturevalue("pg_cluster").new_database()


@pytest.fixture
def manager_factory(tmp_path):
    made: list[ManagerProcess] = []

    def factory(db_url: str, **kw) -> ManagerProcess:
        m = ManagerProcess(db_url, tmp_path, **kw)
        made.append(m)
        return m.start()

    yield factory
    for m in made:
        m.stop()


@pytest.fixture
def manager(manager_factory, db_url):
    return manager_factory(db_url)


def wait_for_job(manager: ManagerProcess, job_id: int, timeout: float = 20) -> dict:
    """The job once it has finished (succeeded or failed)."""
    finished: dict = {}

    def done() -> bool:
        status, job = manager.http("GET", f"/api/v1/jobs/{job_id}")
        finished.update(job)
        return status == 200 and job["state"] in ("succeeded", "failed")

    wait_for(done, timeout=timeout, message=f"job {job_id} to finish")
    return finished


def register_scheduler(stub, hostname, ip, **kw):
    return stub.UpdateScheduler(
        pb.UpdateSchedulerRequest(source_type=pb.SOURCE_TYPE_SCHEDULER, hostname=hostname, ip=ip, port=8002, **kw),
        timeout=5,
    )


def listed(stub, **kw) -> list[str]:
    return [s.hostname for s in stub.ListSchedulers(pb.ListSchedulersRequest(**kw), timeout=5).schedulers]


def test_keepalive_membership_and_ttl(manager):
    stub = manager.stub
    register_scheduler(stub, "s1", "127.0.0.11", idc="a")
    register_scheduler(stub, "s2", "127.0.0.12", idc="b")
    s1 = KeepAlive(stub, pb.SOURCE_TYPE_SCHEDULER, "s1", "127.0.0.11")
    s2 = KeepAlive(stub, pb.SOURCE_TYPE_SCHEDULER, "s2", "127.0.0.12")

    def rows():
        status, body = manager.http("GET", "/api/v1/schedulers?state=all")
        assert status == 200
        return {s["hostname"]: s for s in body["schedulers"]}

    def states():
        return {name: row["state"] for name, row in rows().items()}

    try:
        wait_for(lambda: s1.sent > 3 and s2.sent > 3, message="keepalives")
        # Still listed past the TTL, thanks to the keepalives. What shows the TTL has passed is a
        # condition, not a stopwatch: s0, registered after them and never keeping alive, is swept.
        register_scheduler(stub, "s0", "127.0.0.10", idc="c")
        wait_for(lambda: states().get("s0") == "inactive", timeout=10 * TTL, message="s0 swept after its TTL")
        assert sorted(listed(stub)) == ["s1", "s2"]
        # s1 falls silent with its stream open: gone after the TTL.
        s1.paused.set()
        wait_for(lambda: listed(stub) == ["s2"], timeout=10 * TTL, message="s1 expired")
        # The sweep (every TTL/3) records it as inactive.
        wait_for(
            lambda: states() == {"s0": "inactive", "s1": "inactive", "s2": "active"},
            timeout=10 * TTL,
            message="sweep",
        )
        # s2 ends its stream: inactive at once, no TTL wait needed. "At once" is read from the
        # manager's own record: marked inactive less than a TTL after its last keepalive, which
        # the sweep never does (it needs the TTL to have passed).
        s2.close()
        wait_for(lambda: listed(stub) == [], timeout=10 * TTL, message="s2 inactive after its stream ended")
        row = rows()["s2"]
        assert row["state"] == "inactive" and row["updated_at"] - row["last_keepalive"] < TTL, row
        # A keepalive for an unregistered member is refused.
        bad = KeepAlive(stub, pb.SOURCE_TYPE_SCHEDULER, "ghost", "127.0.0.99")
        with pytest.raises(grpc.RpcError) as err:
            bad.future.result(timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        bad.close()
    finally:
        s1.close()
        s2.close()


def test_ranking_and_seed_peers(manager):
    stub = manager.stub
    register_scheduler(stub, "far", "127.0.0.1", idc="x", location="us|ny")
    register_scheduler(stub, "near", "127.0.0.2", idc="y", location="cn|zj|hz")
    register_scheduler(stub, "same-idc", "127.0.0.3", idc="idc1")
    seed = stub.UpdateSeedPeer(
        pb.UpdateSeedPeerRequest(
            source_type=pb.SOURCE_TYPE_SEED_PEER, hostname="seed", ip="127.0.0.5", port=4000, download_port=4001, type=1
        ),
        timeout=5,
    )
    assert seed.state == "active" and seed.cluster_id == 1
    assert listed(stub, idc="idc1", location="cn|zj|hz") == ["same-idc", "near", "far"]
    assert listed(stub, location="cn|zj") == ["near", "far", "same-idc"]
    response = stub.ListSchedulers(pb.ListSchedulersRequest(), timeout=5)
    assert [p.hostname for p in response.schedulers[0].seed_peers] == ["seed"]
    peers = stub.ListSeedPeers(pb.ListSeedPeersRequest(), timeout=5).seed_peers
    assert [(p.hostname, p.download_port) for p in peers] == [("seed", 4001)]
    status, body = manager.http("GET", "/api/v1/seed-peers")
    assert status == 200 and [p["hostname"] for p in body["seed_peers"]] == ["seed"]
    with pytest.raises(grpc.RpcError) as err:
        register_scheduler(stub, "bad", "not-an-ip")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cluster_config_via_http_visible_in_grpc(manager):
    status, body = manager.http("GET", "/api/v1/clusters")
    assert status == 200 and [c["name"] for c in body["clusters"]] == ["default"]
    status, body = manager.http(
        "PUT", "/api/v1/clusters/1/config", {"candidate_parent_limit": 7, "upload_limit": 1 << 20, "idcs": ["a"]}
    )
    assert status == 200, body
    register_scheduler(manager.stub, "s1", "127.0.0.11")
    config = manager.stub.GetClusterConfig(
        pb.GetClusterConfigRequest(source_type=pb.SOURCE_TYPE_SCHEDULER, hostname="s1", ip="127.0.0.11"), timeout=5
    )
    assert config.cluster_id == 1 and list(config.idcs) == ["a"]
    assert json.loads(config.scheduler_config_json) == {"candidate_parent_limit": 7}
    assert json.loads(config.client_config_json) == {"upload_limit": 1 << 20}
    status, body = manager.http("PUT", "/api/v1/clusters/1/config", {"candidate_parent_limit": "many"})
    assert status == 400 and "candidate_parent_limit" in body["error"]
    status, body = manager.http("PUT", "/api/v1/clusters/1/config", b"{not json")
    assert status == 400 and "bad JSON" in body["error"]
    with pytest.raises(grpc.RpcError) as err:
        manager.stub.GetClusterConfig(pb.GetClusterConfigRequest(cluster_id=42), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_jobs_http_and_grpc(manager):
    status, job = manager.http(
        "POST",
        "/api/v1/jobs",
        {"type": "preheat", "urls": ["http://example.com/a", "oci://reg:5000/lib/bb:1"], "scope": "all"},
    )
    assert status == 201 and job["state"] == "pending" and job["scope"] == "all", job
    # The executor picks it up at once; the image's registry does not exist, so it fails, saying why.
    final = wait_for_job(manager, job["id"])
    assert final["state"] == "failed" and "cannot reach registry reg:5000" in final["description"], final
    status, body = manager.http("GET", "/api/v1/jobs")
    assert status == 200 and [(j["id"], j["state"]) for j in body["jobs"]] == [(job["id"], "failed")]
    via_grpc = manager.stub.GetJob(pb.GetJobRequest(id=job["id"]), timeout=5)
    assert via_grpc.state == pb.JOB_STATE_FAILED and via_grpc.scope == pb.JOB_SCOPE_ALL_PEERS
    assert list(via_grpc.preheat.urls) == job["args"]["urls"]
    created = manager.stub.CreateJob(
        pb.CreateJobRequest(
            type=pb.JOB_TYPE_PREHEAT,
            scope=pb.JOB_SCOPE_ALL_SEED_PEERS,
            preheat=pb.PreheatArgs(urls=["https://x.test/f"]),
        ),
        timeout=5,
    )
    assert [j.id for j in manager.stub.ListJobs(pb.ListJobsRequest(), timeout=5).jobs] == [created.id, job["id"]]
    no_seeds = wait_for_job(manager, created.id)
    assert no_seeds["state"] == "failed" and no_seeds["description"] == "no active seed peer in cluster any", no_seeds
    for bad, message in [
        (b"{nope", "bad JSON"),
        ({"type": "preheat", "urls": ["http://a/b"], "scope": "planet"}, "scope must be one of seed, all-seeds, all"),
        ({"type": "preheat", "urls": ["file:///etc/passwd"]}, "only http(s)"),
        ({"type": "preload", "urls": ["http://a/b"]}, "job type"),
    ]:
        status, body = manager.http("POST", "/api/v1/jobs", bad)
        assert status == 400 and message in body["error"], body
    assert manager.http("GET", "/api/v1/jobs/999999") == (404, {"error": "no job 999999"})
    assert manager.http("GET", "/api/v1/nothing")[0] == 404
    assert manager.http("DELETE", "/api/v1/jobs")[0] == 405
    with pytest.raises(grpc.RpcError) as err:
        manager.stub.GetJob(pb.GetJobRequest(id=999999), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        manager.stub.CreateJob(pb.CreateJobRequest(preheat=pb.PreheatArgs(urls=["gopher://x"])), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert manager.proc.poll() is None


def test_out_of_range_job_queries_are_invalid_arguments(manager):
    """Found by tests/test_fuzz.py: an unknown state (proto3 enums are open) was a KeyError in the
    servicer, an id past int64 an OverflowError from SQLite; both are INVALID_ARGUMENT now."""
    for call, request in (
        (manager.stub.ListJobs, pb.ListJobsRequest(state=-1)),
        (manager.stub.GetJob, pb.GetJobRequest(id=2**64 - 1)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert manager.stub.ListJobs(pb.ListJobsRequest(), timeout=5) is not None  # and it serves on


def test_restart_keeps_jobs_and_membership(manager_factory, db_url):
    first = manager_factory(db_url, ttl=30)
    register_scheduler(first.stub, "s1", "127.0.0.11", idc="a")
    keepalive = KeepAlive(first.stub, pb.SOURCE_TYPE_SCHEDULER, "s1", "127.0.0.11")
    wait_for(lambda: keepalive.sent >= 2, message="keepalives")
    status, job = first.http("POST", "/api/v1/jobs", {"type": "preheat", "urls": ["http://example.com/a"]})
    assert status == 201
    job = wait_for_job(first, job["id"])  # no seed peer: failed, with its reason
    first.http("PUT", "/api/v1/clusters/1/config", {"candidate_parent_limit": 9})
    assert first.stop() == 0
    keepalive.close()

    second = manager_factory(db_url, ttl=30)
    assert listed(second.stub) == ["s1"]
    assert second.http("GET", f"/api/v1/jobs/{job['id']}") == (200, job)
    config = second.stub.GetClusterConfig(pb.GetClusterConfigRequest(cluster_id=1), timeout=5)
    assert json.loads(config.scheduler_config_json) == {"candidate_parent_limit": 9}
    # The member's keepalive comes back to the new process.
    again = KeepAlive(second.stub, pb.SOURCE_TYPE_SCHEDULER, "s1", "127.0.0.11")
    wait_for(lambda: again.sent >= 2, message="keepalives to the new manager")
    assert listed(second.stub) == ["s1"]
    again.close()


def test_bad_db_url_is_a_usage_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dffs", "manager", "--db", "bogus://x"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "bogus" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_db_at_start_is_a_one_line_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["manager", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
    argv += ["--db", f"postgresql://postgres@127.0.0.1:{port}/dffs"]
    result = subprocess.run([sys.executable, "-m", "dffs", *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("dffs: error: database unavailable: "), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_database_down_gives_unavailable_and_process_stays_up(manager_factory, own_pg_cluster):
    manager = manager_factory(own_pg_cluster.new_database(), ttl=30)
    register_scheduler(manager.stub, "s1", "127.0.0.11")
    manager.http("POST", "/api/v1/jobs", {"type": "preheat", "urls": ["http://example.com/a"]})
    own_pg_cluster.stop()
    with pytest.raises(grpc.RpcError) as err:
        listed(manager.stub)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "database unavailable" in err.value.details()
    status, body = manager.http("GET", "/api/v1/jobs")
    assert status == 503 and "database unavailable" in body["error"]
    assert manager.proc.poll() is None
    own_pg_cluster.start()
    # Back without a manager restart.
    wait_for(lambda: manager.http("GET", "/api/v1/jobs")[0] == 200, message="manager reconnects")
    assert listed(manager.stub) == ["s1"]


def test_a_job_left_running_by_a_stopped_manager_runs_again(manager_factory, tmp_path):
    """A manager that died mid-job left it ``running``; the next one runs it to the end."""
    from dffs.manager import db as db_module
    from dffs.manager.jobs import JobStore

    url = f"sqlite:///{tmp_path / 'resume.db'}"
    engine = db_module.create_engine(url)
    db_module.migrate(engine)
    jobs = JobStore(engine)
    job = jobs.create({"type": "preheat", "urls": ["http://example.com/a"], "scope": "all-seeds"})
    assert jobs.claim(job["id"]) and not jobs.claim(job["id"])  # claimed once, by one executor
    assert jobs.get(job["id"])["state"] == "running"
    engine.dispose()

    manager = manager_factory(url)
    finished = wait_for_job(manager, job["id"])
    assert finished["state"] == "failed" and finished["description"] == "no active seed peer in cluster any"
