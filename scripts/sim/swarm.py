#!/usr/bin/env python3
"""A swarm simulated past this machine: the real scheduler core and the daemons' piece choice, on a fluid network.

Discrete events on a virtual clock. What is real, imported:

* the scheduler: ``dffs.scheduler.core.SchedulerCore``, driven the way the
  gRPC servicer drives it (AnnounceHost, AnnouncePeer register / piece
  reports / reschedule / finished as proto messages; a decision per answer;
  a peer without an answer waits in the core's waiting room until a change
  wakes it or the round the policy named comes);
* the daemons' choices: ``dffs.daemon.piece_choice.pick_parent`` (which
  parent serves a piece) and ``choose_piece`` (which piece a worker fetches
  next, rarest first), on ``Parent`` objects fed the way SyncPieces feeds them.

What is modelled (after ``dffs/daemon/p2p.py`` and ``dffs/peertask/task.py``):
each daemon runs ``concurrency`` workers over the missing pieces (the next
piece chosen among the first ``window`` missing ones); a piece comes from the
least-loaded parent that has it, a request beyond the parent's
``upload_slots`` is refused (503) and counts as a failure against that
parent; with no parent for a piece the worker waits for a change, and after
``parent_rounds`` quiet waits of ``parent_wait`` the daemon goes to the
origin; every quiet wait before that asks the scheduler to reschedule.  A
seed host is triggered by the scheduler and fetches from the origin in
order.  Links: every host has an upload and a download link, the origin an
upload link; pieces share them as fluid flows (:mod:`network`).  Not
modelled: CPU, disks, processes starting, losses, control-plane latency
(``--rpc-latency`` adds a fixed delay to each piece request).

Prints time to the last host, origin egress, per-host upload balance, the
scheduler's CPU and the physical bound (size / link speed plus a pipeline of
log2(N) piece times), and one JSON line. Scenarios:

  p2p-5        5 hosts and a seed, 256 MiB, origin 800 Mbit (the shape of scripts/bench/p2p.py)
  dragonfly    1,000 hosts, one 10 GB file, 10 Gbit links (Dragonfly's users: 990 nodes in 6 min 28 s)
  flash-5k     a flash crowd of 5,000 hosts on one 256 MiB task, 10 Gbit links

  .venv/bin/python scripts/sim/swarm.py --scenario dragonfly [--window 512] [--seed 1]
  .venv/bin/python scripts/sim/swarm.py --smoke
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network import FluidNetwork  # noqa: E402

from dffs.api import common_pb2, scheduler_pb2  # noqa: E402
from dffs.daemon.piece_choice import MAX_PARENT_FAILURES, Parent, choose_piece, pick_parent  # noqa: E402
from dffs.idgen.pieces import piece_length_for  # noqa: E402
from dffs.scheduler.config import SchedulerConfig  # noqa: E402
from dffs.scheduler.core import SchedulerCore, Session  # noqa: E402

MiB = 1 << 20
GBIT = 1e9 / 8  # bytes/s

SCENARIOS: dict[str, dict] = {
    # Start-up as the real benchmark's scheduler log shows it: hosts register 0.95-1.36 s after
    # launch (process start, the daemon's socket, its HEAD to the origin), a seed 27 ms after its trigger.
    "p2p-5": {
        "hosts": 5,
        "size": 256 * MiB,
        "host_rate": 8 * GBIT,
        "origin_rate": 0.8 * GBIT,
        "seed": True,
        "start_delay": 0.95,
        "arrival": 0.41,
        "trigger_latency": 0.027,
    },
    "dragonfly": {"hosts": 1000, "size": 10 * 10**9, "host_rate": 10 * GBIT, "origin_rate": 10 * GBIT, "seed": True},
    "flash-5k": {"hosts": 5000, "size": 256 * MiB, "host_rate": 10 * GBIT, "origin_rate": 10 * GBIT, "seed": True},
    "smoke": {"hosts": 12, "size": 64 * MiB, "host_rate": 10 * GBIT, "origin_rate": 1 * GBIT, "seed": True},
}


class Clock:
    """Virtual seconds; what the scheduler core reads as its monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Sim:
    """Timers on the virtual clock plus the fluid network, advanced together."""

    def __init__(self, network: FluidNetwork, clock: Clock):
        self.network = network
        self.clock = clock
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    @property
    def now(self) -> float:
        return self.clock.now

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (max(when, self.clock.now), next(self._seq), fn))

    def soon(self, fn: Callable[[], None]) -> None:
        self.at(self.clock.now, fn)

    def run(self, until: Callable[[], bool], limit: float) -> None:
        network, timers = self.network, self._timers
        while not until():
            flow_due = network.next_completion()
            timer_due = timers[0][0] - self.clock.now if timers else math.inf
            if flow_due == math.inf and timer_due == math.inf:
                raise RuntimeError("the swarm is stuck: no flow and no timer left")
            step = min(flow_due, timer_due)
            if self.clock.now + step > limit:
                raise RuntimeError(f"not done after {limit} simulated seconds")
            done = network.advance(step)
            self.clock.now += step
            for callback in done:
                callback()
            while timers and timers[0][0] <= self.clock.now:
                heapq.heappop(timers)[2]()


