"""Which parent serves a piece (dffs/daemon/piece_choice.py, pure): cost and load, not only load;
and which piece a worker takes next."""

from __future__ import annotations

import random

from dffs.daemon.piece_choice import MAX_PARENT_FAILURES, Parent, choose_piece, pick_parent

MiB = 1 << 20


def parent(name: str, *, pieces=(0, 1, 2), active: int = 0, failures: int = 0) -> Parent:
    p = Parent(name, "10.0.0.1", 1, 2, pieces={n: "blake3:" + "0" * 64 for n in pieces})
    p.active, p.failures = active, failures
    return p


def test_unmeasured_parents_share_by_load_then_failures():
    a, b = parent("a", active=2), parent("b", active=1)
    assert pick_parent([a, b], 0) is b
    c, d = parent("c", failures=1), parent("d")
    assert pick_parent([c, d], 0) is d


def test_a_slow_parent_gets_nothing_while_a_fast_one_can_deliver_sooner():
    fast, slow = parent("fast"), parent("slow")
    fast.delivered(0.1, 4 * MiB)  # 40 MB/s
    slow.delivered(4.0, 4 * MiB)  # 1 MB/s
    fast.active = 7  # even with seven transfers in flight the fast one is sooner
    assert pick_parent([slow, fast], 0) is fast
    fast.active = 60  # but not at any load: the slow one then delivers sooner
    assert pick_parent([slow, fast], 0) is slow


def test_an_unmeasured_parent_counts_as_good_as_the_best_so_it_is_tried():
    measured, new = parent("measured", active=1), parent("new")
    measured.delivered(0.1, 4 * MiB)
    assert pick_parent([measured, new], 0) is new


def test_the_moving_average_forgets_an_old_slow_piece():
    p = parent("p")
    p.delivered(10.0, MiB)
    for _ in range(10):
        p.delivered(0.1, MiB)
    assert p.cost < 0.5


def test_parents_without_the_piece_or_failed_too_often_are_never_picked():
    lacks, failed = parent("lacks", pieces=(1,)), parent("failed", failures=MAX_PARENT_FAILURES)
    assert pick_parent([lacks, failed], 0) is None


def test_on_the_origin_pieces_a_helper_is_said_to_hold_come_last_and_announced_ones_first():
    """In order from the origin, but not the pieces the scheduler said a helper holds: they may be
    announced in a moment. Once announced they are taken (from the helper) before anything else."""
    helper = parent("helper", pieces=())
    helper.promised = frozenset({0, 1})
    rng = random.Random(1)
    assert choose_piece([0, 1, 2, 3], [helper], rng, in_order=True) == 2
    assert choose_piece([0, 1], [helper], rng, in_order=True) == 0  # nothing else left: in order
    helper.pieces[1] = "blake3:" + "0" * 64
    assert choose_piece([0, 1, 2, 3], [helper], rng, in_order=True) == 1
    helper.failures = MAX_PARENT_FAILURES  # a helper given up on promises nothing
    assert choose_piece([0, 2, 3], [helper], rng, in_order=True) == 0
