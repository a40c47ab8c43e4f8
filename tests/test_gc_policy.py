"""The GC's pure policy (dffs.gc.policy) and its storage primitives (pins, eviction, last access);
last access is stamped by a clock the tests set, so LRU order is exact rather than a race with time."""

from __future__ import annotations

import os

import pytest

from dffs.errors import UsageError
from dffs.gc.policy import GcLimits, PieceState, TaskState, parse_quota, plan, plan_reclaim
from dffs.gc.service import GcService
from dffs.storage import StorageManager, TaskMeta
from dffs.storage.task import ACCESS_FILE

MiB = 1024 * 1024


def task(tid: str, access: float, pieces: int, *, length=MiB, piece_access=None, **kw) -> TaskState:
    return TaskState(
        task_id=tid,
        last_access=access,
        pieces=tuple(PieceState(n, length, (piece_access or {}).get(n, access)) for n in range(pieces)),
        disk_bytes=pieces * length,
        **kw,
    )


LIMITS = GcLimits(quota=10 * MiB, high=0.8, low=0.5)


def test_nothing_happens_under_the_high_watermark():
    assert not plan([task("a", 1, 8)], used=8 * MiB, limits=LIMITS, now=100)
    assert not plan([task("a", 1, 8)], used=8 * MiB, limits=GcLimits(), now=100)  # no quota at all


def test_over_high_evicts_least_recently_used_down_to_low():
    tasks = [task("old", 10, 3), task("new", 50, 6, piece_access={0: 5})]
    decided = plan(tasks, used=9 * MiB, limits=LIMITS, now=100)
    # 9 MiB -> at most 5 MiB: the oldest piece (new/0 at t=5) first, then "old" whole.
    assert decided.delete_tasks == (("old", "quota"),)
    assert decided.evict_pieces == (("new", (0,)),)
    assert decided.freed == 4 * MiB


def test_incoming_bytes_count_and_make_room_for_themselves():
    decided = plan([task("a", 1, 7)], used=7 * MiB, limits=LIMITS, now=2, incoming=2 * MiB)
    # 7 + 2 > 8: go down to 5 - 2 = 3 MiB of old pieces.
    assert decided.freed == 4 * MiB and decided.evict_pieces == (("a", (0, 1, 2, 3)),)


def test_pinned_pieces_and_busy_tasks_are_never_evicted():
    tasks = [task("busy", 0, 4, busy=True), task("read", 1, 4, pinned=frozenset({0, 1})), task("x", 2, 1)]
    decided = plan(tasks, used=9 * MiB, limits=LIMITS, now=100)
    evicted = dict(decided.evict_pieces)
    assert "busy" not in evicted and not any(t == "busy" for t, _ in decided.delete_tasks)
    assert evicted["read"] == (2, 3)
    assert ("x", "quota") in decided.delete_tasks


def test_active_tasks_lose_pieces_but_are_not_deleted():
    decided = plan([task("open", 0, 9, active=True)], used=9 * MiB, limits=LIMITS, now=1)
    assert decided.delete_tasks == () and decided.evict_pieces == (("open", (0, 1, 2, 3)),)


def test_a_full_disk_frees_what_is_needed_least_recently_used_first_with_the_same_protections():
    tasks = [
        task("busy", 0, 4, busy=True),
        task("read", 1, 3, pinned=frozenset({0})),
        task("cold", 2, 2),
        task("open", 3, 3, active=True),
        task("hot", 9, 4),
    ]
    decided = plan_reclaim(tasks, need=6 * MiB)
    # read/1, read/2 (t=1), cold whole (t=2), then open/0 and open/1 (t=3): 6 MiB; hot is left.
    assert decided.freed == 6 * MiB
    assert decided.delete_tasks == (("cold", "disk_full"),)
    assert dict(decided.evict_pieces) == {"read": (1, 2), "open": (0, 1)}
    assert not plan_reclaim(tasks, need=0)
    everything = plan_reclaim(tasks, need=100 * MiB)  # more than there is: all that may go, no more
    assert dict(everything.evict_pieces) == {"read": (1, 2), "open": (0, 1, 2)}
    assert {t for t, _ in everything.delete_tasks} == {"cold", "hot"}


def test_task_ttl():
    limits = GcLimits(task_ttl=60)
    tasks = [
        task("cold", 10, 2),
        task("warm", 90, 2),
        task("pinned", 10, 2, pinned=frozenset({1})),
        task("open", 10, 2, active=True),
    ]
    assert plan(tasks, used=0, limits=limits, now=100).delete_tasks == (("cold", "ttl"),)