class Scheduler:
    """The real SchedulerCore, driven as ``dffs.scheduler.service`` drives it."""

    def __init__(self, sim: Sim, config: SchedulerConfig):
        self.sim = sim
        self.core = SchedulerCore(config, clock=sim.clock, wall_clock=lambda: 1.7e9 + sim.clock.now)
        self.config = config
        self.cpu = 0.0
        self.decisions = 0
        self.answers: dict[str, int] = {}

    def call(self, fn: Callable, *args):
        started = time.thread_time()
        try:
            return fn(*args)
        finally:
            self.cpu += time.thread_time() - started

    def announce(self, host_id: str, n: int, *, seed: bool) -> None:
        host = common_pb2.Host(
            id=host_id,
            type=common_pb2.HOST_TYPE_SEED if seed else common_pb2.HOST_TYPE_NORMAL,
            hostname=host_id,
            ip=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
            port=4000,
            download_port=4001,
        )
        self.call(self.core.announce_host, scheduler_pb2.AnnounceHostRequest(host=host))

    def register(self, daemon: Daemon) -> None:
        download = common_pb2.Download(
            url="http://origin.example/object", piece_length=daemon.swarm.piece_length, need_back_to_source=daemon.seed
        )
        reg = scheduler_pb2.RegisterPeerRequest(download=download)
        daemon.session = self.call(self.core.register, daemon.message(register_peer_request=reg))
        daemon.awaiting = True
        self._answer(daemon)

    def send(self, daemon: Daemon, message: scheduler_pb2.AnnouncePeerRequest) -> None:
        """The stream's next message. Like the servicer, a stream waiting for an answer
        handles nothing else until the answer is out: later messages queue behind it."""
        if daemon.awaiting:
            daemon.outbox.append(message)
            return
        if self.call(self.core.handle, daemon.session, message):
            daemon.awaiting = True
            self._answer(daemon)

    def _answered(self, daemon: Daemon) -> None:
        daemon.awaiting = False
        while daemon.outbox and not daemon.awaiting:
            self.send(daemon, daemon.outbox.pop(0))

    def _answer(self, daemon: Daemon) -> None:
        """Scheduling rounds until the policy answers (SchedulerService._answer on the virtual clock)."""
        started = self.sim.now
        state = {"version": 0}

        def decide() -> None:
            state["version"] += 1
            session = daemon.session
            rounds = math.floor((self.sim.now - started) / self.config.retry_interval + 1e-9)
            self.call(self.core.unwait, session)
            answer = self.call(self.core.schedule, session, rounds)
            self.decisions += 1
            if answer.trigger is not None:
                self.sim.soon(lambda t=answer.trigger: daemon.swarm.trigger_seed(t))
            if answer.response is not None:
                kind = answer.response.WhichOneof("response")
                self.answers[kind] = self.answers.get(kind, 0) + 1
                self._answered(daemon)
                daemon.on_answer(answer.response)
                return
            version = state["version"]
            next_round = getattr(answer.decision, "next_round", None) or rounds + 1

            def wake(v: int = version) -> None:
                if state["version"] == v:
                    self.sim.soon(lambda: state["version"] == v and decide())

            self.call(self.core.wait, session, wake)
            self.sim.at(
                started + max(next_round, rounds + 1) * self.config.retry_interval,
                lambda v=version: state["version"] == v and decide(),
            )

        decide()


