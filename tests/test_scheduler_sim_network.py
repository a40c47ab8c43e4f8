"""The swarm simulator's fluid network (scripts/sim/network.py): rates, completions, bytes. Pure (numpy)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "sim"))
from network import FluidNetwork  # noqa: E402


def run(net: FluidNetwork, until: float = 1e9) -> list[tuple[float, str]]:
    """Advance to each completion; (time, name) of every flow, in the order they finished."""
    now, done = 0.0, []
    while net.flows and now < until:
        step = net.next_completion()
        for callback in net.advance(step):
            done.append((now + step, callback()))
        now += step
    return done


def test_flows_share_a_link_equally_and_speed_up_when_one_ends():
    net = FluidNetwork(quantum=0.0)
    up, down_a, down_b = net.add_link(100.0), net.add_link(1000.0), net.add_link(1000.0)
    net.start(up, down_a, 100.0, lambda: "small")
    net.start(up, down_b, 300.0, lambda: "big")
    # Both at 50 B/s until the small one is done at 2 s; then the big one alone at 100 B/s for its last 200 B.
    assert run(net) == [(pytest.approx(2.0), "small"), (pytest.approx(4.0), "big")]
    assert net.carried[up] == pytest.approx(400.0) and net.carried[down_b] == pytest.approx(300.0)


def test_a_flow_held_back_elsewhere_leaves_its_share_to_the_others():
    """Max-min: the slow receiver gets 10 B/s, the other flow takes the rest of the 100 B/s upload."""
    net = FluidNetwork(quantum=0.0)
    up, slow, fast = net.add_link(100.0), net.add_link(10.0), net.add_link(1000.0)
    net.start(up, slow, 10.0, lambda: "slow")
    net.start(up, fast, 90.0, lambda: "fast")
    assert net.next_completion() == pytest.approx(1.0)  # 10 B at 10 B/s, and 90 B at the 90 B/s left
    assert sorted(name for _, name in run(net)) == ["fast", "slow"] and net.carried[up] == pytest.approx(100.0)


def test_flows_due_within_the_quantum_complete_together():
    net = FluidNetwork(quantum=0.01)
    a, b = net.add_link(1000.0), net.add_link(1000.0)
    for size in (100.0, 102.0, 150.0):
        net.start(a, b, size, lambda size=size: size)
    first = net.advance(net.next_completion())  # 333 B/s each: 100 B done at 0.3 s
    assert [cb() for cb in first] == [100.0, 102.0]  # 102 B was due 6 ms later: within the quantum
    assert net.flows == 1


def test_links_must_have_capacity_and_tables_grow():
    net = FluidNetwork()
    with pytest.raises(ValueError):
        net.add_link(0)
    a, b = net.add_link(1e9), net.add_link(1e9)
    for _ in range(3000):  # past the initial table size
        net.start(a, b, 1e6, lambda: None)
    assert net.flows == 3000 and len(net.advance(net.next_completion())) == 3000
