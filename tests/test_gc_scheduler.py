"""The scheduler's side of cache GC: a host's evicted pieces stop making it a parent for them."""

from __future__ import annotations

import pytest

from dffs.scheduler.errors import InvalidArgument, NotFound
from dffs.scheduler.evaluator import candidate_parents
from dffs.scheduler.resource import PeerState
from dffs.scheduler.testing import FakeClock, add_peer, make_graph


def test_deleted_pieces_leave_the_bitmap_and_an_empty_peer_leaves():
    graph = make_graph(FakeClock())
    parent = add_peer(graph, "parent", "h1", state=PeerState.SUCCEEDED, pieces=4)
    child = add_peer(graph, "child", "h2", state=PeerState.RUNNING, pieces=[0, 1])
    assert candidate_parents(child, graph) == [parent]

    graph.delete_pieces("h1", "task", [2, 3])  # the parent now holds only what the child has
    assert not parent.has_piece(2) and parent.finished_count == 2
    assert candidate_parents(child, graph) == []
    assert parent.state is PeerState.SUCCEEDED

    graph.delete_pieces("h1", "task", [0, 1])
    assert "parent" not in graph.peers and "parent" not in graph.task("task").peers


def test_bad_delete_pieces_requests():
    graph = make_graph(FakeClock())
    add_peer(graph, "p", "h1", state=PeerState.SUCCEEDED, pieces=2)
    add_peer(graph, "q", "h2", "other", state=PeerState.SUCCEEDED, pieces=1)
    with pytest.raises(InvalidArgument):
        graph.delete_pieces("h1", "task", [2])  # beyond the task's 2 pieces
    with pytest.raises(NotFound):
        graph.delete_pieces("h2", "task", [0])  # h2 holds no peer of the task
    with pytest.raises(NotFound):
        graph.delete_pieces("nobody", "task", [0])