class Daemon:
    """One host's download of the task: the P2P fetcher and the peer task's workers."""

    def __init__(self, swarm: Swarm, n: int, *, seed: bool = False):
        self.swarm = swarm
        self.n = n
        self.seed = seed
        self.host_id = f"{'seed' if seed else 'host'}-{n}"
        self.peer_id = f"peer-{self.host_id}"
        self.session: Session | None = None
        #: The stream waits for an answer; messages sent meanwhile, in order.
        self.awaiting = False
        self.outbox: list[scheduler_pb2.AnnouncePeerRequest] = []
        net = swarm.network
        self.up = net.add_link(swarm.host_rate)
        self.down = net.add_link(swarm.host_rate)
        self.rng = random.Random(swarm.rng.random())
        self.parents: dict[str, Parent] = {}
        #: Other daemons' Parent objects for this daemon (what SyncPieces would feed).
        self.watchers: list[tuple[Daemon, Parent]] = []
        self.back_to_source = False
        self.missing = list(range(swarm.pieces))
        self.have: set[int] = set()
        self.inflight: dict[int, list[Callable[[], None]]] = {}
        self.uploads = 0
        self.started_at: float | None = None
        self.finished_at: float | None = None
        #: Workers waiting for a parent to have a piece: piece -> how each goes on.
        self._waiting: dict[int, list[Callable[[], None]]] = {}
        self.last_change = 0.0
        self._workers_started = False

    def message(self, **fields) -> scheduler_pb2.AnnouncePeerRequest:
        return scheduler_pb2.AnnouncePeerRequest(
            host_id=self.host_id, task_id=self.swarm.task_id, peer_id=self.peer_id, **fields
        )

    # ---- the conversation ------------------------------------------------------

    def start(self) -> None:
        self.started_at = self.swarm.sim.now
        self.swarm.scheduler.register(self)

    def on_answer(self, response: scheduler_pb2.AnnouncePeerResponse) -> None:
        kind = response.WhichOneof("response")
        if kind == "normal_task_response":
            for peer in response.normal_task_response.candidate_parents:
                if peer.id in self.parents:
                    continue
                parent = Parent(peer.id, peer.host.ip, peer.host.port, peer.host.download_port)
                self.parents[peer.id] = parent
                self.swarm.watch(self, parent)
        else:
            self.back_to_source = True
        self.notify()
        if not self._workers_started:
            self._workers_started = True
            for _ in range(self.swarm.concurrency):
                self.next_piece()

    def notify(self, piece: int | None = None) -> None:
        """Something changed: a parent has a new ``piece``, or (None) new parents or a decision.

        The daemon wakes every waiting worker, which asks ``pick_parent`` again
        and, if still nothing, waits ``parent_wait`` afresh with its quiet
        rounds reset.  Here only the workers the change can unblock ask again
        (a worker waiting for another piece would get None again); the others'
        quiet timers restart from ``last_change``.  Same decisions, less work.
        """
        self.last_change = self.swarm.sim.now
        if piece is None:
            waiting, self._waiting = self._waiting, {}
            for retries in waiting.values():
                for retry in retries:
                    retry()
        else:
            for retry in self._waiting.pop(piece, ()):
                retry()

    # ---- the workers -----------------------------------------------------------

    def next_piece(self) -> None:
        """A worker takes the next piece (PeerTask._fetch_ranged's next_piece, with the fetcher's choice)."""
        if not self.missing:
            return
        upcoming = self.missing[: self.swarm.window]
        candidates = [n for n in upcoming if n not in self.inflight and n not in self.have]
        if candidates:
            number = choose_piece(candidates, list(self.parents.values()), self.rng, in_order=self.back_to_source)
        else:
            number = upcoming[0]
        self.missing.remove(number)
        if number in self.inflight:  # another worker fetches it: wait for that (single flight)
            self.inflight[number].append(self.next_piece)
            return
        self.inflight[number] = []
        self.fetch(number, 0, self.swarm.sim.now)

    def fetch(self, number: int, rounds: int, started: float) -> None:
        """P2PFetcher.fetch: a parent that has it, else the origin if told so, else wait for a change."""
        swarm, sim = self.swarm, self.swarm.sim
        parent = pick_parent(self.parents.values(), number)
        if parent is not None:
            owner = swarm.owner(parent.id)
            if owner is None or owner.uploads >= swarm.upload_slots:  # 503: all its upload slots are taken
                parent.failures += 1 if owner is not None else MAX_PARENT_FAILURES
                parent.pieces.pop(number, None)
                failed = scheduler_pb2.DownloadPieceFailedRequest(
                    piece_number=number, parent_id=parent.id, temporary=owner is not None
                )
                swarm.scheduler.send(self, self.message(download_piece_failed_request=failed))
                self.fetch(number, rounds, started)
                return
            parent.active += 1
            owner.uploads += 1

            def arrived() -> None:
                parent.active -= 1
                owner.uploads -= 1
                self.stored(number, parent.id, started)

            sim.at(
                sim.now + swarm.rpc_latency,
                lambda: swarm.network.start(owner.up, self.down, swarm.span(number), arrived),
            )
            return
        if self.back_to_source:
            swarm.origin_requests += 1
            sim.at(
                sim.now + swarm.rpc_latency,
                lambda: swarm.network.start(
                    swarm.origin, self.down, swarm.span(number), lambda: self.stored(number, None, started)
                ),
            )
            return
        # No parent has it: wait for a change, at most parent_wait; quiet rounds lead to the origin.
        state = {"live": True, "since": sim.now, "rounds": rounds}

        def changed() -> None:
            if state["live"]:
                state["live"] = False
                self.fetch(number, 0, started)

        def quiet() -> None:
            if not state["live"]:
                return
            if self.last_change > state["since"]:  # a change came: the wait restarted from it, rounds reset
                state["since"], state["rounds"] = self.last_change, 0
                sim.at(self.last_change + swarm.parent_wait, quiet)
                return
            state["live"] = False
            quiet_rounds = state["rounds"] + 1
            if quiet_rounds >= swarm.parent_rounds:
                self.back_to_source = True
                self.notify()
                self.fetch(number, quiet_rounds, started)
                return
            avoid = [common_pb2.Peer(id=p.id) for p in self.parents.values() if not p.usable]
            request = scheduler_pb2.RescheduleRequest(
                candidate_parents=avoid, description=f"no parent has piece {number}"
            )
            swarm.scheduler.send(self, self.message(reschedule_request=request))
            self.fetch(number, quiet_rounds, started)

        self._waiting.setdefault(number, []).append(changed)
        sim.at(sim.now + swarm.parent_wait, quiet)

    def stored(self, number: int, parent_id: str | None, started: float) -> None:
        """The piece is verified and written: report it, offer it to watchers, take the next one."""
        swarm = self.swarm
        piece = common_pb2.Piece(number=number, offset=number * swarm.piece_length, length=swarm.span(number))
        piece.cost.FromNanoseconds(int((swarm.sim.now - started) * 1e9))
        if parent_id is None:
            report = scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(piece=piece)
            swarm.scheduler.send(self, self.message(download_piece_back_to_source_finished_request=report))
        else:
            piece.parent_id = parent_id
            report = scheduler_pb2.DownloadPieceFinishedRequest(piece=piece)
            swarm.scheduler.send(self, self.message(download_piece_finished_request=report))
        self.have.add(number)
        for waiter in self.inflight.pop(number, []):
            swarm.sim.soon(waiter)
        for child, view in self.watchers:
            view.pieces[number] = "blake3:sim"
            child.notify(number)
        if len(self.have) == swarm.pieces and self.finished_at is None:
            self.finished_at = swarm.sim.now
            done = scheduler_pb2.DownloadPeerFinishedRequest(content_length=swarm.size, piece_count=swarm.pieces)
            swarm.scheduler.send(self, self.message(download_peer_finished_request=done))
            if not self.seed:
                swarm.finished += 1
        self.next_piece()


