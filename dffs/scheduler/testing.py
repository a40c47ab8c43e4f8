"""Helpers for tests of the scheduler's pure layers: a fake clock and graph builders."""

from __future__ import annotations

from dffs.scheduler.resource import Graph, Host, HostType, Peer, PeerState


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_graph(clock: FakeClock | None = None, **options) -> Graph:
    return Graph(clock=clock or FakeClock(), **options)


def add_host(graph: Graph, host_id: str, *, seed: bool = False, **fields) -> Host:
    n = len(graph.hosts) + 1
    fields.setdefault("ip", f"10.0.{n // 250}.{n % 250 + 1}")
    fields.setdefault("port", 4000)
    fields.setdefault("download_port", 4001)
    fields.setdefault("hostname", host_id)
    host, _ = graph.announce_host(host_id, type=HostType.SEED if seed else HostType.NORMAL, **fields)
    return host


def add_peer(
    graph: Graph,
    peer_id: str,
    host: Host | str,
    task_id: str = "task",
    *,
    state: PeerState = PeerState.PENDING,
    pieces: int | range | list[int] = 0,
    piece_count: int | None = None,
    **options,
) -> Peer:
    """A peer in ``state`` holding ``pieces`` (a count from 0, or explicit numbers)."""
    host_id = host if isinstance(host, str) else host.id
    if host_id not in graph.hosts:
        add_host(graph, host_id)
    peer = graph.register_peer(peer_id, host_id, task_id, url=f"http://origin/{task_id}", **options)
    if piece_count is not None:
        peer.task.piece_count = piece_count
    numbers = range(pieces) if isinstance(pieces, int) else pieces
    if state is PeerState.RUNNING:
        graph.peer_started(peer)
    elif state is PeerState.BACK_TO_SOURCE:
        graph.peer_back_to_source_started(peer)
    for n in numbers:
        if peer.state is PeerState.PENDING:
            graph.peer_back_to_source_started(peer)
        graph.piece_finished(peer, n, cost=0.1, length=4 << 20)
    if state is PeerState.SUCCEEDED:
        total = peer.task.piece_count or max(max(numbers, default=-1) + 1, 1)
        graph.peer_finished(peer, content_length=total * (4 << 20), piece_count=total)
    elif state is PeerState.FAILED:
        if peer.state is PeerState.PENDING:
            graph.peer_started(peer)
        graph.peer_failed(peer)
    elif state is PeerState.LEAVING:
        peer.state = PeerState.LEAVING
    return peer