def test_bad_limits():
    with pytest.raises(ValueError):
        GcLimits(quota=1, high=0.5, low=0.6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20GiB", 20 << 30),
        ("500MB", 500_000_000),
        ("1048576", 1 << 20),
        ("1.5KiB", 1536),
        ("50%", 500),
        ("", 0),
        (None, 0),
        (4096, 4096),
        ("32mib", 32 << 20),
    ],
)
def test_parse_quota(text, expected):
    assert parse_quota(text, filesystem_bytes=1000) == expected


@pytest.mark.parametrize("text", ["lots", "10 parsecs", "150%", "0%", "-5", "%"])
def test_parse_quota_rejects(text):
    with pytest.raises(UsageError):
        parse_quota(text, filesystem_bytes=1000)


TID = "ab" * 32


def test_store_pins_evictions_and_persisted_last_access(tmp_path):
    storage = StorageManager(tmp_path)
    store = storage.create_task(TaskMeta(task_id=TID, url="http://h/x", content_length=3 * 4096, piece_length=4096))
    for n in range(3):
        store.write_piece(n, bytes([n]) * 4096)
    with store.pinned([1]):
        assert store.evict_piece(1) == 0 and store.has_piece(1)
        assert store.pinned_pieces() == {1}
    assert store.pinned_pieces() == frozenset()
    assert store.evict_piece(1) == 4096 and not store.has_piece(1)
    assert store.evict_piece(1) == 0
    assert store.disk_bytes() <= 2 * 4096 + 4096  # the hole is punched (allowing one block of slack)
    storage.close()
    assert StorageManager(tmp_path).open_task(TID).present_pieces() == [0, 2]


class Clock:
    """A wall clock the test sets by hand (the storage stamps accesses with it)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_touch_orders_lru_eviction_and_persists_last_access(tmp_path):
    clock = Clock(1000.0)
    storage = StorageManager(tmp_path, clock=clock)
    store = storage.create_task(TaskMeta(task_id=TID, url="http://h/x", content_length=3 * 4096, piece_length=4096))
    for n in range(3):
        store.write_piece(n, bytes([n]) * 4096)  # a write is an access: all three at t=1000
    clock.now = 2000.0
    store.touch([2])
    assert [store.piece_access(n) for n in range(3)] == [1000.0, 1000.0, 2000.0]
    assert store.last_access == 2000.0
    assert os.stat(store.directory / ACCESS_FILE).st_mtime == 2000.0  # persisted at once (5 s since the last)
    clock.now = 2003.0
    store.touch([1])  # in memory at once, on disk at most every ACCESS_PERSIST_INTERVAL
    assert [store.piece_access(n) for n in range(3)] == [1000.0, 2003.0, 2000.0]
    assert os.stat(store.directory / ACCESS_FILE).st_mtime == 2000.0

    # The GC's real pass over this storage, least recently used first: 0 (t=1000) goes, then 2
    # (t=2000); 1 (t=2003) stays. Whatever the tie-break, untouched pieces could not end like that.
    usage = storage.disk_usage()
    assert usage == 3 * 4096, usage  # whole blocks on this filesystem, or the watermarks below mean nothing
    gc = GcService(storage, GcLimits(quota=4 * 4096, high=0.5, low=0.25), clock=clock)
    result = gc.collect()
    assert [(tid, sorted(numbers)) for tid, numbers in result.evicted_pieces] == [(TID, [0, 2])]
    assert store.present_pieces() == [1]

    storage.close()  # a clean close persists the last access exactly
    assert os.stat(store.directory / ACCESS_FILE).st_mtime == 2003.0
    again = StorageManager(tmp_path, clock=clock).open_task(TID)
    assert again.last_access == 2003.0  # the LRU order survives a restart
    assert again.piece_access(1) == 2003.0  # pieces this process has not used carry the task's stamp


def test_reserve_hook_runs_before_new_pieces_only(tmp_path):
    storage = StorageManager(tmp_path)
    seen = []
    storage.reserve = seen.append
    store = storage.create_task(TaskMeta(task_id=TID, url="http://h/x", content_length=5000, piece_length=4096))
    store.write_piece(0, b"a" * 4096)
    store.write_piece(1, b"b" * 904)
    store.write_piece(1, b"b" * 904)  # rewritten: no new bytes
    assert seen == [4096, 904]
