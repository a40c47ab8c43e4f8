#!/usr/bin/env python3
"""The scheduler in-process: decisions, piece reports and memory at cluster sizes, before and after.

Drives ``dffs.scheduler.core.SchedulerCore`` the way the gRPC servicer does
(AnnounceHost, AnnouncePeer register / piece reports / reschedule, one
``schedule`` call per answer), with no sockets, so what is timed is the
scheduler's own work on its one event loop. Scenarios:

  cluster-1k / cluster-10k   1,000 / 10,000 hosts x 100 tasks; each host downloads a few tasks
                             (finished and running peers, parents with upload-cost histories)
  hot-finished-1k / -5k      one task with 1,000 / 5,000 finished parents
  hot-graph-1k / -5k         one task with 1,000 / 5,000 running peers whose parents form a
                             random graph (the cycle check's worst case)
  flash-5k                   5,000 peers register on one new task at once; the real
                             SchedulerService (in-process, on a virtual clock) answers them
                             while they report pieces; scheduler CPU until the last answer
  load-500 / load-500-busy   a real `dffs scheduler` process and 500 simulated daemons (grpc.aio
                             clients in 4 processes): hosts announce, peers register, report a
                             piece every 0.25 s / 0.1 s, reschedule, finish; p50/p99 from a
                             register or reschedule to its answer, and the scheduler's CPU

In each scenario newcomers register and are scheduled, and running peers with
children reschedule; every ``schedule`` call is timed (p50 / p99 / max, and
decisions/s of scheduler time), and so is every pass of Python's cycle collector meanwhile
(the longest, and how many were full ones). Before the decisions the heap is settled as the
service's housekeeping pass leaves it (``dffs.scheduler.heap``), where the tree has that.
Build phases give host announces/s,
registrations/s and piece reports/s; RSS is the worker's after the scenario.

Every scenario runs in a fresh worker process per tree. ``--baseline TREE``
(a git worktree of main at the commit before a change) runs the same driver
against that tree's ``dffs`` in the same run, alternating, for before/after.
Prints medians with min-max over ``--runs`` and one JSON line. Usage:

  .venv/bin/python scripts/bench/scheduler.py [--runs 3] [--baseline ../wt-base] [--scenarios cluster-1k,...]
  .venv/bin/python scripts/bench/scheduler.py --smoke      (tiny sizes, for the test)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

MiB = 1 << 20

#: name -> parameters. ``decisions``: scheduling decisions measured after the build.
SCENARIOS: dict[str, dict] = {
    "cluster-1k": {"kind": "cluster", "hosts": 1000, "tasks": 100, "tasks_per_host": 4, "pieces": 16},
    "cluster-10k": {"kind": "cluster", "hosts": 10000, "tasks": 100, "tasks_per_host": 4, "pieces": 16},
    "hot-finished-1k": {"kind": "hot", "peers": 1000, "graph": False, "pieces": 64},
    "hot-finished-5k": {"kind": "hot", "peers": 5000, "graph": False, "pieces": 64},
    "hot-graph-1k": {"kind": "hot", "peers": 1000, "graph": True, "pieces": 64},
    "hot-graph-5k": {"kind": "hot", "peers": 5000, "graph": True, "pieces": 64},
    "flash-5k": {"kind": "flash", "peers": 5000, "pieces": 16},
    "load-500": {
        "kind": "load",
        "daemons": 500,
        "procs": 4,
        "seconds": 30,
        "tasks": 20,
        "pieces": 16,
        "piece_interval": 0.25,
    },
    "load-500-busy": {
        "kind": "load",
        "daemons": 500,
        "procs": 4,
        "seconds": 30,
        "tasks": 20,
        "pieces": 16,
        "piece_interval": 0.1,
    },
}
SMOKE: dict[str, dict] = {
    "cluster-smoke": {"kind": "cluster", "hosts": 60, "tasks": 5, "tasks_per_host": 2, "pieces": 8},
    "hot-finished-smoke": {"kind": "hot", "peers": 80, "graph": False, "pieces": 8},
    "hot-graph-smoke": {"kind": "hot", "peers": 80, "graph": True, "pieces": 8},
    "flash-smoke": {"kind": "flash", "peers": 120, "pieces": 4},
    "load-smoke": {"kind": "load", "daemons": 12, "procs": 2, "seconds": 3, "tasks": 3, "pieces": 4},
}


# ---------------------------------------------------------------- the worker
def use_tree(tree: str) -> None:
    """Import ``dffs`` from ``tree`` rather than the editable install of this checkout.

    The editable install's finder sits in ``sys.meta_path`` as a class: ``f.__module__``
    names its module for classes and instances alike (``type(f)`` of a class is ``type``,
    which let modules missing from an older tree, dffs.security, come from this checkout).
    """
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path.insert(0, tree)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Driver:
    """A SchedulerCore fed with proto messages, timing what the servicer would run."""

    def __init__(self, rng, *, pieces: int):
        from dffs.api import common_pb2, scheduler_pb2
        from dffs.scheduler.config import SchedulerConfig
        from dffs.scheduler.core import SchedulerCore

        self.pb, self.common = scheduler_pb2, common_pb2
        self.core = SchedulerCore(SchedulerConfig(listen="127.0.0.1:0"))
        self.rng = rng
        self.pieces = pieces
        self.piece_length = 4 * MiB
        self.sessions: dict[str, object] = {}
        self.decision_ns: list[int] = []
        self.kinds: dict[str, int] = {}
        self.times: dict[str, float] = {"announce": 0.0, "register": 0.0, "report": 0.0}
        self.counts: dict[str, int] = {"announce": 0, "register": 0, "report": 0}
        #: (generation, ms) of each collector pass while decisions were measured.
        self.collections: list[tuple[int, float]] = []
        self.heap_settled = False

    # -- messages
    def announce(self, host_id: str, n: int, *, seed: bool = False) -> None:
        c = self.common
        request = self.pb.AnnounceHostRequest(
            host=c.Host(
                id=host_id,
                type=c.HOST_TYPE_SEED if seed else c.HOST_TYPE_NORMAL,
                hostname=host_id,
                ip=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
                port=4000,
                download_port=4001,
                idc=f"idc{n % 4}",
                location=f"as|cn|p{n % 8}|c{n % 32}",
            )
        )
        request.interval.seconds = 30
        started = time.thread_time()
        self.core.announce_host(request)
        self.times["announce"] += time.thread_time() - started
        self.counts["announce"] += 1

    def _message(self, host_id: str, task_id: str, peer_id: str, **fields):
        return self.pb.AnnouncePeerRequest(host_id=host_id, task_id=task_id, peer_id=peer_id, **fields)

    def register(self, peer_id: str, host_id: str, task_id: str, *, back_to_source: bool = False):
        download = self.common.Download(
            url=f"http://origin.example/{task_id}", piece_length=self.piece_length, need_back_to_source=back_to_source
        )
        msg = self._message(
            host_id, task_id, peer_id, register_peer_request=self.pb.RegisterPeerRequest(download=download)
        )
        started = time.thread_time()
        session = self.core.register(msg)
        self.times["register"] += time.thread_time() - started
        self.counts["register"] += 1
        self.sessions[peer_id] = session
        return session

    def _handle(self, session, **fields) -> bool:
        msg = self._message(session.host_id, session.task_id, session.peer_id, **fields)
        started = time.thread_time()
        wants = self.core.handle(session, msg)
        self.times["report"] += time.thread_time() - started
        self.counts["report"] += 1
        return wants

    def piece(self, session, number: int, parent_id: str | None, cost: float) -> None:
        piece = self.common.Piece(number=number, offset=number * self.piece_length, length=self.piece_length)
        piece.cost.FromNanoseconds(int(cost * 1e9))
        if parent_id is None:
            self._handle(
                session,
                download_piece_back_to_source_finished_request=self.pb.DownloadPieceBackToSourceFinishedRequest(
                    piece=piece
                ),
            )
        else:
            piece.parent_id = parent_id
            self._handle(session, download_piece_finished_request=self.pb.DownloadPieceFinishedRequest(piece=piece))

    def finish(self, session) -> None:
        length = self.pieces * self.piece_length
        self._handle(
            session,
            download_peer_finished_request=self.pb.DownloadPeerFinishedRequest(
                content_length=length, piece_count=self.pieces
            ),
        )

    def started(self, session) -> None:
        self._handle(session, download_peer_started_request=self.pb.DownloadPeerStartedRequest())

    def reschedule(self, session) -> None:
        self._handle(session, reschedule_request=self.pb.RescheduleRequest())

    def schedule(self, session):
        started = time.thread_time_ns()
        answer = self.core.schedule(session, 0)
        self.decision_ns.append(time.thread_time_ns() - started)
        kind = answer.response.WhichOneof("response") if answer.response is not None else "retry"
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return answer

    def set_parents(self, session, parent_ids: list[str]) -> None:
        """Edges as a decision would leave them (the build phase skips the decisions themselves)."""
        graph = self.core.graph
        graph.set_parents(graph.peers[session.peer_id], [graph.peers[p] for p in parent_ids])

    def cost(self) -> float:
        """Seconds for one 4 MiB piece: ~20 ms, a long tail now and then."""
        return self.rng.lognormvariate(-3.9, 0.35)

    # -- results
    def result(self) -> dict:
        ns = sorted(self.decision_ns)
        out: dict = {"rss_mib": round(rss_mib(), 1), "decisions": len(ns), "answers": self.kinds}
        if self.collections:
            out["gc_max_ms"] = max(ms for _, ms in self.collections)
            out["gc_full_passes"] = sum(1 for generation, _ in self.collections if generation == 2)
            out["heap_settled"] = self.heap_settled
        if ns:
            out.update(
                p50_ms=ns[len(ns) // 2] / 1e6,
                p99_ms=ns[min(len(ns) - 1, int(len(ns) * 0.99))] / 1e6,
                max_ms=ns[-1] / 1e6,
                decisions_per_s=len(ns) / (sum(ns) / 1e9),
            )
        for what, key in (
            ("announce", "announces_per_s"),
            ("register", "registrations_per_s"),
            ("report", "reports_per_s"),
        ):
            if self.times[what] > 0:
                out[key] = self.counts[what] / self.times[what]
        out["peers"] = len(self.core.graph.peers)
        return out


#: Scheduler CPU seconds the measured decisions of one scenario may take (before the change,
#: one decision took up to seconds): the count measured is in the output.
DECISION_BUDGET = 30.0


def settle_heap() -> bool:
    """What the service's housekeeping pass does to the heap every ``gc_interval``, if this
    tree's scheduler does it (``dffs.scheduler.heap``; an older tree: nothing)."""
    try:
        from dffs.scheduler.heap import Heap
    except ImportError:
        return False
    Heap().settle()
    return True