class Swarm:
    def __init__(self, params: dict, args: argparse.Namespace):
        self.rng = random.Random(args.seed)
        self.size = params["size"]
        self.piece_length = piece_length_for(self.size)
        self.pieces = -(-self.size // self.piece_length)
        self.host_rate, self.origin_rate = params["host_rate"], params["origin_rate"]
        self.window, self.concurrency = args.window, args.concurrency
        self.upload_slots, self.rpc_latency = args.upload_slots, args.rpc_latency
        self.parent_wait, self.parent_rounds = args.parent_wait, args.parent_rounds
        self.start_delay = params.get("start_delay", 0.0)
        self.arrival = params.get("arrival", 0.0) if args.arrival is None else args.arrival
        self.trigger_latency = params.get("trigger_latency", args.rpc_latency)
        self.task_id = "task-" + "0" * 59
        self.clock = Clock()
        self.network = FluidNetwork(quantum=args.quantum)
        self.sim = Sim(self.network, self.clock)
        self.scheduler = Scheduler(self.sim, SchedulerConfig(listen="127.0.0.1:0"))
        self.scheduler.core.rng.seed(args.seed)  # its candidate draws too: one seed, one run
        self.origin = self.network.add_link(self.origin_rate)
        self.origin_requests = 0
        self.finished = 0
        self.daemons = [Daemon(self, n) for n in range(params["hosts"])]
        self.seeds = [Daemon(self, 0, seed=True)] if params.get("seed") else []
        self._by_host = {d.host_id: d for d in (*self.daemons, *self.seeds)}
        for d in (*self.seeds, *self.daemons):
            self.scheduler.announce(d.host_id, d.n + (1 << 20 if d.seed else 0), seed=d.seed)

    def span(self, number: int) -> int:
        return min(self.piece_length, self.size - number * self.piece_length)

    def owner(self, peer_id: str) -> Daemon | None:
        peer = self.scheduler.core.graph.find_peer(peer_id)
        return self._by_host.get(peer.host.id) if peer is not None else None

    def watch(self, child: Daemon, parent: Parent) -> None:
        """SyncPieces: the child learns what the parent has now, then each piece as it comes."""
        owner = self.owner(parent.id)
        if owner is None:
            return
        parent.pieces.update(dict.fromkeys(owner.have, "blake3:sim"))
        owner.watchers.append((child, parent))

    def trigger_seed(self, trigger) -> None:
        """The seed daemon accepts DownloadTask and registers the task (adopting its placeholder)."""
        seed = self._by_host[trigger.host_id]
        if seed.session is None:
            self.sim.at(self.sim.now + self.trigger_latency, seed.start)

    def run(self) -> dict:
        for d in self.daemons:
            self.sim.at(self.start_delay + self.rng.uniform(0, self.arrival), d.start)
        wall = time.perf_counter()
        self.sim.run(lambda: self.finished == len(self.daemons), limit=24 * 3600)
        wall = time.perf_counter() - wall
        last = max(d.finished_at for d in self.daemons)
        uploads = [float(self.network.carried[d.up]) for d in (*self.daemons, *self.seeds)]
        normal = sorted(float(self.network.carried[d.up]) for d in self.daemons)
        n = len(self.daemons)
        piece_time = self.piece_length / self.host_rate
        bound = (
            self.start_delay
            + max(self.size / self.host_rate, self.size / self.origin_rate)
            + math.ceil(math.log2(n + 1)) * piece_time
        )
        return {
            "hosts": n,
            "size_bytes": self.size,
            "piece_length": self.piece_length,
            "pieces": self.pieces,
            "last_host_s": last,
            "median_host_s": statistics.median(d.finished_at - d.started_at for d in self.daemons),
            "start_delay_s": self.start_delay,
            "physical_bound_s": bound,
            "origin_bytes": float(self.network.carried[self.origin]),
            "origin_copies": float(self.network.carried[self.origin]) / self.size,
            "upload_share": {
                "min": normal[0] / self.size,
                "median": normal[n // 2] / self.size,
                "max": normal[-1] / self.size,
                "seed": [float(self.network.carried[s.up]) / self.size for s in self.seeds],
                "cv": statistics.pstdev(uploads) / statistics.fmean(uploads) if len(uploads) > 1 else 0.0,
            },
            "back_to_source_hosts": sum(1 for d in self.daemons if d.back_to_source),
            "scheduler_cpu_s": self.scheduler.cpu,
            "decisions": self.scheduler.decisions,
            "answers": self.scheduler.answers,
            "sim_wall_s": wall,
        }


def report(name: str, r: dict) -> None:
    u = r["upload_share"]
    pieces = f"{r['pieces']} pieces of {r['piece_length'] >> 20} MiB"
    print(f"{name}: {r['hosts']} hosts x {r['size_bytes'] / 1e9:.2f} GB ({pieces})")
    since = f"; from launch, hosts registering after {r['start_delay_s']:.2f} s" if r["start_delay_s"] else ""
    print(f"  last host done        {r['last_host_s']:9.2f} s   (median host {r['median_host_s']:.2f} s{since})")
    print(f"  physical bound        {r['physical_bound_s']:9.2f} s   (size / link speed + log2(N) piece times)")
    print(f"  origin egress         {r['origin_bytes'] / 1e9:9.2f} GB  ({r['origin_copies']:.2f} copies)")
    print(
        f"  uploads per host      min {u['min']:.2f}  median {u['median']:.2f}  max {u['max']:.2f} copies; "
        f"seed {', '.join(f'{s:.2f}' for s in u['seed']) or '-'}; CV {u['cv']:.2f}"
    )
    print(
        f"  scheduler CPU         {r['scheduler_cpu_s']:9.2f} s   ({r['decisions']} decisions, answers {r['answers']}; "
        f"{r['back_to_source_hosts']} hosts went to the origin)"
    )
    print(f"  simulated in          {r['sim_wall_s']:9.1f} s of this machine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="p2p-5")
    parser.add_argument("--smoke", action="store_true", help="a tiny swarm (what the test runs)")
    parser.add_argument("--hosts", type=int, help="override the scenario's host count")
    parser.add_argument("--size-mib", type=int, help="override the scenario's object size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--arrival", type=float, help="hosts start uniformly within this many seconds (default: the scenario's, or 0)"
    )
    parser.add_argument(
        "--window", type=int, default=512, help="missing pieces a worker chooses among (the daemon's 512)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="workers per daemon (dffs get's default 8)")
    parser.add_argument("--upload-slots", type=int, default=16, help="a daemon's max_concurrent_uploads (16)")
    parser.add_argument("--parent-wait", type=float, default=3.0)
    parser.add_argument("--parent-rounds", type=int, default=3)
    parser.add_argument("--rpc-latency", type=float, default=0.0005, help="seconds before a piece request's bytes flow")
    parser.add_argument("--quantum", type=float, default=0.0005, help="flows this close to done complete together")
    args = parser.parse_args()
    name = "smoke" if args.smoke else args.scenario
    params = dict(SCENARIOS[name])
    if args.hosts:
        params["hosts"] = args.hosts
    if args.size_mib:
        params["size"] = args.size_mib * MiB
    result = Swarm(params, args).run()
    report(name, result)
    keys = ("seed", "arrival", "window", "concurrency", "upload_slots", "parent_wait", "rpc_latency", "quantum")
    settings = {k: getattr(args, k) for k in keys}
    print(json.dumps({"sim": "swarm", "scenario": name, **params, **settings, "result": result}))


if __name__ == "__main__":
    main()
