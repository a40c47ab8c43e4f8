"""dffs.scheduler.heap: what survives a housekeeping pass is frozen, young garbage is not, and
a full pass comes back for what was frozen (gc in this process: each test thaws what it froze)."""

from __future__ import annotations

import gc
import weakref

import pytest

from dffs.scheduler.heap import FULL_EVERY, Heap
from dffs.scheduler.testing import FakeClock


class Node:
    """A weakly referable object that can be made part of a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> tuple[Node, weakref.ref[Node]]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(b)


@pytest.fixture
def heap():
    clock = FakeClock()
    heap = Heap(clock=clock)
    heap.fake_clock = clock
    try:
        yield heap
    finally:
        gc.unfreeze()  # what the test froze goes back to this process's collector
        gc.collect()


def test_young_garbage_is_collected_and_what_survives_is_frozen(heap):
    live, live_ref = cycle()
    dropped, dropped_ref = cycle()
    del dropped
    before = gc.get_freeze_count()
    assert heap.settle() == gc.get_freeze_count() > before
    assert dropped_ref() is None  # garbage at the pass: collected, not kept frozen
    assert live_ref() is live.other


def test_garbage_that_was_frozen_waits_for_the_next_full_pass(heap):
    live, live_ref = cycle()
    heap.settle()  # frozen while alive
    del live
    gc.collect()
    heap.settle()
    assert live_ref() is not None  # the collector's passes skip what is frozen: why pauses are short
    heap.fake_clock.advance(FULL_EVERY)
    heap.settle()  # an hour on: everything thawed and collected once
    assert live_ref() is None