def measure_decisions(driver: Driver, decisions: int, newcomer, rescheduled) -> None:
    """``decisions`` decisions: 80 % newcomers (``newcomer()`` -> session), 20 % reschedules of
    running peers that have children (``rescheduled()`` -> session or None); fewer (but at
    least 20) when they use up ``DECISION_BUDGET``. The collector's passes meanwhile, inside a
    decision or not, are timed into ``driver.collections`` (generation, ms)."""
    driver.heap_settled = settle_heap()
    started = [0.0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            driver.collections.append((info["generation"], (time.perf_counter() - started[0]) * 1e3))

    gc.callbacks.append(timed)
    try:
        for i in range(decisions):
            if i >= 20 and sum(driver.decision_ns) > DECISION_BUDGET * 1e9:
                break
            session = rescheduled() if i % 5 == 4 else None
            if session is not None:
                driver.reschedule(session)
            else:
                session = newcomer()
            driver.schedule(session)
    finally:
        gc.callbacks.remove(timed)


def run_cluster(p: dict, rng, decisions: int) -> dict:
    d = Driver(rng, pieces=p["pieces"])
    hosts = [f"host-{n}" for n in range(p["hosts"])]
    for n, h in enumerate(hosts):
        d.announce(h, n)
    tasks = [f"task-{t:03d}" for t in range(p["tasks"])]
    joined: dict[str, set[str]] = {t: set() for t in tasks}
    holders: dict[str, list[str]] = {t: [] for t in tasks}  # peers with pieces, per task
    running: list[str] = []
    arrivals = [(h, t) for h in hosts for t in rng.sample(tasks, p["tasks_per_host"])]
    rng.shuffle(arrivals)
    for i, (h, t) in enumerate(arrivals):
        peer_id = f"peer-{i}"
        joined[t].add(h)
        if not holders[t]:  # the task's first peer fetches from the origin
            s = d.register(peer_id, h, t, back_to_source=True)
            for n in range(d.pieces):
                d.piece(s, n, None, d.cost())
            d.finish(s)
            holders[t].append(peer_id)
            continue
        s = d.register(peer_id, h, t)
        parents = rng.sample(holders[t], min(4, len(holders[t])))
        d.set_parents(s, parents)
        d.started(s)
        finish = rng.random() < 0.7
        count = d.pieces if finish else rng.randrange(1, d.pieces)
        for n in rng.sample(range(d.pieces), count):
            d.piece(s, n, rng.choice(parents), d.cost())
        if finish:
            d.finish(s)
        else:
            running.append(peer_id)
        holders[t].append(peer_id)
    build = d.result()
    d.decision_ns.clear()
    graph = d.core.graph

    counter = iter(range(10**9))

    def newcomer():
        while True:
            h, t = rng.choice(hosts), rng.choice(tasks)
            if h not in joined[t]:
                joined[t].add(h)
                return d.register(f"new-{next(counter)}", h, t)

    def rescheduled():
        for _ in range(20):
            peer = graph.peers.get(rng.choice(running))
            if peer is not None and peer.children and peer.state.value == "running":
                return d.sessions[peer.id]
        return None

    measure_decisions(d, decisions, newcomer, rescheduled)
    out = d.result()
    out.update({k: build[k] for k in ("announces_per_s", "registrations_per_s", "reports_per_s")})
    out["build_rss_mib"] = build["rss_mib"]
    return out


def run_hot(p: dict, rng, decisions: int) -> dict:
    d = Driver(rng, pieces=p["pieces"])
    n_peers = p["peers"]
    extra = decisions + 10
    for n in range(n_peers + extra):
        d.announce(f"host-{n}", n)
    task = "task-hot"
    ids: list[str] = []
    running: list[str] = []
    s = d.register("peer-0", "host-0", task, back_to_source=True)
    for n in range(d.pieces):
        d.piece(s, n, None, d.cost())
    if not p["graph"]:
        d.finish(s)
    ids.append("peer-0")
    for i in range(1, n_peers):
        peer_id = f"peer-{i}"
        s = d.register(peer_id, f"host-{i}", task)
        if p["graph"]:
            # Running, with parents among earlier peers: a random DAG as deep as the arrivals.
            parents = rng.sample(ids, min(4, len(ids)))
            d.set_parents(s, parents)
            d.started(s)
            for n in rng.sample(range(d.pieces), rng.randrange(1, d.pieces)):
                d.piece(s, n, rng.choice(parents), d.cost())
            running.append(peer_id)
        else:
            parents = rng.sample(ids, min(4, len(ids)))
            d.started(s)
            for n in range(d.pieces):
                d.piece(s, n, rng.choice(parents), d.cost())
            d.finish(s)
        ids.append(peer_id)
    build = d.result()
    d.decision_ns.clear()
    graph = d.core.graph
    counter = iter(range(n_peers, n_peers + extra))

    def newcomer():
        n = next(counter)
        return d.register(f"new-{n}", f"host-{n}", task)

    def rescheduled():
        for _ in range(20):
            peer = graph.peers.get(rng.choice(running)) if running else None
            if peer is not None and peer.children:
                return d.sessions[peer.id]
        return None

    measure_decisions(d, decisions, newcomer, rescheduled)
    out = d.result()
    out.update({k: build[k] for k in ("announces_per_s", "registrations_per_s", "reports_per_s")})
    out["build_rss_mib"] = build["rss_mib"]
    return out


def worker(args) -> None:
    use_tree(args.tree)
    import random

    params = {**SCENARIOS, **SMOKE}[args.scenario]
    rng = random.Random(args.seed)
    if params["kind"] == "load":
        result = run_load(params, args.tree, args.seed)
        result["calibration_ms"] = calibrate()
        print(json.dumps(result), flush=True)
        return
    runner = {"cluster": run_cluster, "hot": run_hot, "flash": run_flash}[params["kind"]]
    calibration = calibrate()
    started = time.perf_counter()
    result = runner(params, rng, args.decisions)
    result["wall_s"] = time.perf_counter() - started
    result["calibration_ms"] = calibration
    print(json.dumps(result), flush=True)
    os._exit(0)  # the flash crowd leaves its service thread and streams behind: no teardown to wait for


def calibrate() -> float:
    """CPU ms of a fixed pure-Python loop: how fast this machine is right now (others share it)."""
    started = time.thread_time()
    total = 0
    for i in range(2_000_000):
        total += i & 7
    return round((time.thread_time() - started) * 1000, 1)


class _Aborted(Exception):
    pass


class _Capped(Exception):
    """The scheduler used its CPU allowance before every peer was answered."""


class _Context:
    """What the servicer uses of grpc.aio's ServicerContext: abort."""

    async def abort(self, code, details=""):
        raise _Aborted(f"{code}: {details}")


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when told: the service's rounds follow the
    simulated swarm, not how much CPU this shared machine happens to give the process."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def time(self) -> float:
        return self.now


async def settle(loop: asyncio.AbstractEventLoop, give_up) -> None:
    """Yield until nothing else on ``loop`` is runnable (every message handled, every due
    timer run); ``give_up()`` is polled and may raise."""
    while True:
        await asyncio.sleep(0)
        give_up()
        if not loop._ready:  # type: ignore[attr-defined]  # asyncio's run queue: empty = idle
            return


def run_flash(p: dict, rng, decisions: int) -> dict:
    """``peers`` register on one new task at once; the real SchedulerService answers.

    The service (each tree's own: its waking and round logic included) and
    the simulated daemons share one thread and one event loop with a virtual
    clock. Every tick the daemons (driver code, timed and subtracted) report
    one piece each -- one a parent holds, or the next from the origin -- and
    a peer with nothing to fetch for three ticks reschedules; the loop then
    runs until idle, the clock moves one ``piece_time`` (due scheduling rounds
    run) and the loop runs until idle again. Scheduler CPU = the thread's CPU
    minus the driver's. Ends when every peer has had its first answer, or at
    ``cpu_cap`` seconds of scheduler CPU.
    """
    from dffs.scheduler.service import SchedulerService

    piece_time, cpu_cap = p.get("piece_time", 0.2), p.get("cpu_cap", 60.0)
    d = Driver(rng, pieces=p["pieces"])
    core = d.core
    n_peers = p["peers"]
    for n in range(n_peers):
        d.announce(f"host-{n}", n)
    decision_ns: list[int] = []
    schedule = core.schedule

    def timed_schedule(session, rounds=0):
        started = time.thread_time_ns()
        try:
            return schedule(session, rounds)
        finally:
            decision_ns.append(time.thread_time_ns() - started)

    core.schedule = timed_schedule
    loop = VirtualClockLoop()
    asyncio.set_event_loop(loop)
    if "transport" in inspect.signature(SchedulerService).parameters:  # trees since the trust work
        from dffs.security.transport import insecure

        service = SchedulerService(core, insecure())
    else:
        service = SchedulerService(core)
    task_id = "task-flash"
    peer_ids = [f"peer-{i}" for i in range(n_peers)]
    index = {pid: i for i, pid in enumerate(peer_ids)}
    holdings: list[set[int]] = [set() for _ in range(n_peers)]
    parents: list[list[int] | None] = [None] * n_peers  # None: waiting; []: the origin
    stuck = [0] * n_peers
    finished = [False] * n_peers
    answered_at: list[float] = []
    errors: list[str] = []
    driver_cpu = [0.0]
    started_cpu = time.thread_time()
    started_at = loop.now

    def scheduler_cpu() -> float:
        return time.thread_time() - started_cpu - driver_cpu[0]

    def give_up() -> None:
        if scheduler_cpu() > cpu_cap:
            raise _Capped()

    def on_response(i: int, response) -> None:
        t0 = time.thread_time()
        if isinstance(response, Exception):
            errors.append(str(response))
        else:
            if parents[i] is None and not holdings[i] and not stuck[i]:
                answered_at.append(loop.now - started_at)
            if response.WhichOneof("response") == "normal_task_response":
                parents[i] = [index[c.id] for c in response.normal_task_response.candidate_parents if c.id in index]
            else:
                parents[i] = []
            stuck[i] = 0
        driver_cpu[0] += time.thread_time() - t0

    async def serve_stream(i: int, inbox: asyncio.Queue) -> None:
        async def requests():
            while (msg := await inbox.get()) is not None:
                yield msg

        try:
            async for response in service.AnnouncePeer(requests(), _Context()):
                on_response(i, response)
        except _Aborted as exc:
            on_response(i, exc)

    def message(i: int, **fields):
        return d._message(f"host-{i}", task_id, peer_ids[i], **fields)

    def tick_messages() -> list[tuple[int, object]]:
        batch = []
        all_pieces = set(range(d.pieces))
        for i in range(n_peers):
            mine, mine_parents = holdings[i], parents[i]
            if mine_parents is None or finished[i]:
                continue  # waiting for an answer, or done
            piece = d.common.Piece(length=d.piece_length)
            piece.cost.FromNanoseconds(int(piece_time * 1e9))
            if not mine_parents:  # the origin
                piece.number = min(all_pieces - mine)
                piece.offset = piece.number * d.piece_length
                report = d.pb.DownloadPieceBackToSourceFinishedRequest(piece=piece)
                batch.append((i, message(i, download_piece_back_to_source_finished_request=report)))
            else:
                offers = [(n, j) for j in mine_parents for n in holdings[j] if n not in mine]
                if not offers:
                    stuck[i] += 1
                    if stuck[i] >= 3:
                        parents[i] = None
                        batch.append((i, message(i, reschedule_request=d.pb.RescheduleRequest())))
                    continue
                stuck[i] = 0
                piece.number, j = rng.choice(offers)
                piece.parent_id = peer_ids[j]
                piece.offset = piece.number * d.piece_length
                report = d.pb.DownloadPieceFinishedRequest(piece=piece)
                batch.append((i, message(i, download_piece_finished_request=report)))
            mine.add(piece.number)
            if len(mine) == d.pieces:
                finished[i] = True
                done = d.pb.DownloadPeerFinishedRequest(content_length=d.pieces * d.piece_length, piece_count=d.pieces)
                batch.append((i, message(i, download_peer_finished_request=done)))
        return batch

    async def driver() -> dict:
        t0 = time.thread_time()
        inboxes: list[asyncio.Queue] = [asyncio.Queue() for _ in range(n_peers)]
        streams = [asyncio.create_task(serve_stream(i, inboxes[i])) for i in range(n_peers)]
        download = d.common.Download(url=f"http://origin.example/{task_id}", piece_length=d.piece_length)
        register = d.pb.RegisterPeerRequest(download=download)
        batch = [(i, message(i, register_peer_request=register)) for i in range(n_peers)]
        capped = False
        driver_cpu[0] += time.thread_time() - t0
        try:
            while len(answered_at) < n_peers:
                t0 = time.thread_time()
                for i, msg in batch:
                    inboxes[i].put_nowait(msg)
                driver_cpu[0] += time.thread_time() - t0
                await settle(loop, give_up)
                loop.now += piece_time  # due scheduling rounds run now
                await settle(loop, give_up)
                if errors:
                    raise SystemExit(f"flash crowd: {len(errors)} streams failed, first: {errors[0]}")
                t0 = time.thread_time()
                batch = tick_messages()
                driver_cpu[0] += time.thread_time() - t0
        except _Capped:
            capped = True
        cpu = scheduler_cpu()
        for s in streams:
            s.cancel()
        times = sorted(answered_at)
        out = {"cpu_s": cpu, "answered": len(times), "capped": capped, "driver_cpu_s": driver_cpu[0]}
        for q in (0.5, 0.9, 1.0):
            if len(times) >= q * n_peers:
                out[f"answered_{int(q * 100)}pct_sim_s"] = times[max(0, int(q * n_peers) - 1)]
        return out

    result = loop.run_until_complete(driver())
    ns = sorted(decision_ns)
    result.update(decisions=len(ns), decision_cpu_s=sum(ns) / 1e9, rss_mib=round(rss_mib(), 1))
    if ns:
        result.update(
            p50_ms=ns[len(ns) // 2] / 1e6,
            p99_ms=ns[min(len(ns) - 1, int(len(ns) * 0.99))] / 1e6,
            max_ms=ns[-1] / 1e6,
            decisions_per_s=len(ns) / (sum(ns) / 1e9),
        )
    return result


# ---------------------------------------------------------------- a real process under load
def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run_load(p: dict, tree: str, seed: int) -> dict:
    """``dffs scheduler`` (``tree``'s) in its own process, and ``procs`` generator processes
    simulating ``daemons`` daemons between them for ``seconds``."""
    import re
    import tempfile

    log = tempfile.TemporaryFile()
    # Members authenticate as in production: the scheduler and the generators share a fresh
    # cluster key (trees from before the trust work ignore it and talk plaintext).
    keydir = tempfile.mkdtemp(prefix="dffs-bench-key-")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DFFS_CLUSTER_KEY": os.path.join(keydir, "cluster.key")}
    subprocess.run([sys.executable, __file__, "--make-key", "--tree", tree], env=env, check=True)
    scheduler = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--tree", tree],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    generators: list[subprocess.Popen] = []
    try:
        line = scheduler.stdout.readline()
        match = re.search(r"listening on \S+:(\d+)", line)
        if not match:
            log.seek(0)
            raise SystemExit(f"scheduler did not start: {line!r} {log.read()[-2000:]!r}")
        target = f"127.0.0.1:{match.group(1)}"
        per = -(-p["daemons"] // p["procs"])
        cpu_before = proc_cpu_seconds(scheduler.pid)
        for k in range(p["procs"]):
            argv = [sys.executable, __file__, "--generate", "--tree", tree, "--target", target]
            argv += ["--scenario-json", json.dumps(p)]
            argv += ["--first", str(k * per), "--count", str(min(per, p["daemons"] - k * per)), "--seed", str(seed)]
            generators.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env))
        parts = []
        for g in generators:
            out, _ = g.communicate(timeout=p["seconds"] + 120)
            if g.returncode != 0:
                raise SystemExit(f"load generator failed ({g.returncode})")
            parts.append(json.loads(out.strip().splitlines()[-1]))
        cpu = proc_cpu_seconds(scheduler.pid) - cpu_before
        rss = 0.0
        with open(f"/proc/{scheduler.pid}/status") as f:
            for row in f:
                if row.startswith("VmRSS:"):
                    rss = int(row.split()[1]) / 1024
    finally:
        for g in generators:
            if g.poll() is None:
                g.kill()
                g.wait()
        scheduler.terminate()
        try:
            scheduler.wait(10)
        except subprocess.TimeoutExpired:
            scheduler.kill()
            scheduler.wait()
        log.close()
        shutil.rmtree(keydir, ignore_errors=True)
    latencies = sorted(x for part in parts for x in part["latencies_ms"])
    kinds: dict[str, int] = {}
    for part in parts:
        for k, v in part["kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    messages = sum(part["messages"] for part in parts)
    wall = max(part["seconds"] for part in parts)
    out = {"answers": kinds, "messages_per_s": messages / wall, "cpu_s": cpu, "cpu_pct": 100 * cpu / wall}
    out["rss_mib"] = round(rss, 1)
    out["answered"] = len(latencies)
    if latencies:
        out.update(
            answer_p50_ms=latencies[len(latencies) // 2],
            answer_p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            answer_max_ms=latencies[-1],
        )
    return out


def serve(args) -> None:
    """``dffs scheduler`` from ``args.tree``, on a free loopback port (its log on stderr)."""
    use_tree(args.tree)
    from dffs.cli.main import main as dffs_main

    dffs_main(["scheduler", "--listen", "127.0.0.1:0"])


def make_key(args) -> None:
    """Create $DFFS_CLUSTER_KEY for ``args.tree`` if that tree knows cluster keys."""
    use_tree(args.tree)
    try:
        from dffs.security.ca import create_cluster_key
    except ImportError:
        return
    create_cluster_key(Path(os.environ["DFFS_CLUSTER_KEY"]))


def load_channel(target: str, name: str):
    """A grpc.aio channel to the load scheduler: mutual TLS as a client member when the tree
    has dffs.security (a client may speak for any host, as 500 simulated daemons must)."""
    import grpc

    try:
        from dffs.security.ca import Identity, load_cluster_key
        from dffs.security.transport import secure
    except ImportError:
        return grpc.aio.insecure_channel(target)
    key = load_cluster_key(Path(os.environ["DFFS_CLUSTER_KEY"]))
    return secure(key, Identity("client", name)).aio_channel(target)


def generate(args) -> None:
    """Simulated daemons against ``args.target``: announce, then download tasks one after another.

    Each download: register and time the answer; report a piece every
    ``piece_interval`` (from a parent it was given, or from the origin); in one
    download of ten, reschedule halfway and time that answer too; finish.
    Each host downloads a task at most once (hosts keep what they fetched).
    """
    import random

    import grpc

    use_tree(args.tree)
    from dffs.api import common_pb2, scheduler_pb2, scheduler_pb2_grpc

    p = json.loads(args.scenario_json)
    seconds, pieces, interval = p["seconds"], p["pieces"], p.get("piece_interval", 0.1)
    warmup = min(3.0, seconds / 4)
    rng = random.Random(args.seed * 1000 + args.first)
    tasks = [f"load-task-{t:02d}" for t in range(p["tasks"])]
    latencies: list[float] = []
    kinds: dict[str, int] = {}
    sent = [0]
    piece_length = 4 * MiB

    async def main() -> dict:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + seconds
        async with load_channel(args.target, f"load-{args.first}") as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)

            async def download(host_id: str, task_id: str, peer_id: str) -> None:
                queue: asyncio.Queue = asyncio.Queue()

                async def requests():
                    while (msg := await queue.get()) is not None:
                        yield msg

                def send(**fields) -> None:
                    sent[0] += 1
                    queue.put_nowait(
                        scheduler_pb2.AnnouncePeerRequest(host_id=host_id, task_id=task_id, peer_id=peer_id, **fields)
                    )

                async def answer(asked: float):
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        raise RuntimeError("stream ended without an answer")
                    if asked >= started + warmup:
                        latencies.append((loop.time() - asked) * 1000)
                        kind = response.WhichOneof("response")
                        kinds[kind] = kinds.get(kind, 0) + 1
                    return response

                call = stub.AnnouncePeer(requests())
                download = common_pb2.Download(url=f"http://origin.example/{task_id}", piece_length=piece_length)
                asked = loop.time()
                send(register_peer_request=scheduler_pb2.RegisterPeerRequest(download=download))
                response = await answer(asked)
                reschedule_at = pieces // 2 if rng.random() < 0.1 else -1
                for n in range(pieces):
                    await asyncio.sleep(interval * rng.uniform(0.5, 1.5))
                    piece = common_pb2.Piece(number=n, offset=n * piece_length, length=piece_length)
                    piece.cost.FromNanoseconds(int(interval * 1e9))
                    if response.WhichOneof("response") == "normal_task_response":
                        parents = response.normal_task_response.candidate_parents
                        piece.parent_id = rng.choice(parents).id
                        send(download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(piece=piece))
                    else:
                        report = scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(piece=piece)
                        send(download_piece_back_to_source_finished_request=report)
                    if n == reschedule_at and response.WhichOneof("response") == "normal_task_response":
                        asked = loop.time()
                        send(reschedule_request=scheduler_pb2.RescheduleRequest())
                        response = await answer(asked)
                done = scheduler_pb2.DownloadPeerFinishedRequest(
                    content_length=pieces * piece_length, piece_count=pieces
                )
                send(download_peer_finished_request=done)
                queue.put_nowait(None)
                while await call.read() is not grpc.aio.EOF:
                    pass

            async def daemon(n: int) -> None:
                host_id = f"load-host-{n}"
                request = scheduler_pb2.AnnounceHostRequest(
                    host=common_pb2.Host(
                        id=host_id,
                        hostname=host_id,
                        ip=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
                        port=4000,
                        download_port=4001,
                    )
                )
                request.interval.seconds = 30
                await stub.AnnounceHost(request, timeout=30)
                await asyncio.sleep(rng.uniform(0, warmup))  # not all at once
                for k, task_id in enumerate(rng.sample(tasks, len(tasks))):
                    if loop.time() >= deadline:
                        return
                    await download(host_id, task_id, f"{host_id}-{k}")

            await asyncio.gather(*(daemon(n) for n in range(args.first, args.first + args.count)))
        return {"seconds": loop.time() - started - warmup}

    result = asyncio.run(main())
    result.update(latencies_ms=latencies, kinds=kinds, messages=sent[0])
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run (what the test runs)")
    parser.add_argument("--scenarios", help="comma-separated names (default: all)")
    parser.add_argument("--decisions", type=int, default=2000, help="decisions measured per scenario")
    parser.add_argument("--baseline", help="a tree (git worktree) whose dffs runs the same driver, alternating")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", default=str(REPO), help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--make-key", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--scenario-json", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.make_key:
        make_key(args)
        return
    if args.serve:
        serve(args)
        return
    if args.generate:
        generate(args)
        return
    table = SMOKE if args.smoke else SCENARIOS
    names = args.scenarios.split(",") if args.scenarios else list(table)
    runs = 1 if args.smoke else args.runs
    decisions = min(args.decisions, 50) if args.smoke else args.decisions
    trees = {"after": str(REPO)}
    if args.baseline:
        trees = {"before": str(Path(args.baseline).resolve()), **trees}
    results: dict[str, dict[str, list[dict]]] = {n: {t: [] for t in trees} for n in names}
    failures: list[str] = []
    for run in range(runs):
        for name in names:
            order = list(trees) if run % 2 == 0 else list(reversed(trees))
            for label in order:
                argv = [sys.executable, __file__, "--worker", "--tree", trees[label], "--scenario", name]
                argv += ["--seed", str(run + 1), "--decisions", str(decisions)]
                proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
                if proc.returncode != 0:  # said now, the other scenarios still measured
                    failures.append(f"run {run + 1} {name} ({label})")
                    print(f"# run {run + 1} {name} {label} FAILED:\n{proc.stderr[-3000:]}", file=sys.stderr)
                    continue
                results[name][label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"# run {run + 1} {name} {label}: {proc.stdout.strip().splitlines()[-1]}", file=sys.stderr)
    report(results, runs)
    if failures:
        raise SystemExit(f"failed: {', '.join(failures)}")


FIELDS = [
    ("decisions_per_s", "decisions/s", "{:,.0f}"),
    ("p50_ms", "p50 ms", "{:.3f}"),
    ("p99_ms", "p99 ms", "{:.3f}"),
    ("max_ms", "max ms", "{:.2f}"),
    ("reports_per_s", "reports/s", "{:,.0f}"),
    ("rss_mib", "RSS MiB", "{:.0f}"),
    ("gc_max_ms", "longest gc ms", "{:.1f}"),
    ("gc_full_passes", "full gc passes", "{:.0f}"),
    ("cpu_s", "sched CPU s", "{:.2f}"),
    ("answered", "answered", "{:.0f}"),
    ("answer_p50_ms", "answer p50 ms", "{:.1f}"),
    ("answer_p99_ms", "answer p99 ms", "{:.1f}"),
    ("messages_per_s", "msgs/s", "{:,.0f}"),
    ("cpu_pct", "sched CPU %", "{:.0f}"),
    ("calibration_ms", "calib ms", "{:.0f}"),
]


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def report(results: dict, runs: int) -> None:
    out: dict = {}
    for name, by_tree in results.items():
        out[name] = {}
        print(f"\n{name}")
        for label, rows in by_tree.items():
            cells = []
            out[name][label] = {}
            for key, title, fmt in FIELDS:
                values = [r[key] for r in rows if key in r]
                if not values:
                    continue
                s = summary(values)
                out[name][label][key] = {k: round(v, 4) for k, v in s.items()}
                cell = fmt.format(s["median"])
                if runs > 1:
                    cell += f" ({fmt.format(s['min'])}-{fmt.format(s['max'])})"
                cells.append(f"{title} {cell}")
            print(f"  {label:6s} " + "  ".join(cells))
    print(json.dumps({"bench": "scheduler", "runs": runs, "results": out, "machine": machine()}))


if __name__ == "__main__":
    main()
