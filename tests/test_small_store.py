"""The small-object store (dffs/storage/small.py): objects of one piece in one shared pack with a
SQLite index — no task directory per object, crash-safe, evictable, and bad files cost only
themselves.

Real files in tmp_path; the crash is a real child process killed with SIGKILL while it writes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from dffs.errors import StorageError
from dffs.gc.policy import GcLimits
from dffs.gc.service import GcService
from dffs.peertask.export import export_task
from dffs.storage import StorageManager, TaskMeta, small
from dffs.storage.small import INDEX_FILE, PACK_FILE, SMALL_DIR, SMALL_OBJECT_MAX, PackedStore

KiB = 1024
PIECE = 4 << 20


def tid(i: int) -> str:
    return hashlib.sha256(f"object-{i}".encode()).hexdigest()


def body(i: int, size: int) -> bytes:
    return random.Random(i).randbytes(size)


def meta(i: int, size: int) -> TaskMeta:
    return TaskMeta(task_id=tid(i), url=f"http://origin/{i}", content_length=size, piece_length=PIECE)


def put(storage: StorageManager, i: int, size: int) -> PackedStore:
    store = storage.create_task(meta(i, size))
    assert isinstance(store, PackedStore)
    store.write_piece(0, body(i, size))
    return store


def read(storage: StorageManager, i: int) -> bytes | None:
    """The object's bytes as a reader would get them (verified first), or None if it is not here."""
    store = storage.open_task(tid(i))
    if store is None or not store.ensure_verified(0):
        return None
    return store.read_piece(0)


def sizes(n: int) -> list[int]:
    return [1 + (i * 7919) % (200 * KiB) for i in range(n)]


def test_small_objects_share_one_pack_and_survive_a_restart(tmp_path):
    storage = StorageManager(tmp_path, memory_tier_bytes=0)
    lengths = sizes(40)
    for i, size in enumerate(lengths):
        put(storage, i, size)
    assert list(storage.tasks_dir.iterdir()) == []  # not one task directory
    assert sorted(p.name for p in (tmp_path / SMALL_DIR).iterdir() if not p.name.endswith(("-wal", "-shm"))) == [
        INDEX_FILE,
        PACK_FILE,
    ]
    assert set(storage.task_ids()) == {tid(i) for i in range(40)}
    # A multi-piece object or one over the limit keeps its directory.
    storage.create_task(meta(1000, SMALL_OBJECT_MAX + 1))
    assert [p.name for p in storage.tasks_dir.iterdir()] == [tid(1000)[:2]]
    storage.close()

    again = StorageManager(tmp_path, memory_tier_bytes=0)
    try:
        for i, size in enumerate(lengths):
            store = again.open_task(tid(i))
            assert isinstance(store, PackedStore)
            assert store.meta.url == f"http://origin/{i}" and store.meta.content_length == size
            assert not store.is_verified(0)  # every process checks an object before serving it
            assert read(again, i) == body(i, size)
        out = tmp_path / "out.bin"
        assert export_task(again.open_task(tid(7)), out) in ("copy_file_range", "sendfile")
        assert out.read_bytes() == body(7, lengths[7])
        with pytest.raises(StorageError, match="small object"):
            _ = again.open_task(tid(7)).content_fd  # the pack's descriptor with the task's own offsets: refused
    finally:
        again.close()


CHILD = textwrap.dedent(
    """
    import hashlib, random, sys
    from dffs.storage import StorageManager, TaskMeta
    storage = StorageManager(sys.argv[1])
    for i in range(1_000_000):
        size = 1 + (i * 7919) % (200 * 1024)
        tid = hashlib.sha256(f"object-{i}".encode()).hexdigest()
        meta = TaskMeta(task_id=tid, url=f"http://origin/{i}", content_length=size, piece_length=4 << 20)
        store = storage.create_task(meta)
        store.write_piece(0, random.Random(i).randbytes(size))
        print(i, flush=True)
    """
)


def test_a_killed_writer_and_torn_or_damaged_bytes_never_yield_wrong_bytes(tmp_path, caplog):
    """SIGKILL in the middle of writing, then the pack's tail cut (a write a power loss tore) and a
    byte flipped at rest: every object that is served has exactly its bytes; the others are gone."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        done = -1
        assert child.stdout is not None
        for line in child.stdout:
            done = int(line)
            if done >= 150:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(30)
    assert done >= 150

    index = tmp_path / SMALL_DIR / INDEX_FILE
    with sqlite3.connect(index) as db:
        rows = {t: (o, n) for t, o, n in db.execute("SELECT task_id, offset, length FROM objects")}
    by_offset = sorted(rows.items(), key=lambda item: item[1][0])
    last_tid, (last_offset, last_length) = by_offset[-1]
    middle_tid, (middle_offset, middle_length) = by_offset[len(by_offset) // 2]
    pack = tmp_path / SMALL_DIR / PACK_FILE
    with open(pack, "r+b") as f:
        f.truncate(last_offset + last_length // 2)  # the last object's bytes torn
        f.seek(middle_offset + middle_length // 2)
        good = f.read(1)
        f.seek(middle_offset + middle_length // 2)
        f.write(bytes([good[0] ^ 0x5A]))  # one object damaged at rest

    caplog.set_level(logging.INFO)
    storage = StorageManager(tmp_path, memory_tier_bytes=0)
    try:
        assert "event=small_store_rows_dropped rows=1" in caplog.text  # the torn one, at open
        assert storage.open_task(last_tid) is None
        served = 0
        for i in range(done + 1):
            data = read(storage, i)
            if tid(i) in (last_tid, middle_tid):
                assert data is None, i
            else:  # every object whose write returned before the kill is here, whole
                assert data == body(i, sizes(i + 1)[i]), i
                served += 1
        # The child may have written one more object between its last line read and the kill: the
        # torn one (the last in the pack) is then that one, outside the range counted.
        spoiled = {last_tid, middle_tid} & {tid(i) for i in range(done + 1)}
        assert served == done + 1 - len(spoiled) and middle_tid in spoiled
        assert not storage.open_task(middle_tid).has_piece(0)  # dropped when its check failed, for good
        assert middle_tid not in storage.task_ids()
        assert "event=piece_corrupt action=drop" in caplog.text
        # The space no row holds is given back, and the store goes on taking objects.
        put(storage, 10**6, 5000)
        assert read(storage, 10**6) == body(10**6, 5000)
    finally:
        storage.close()


def test_gc_evicts_small_objects_least_recently_used_and_gives_their_blocks_back(tmp_path):
    clock = Clock(1000.0)
    storage = StorageManager(tmp_path, clock=clock, memory_tier_bytes=0)
    for i in range(10):
        clock.now = 1000.0 + i
        put(storage, i, 16 * KiB)
    clock.now = 2000.0
    storage.open_task(tid(0)).touch([0])  # read again: the newest now
    storage.close()  # a clean close keeps the last accesses

    storage = StorageManager(tmp_path, clock=clock, memory_tier_bytes=0)
    try:
        assert storage.disk_usage() == 10 * 16 * KiB
        gc = GcService(storage, GcLimits(quota=10 * 16 * KiB, high=0.5, low=0.25), clock=clock)
        result = gc.collect()
        survivors = [i for i in range(10) if storage.open_task(tid(i)) is not None]
        assert survivors == [0, 9], result  # the two most recently used; 1..8 went, oldest first
        assert storage.disk_usage() == 2 * 16 * KiB  # their holes were punched
        assert read(storage, 0) == body(0, 16 * KiB) and read(storage, 9) == body(9, 16 * KiB)
    finally:
        storage.close()
    again = StorageManager(tmp_path, memory_tier_bytes=0)
    try:
        assert sorted(again.task_ids()) == sorted([tid(0), tid(9)])
    finally:
        again.close()


def test_an_unusable_index_is_started_over_with_a_warning(tmp_path, caplog):
    storage = StorageManager(tmp_path)
    put(storage, 1, 3000)
    storage.close()
    index = tmp_path / SMALL_DIR / INDEX_FILE
    for name in (f"{INDEX_FILE}-wal", f"{INDEX_FILE}-shm"):
        (tmp_path / SMALL_DIR / name).unlink(missing_ok=True)
    index.write_bytes(b"this is not a database" * 100)

    caplog.set_level(logging.WARNING)
    storage = StorageManager(tmp_path)  # no exception: the cache starts over
    try:
        assert "event=small_store_unusable action=reset" in caplog.text and str(index.parent) in caplog.text
        assert storage.task_ids() == [] and storage.open_task(tid(1)) is None
        put(storage, 2, 4000)
        assert read(storage, 2) == body(2, 4000)
    finally:
        storage.close()


def test_a_bad_row_costs_only_its_object(tmp_path, caplog):
    storage = StorageManager(tmp_path)
    for i in range(4):
        put(storage, i, 5000 + i)
    storage.close()
    with sqlite3.connect(tmp_path / SMALL_DIR / INDEX_FILE) as db:
        db.execute("UPDATE objects SET meta = '{not json' WHERE task_id = ?", (tid(0),))
        db.execute("UPDATE objects SET digest = x'00' WHERE task_id = ?", (tid(1),))
        db.execute("UPDATE objects SET length = 5000000 WHERE task_id = ?", (tid(2),))  # over the limit

    caplog.set_level(logging.WARNING)
    storage = StorageManager(tmp_path)
    try:
        assert [read(storage, i) for i in range(3)] == [None, None, None]
        assert "event=small_object_unusable action=delete" in caplog.text
        assert read(storage, 3) == body(3, 5003)
        assert storage.task_ids() == [tid(3)]
    finally:
        storage.close()


def test_replacing_and_deleting_a_small_object(tmp_path):
    storage = StorageManager(tmp_path, memory_tier_bytes=0)
    try:
        put(storage, 1, 8 * KiB)
        blocks = storage.disk_usage()
        changed = storage.create_task(meta(1, 12 * KiB))  # the object changed at its origin
        assert not changed.has_piece(0) and storage.open_task(tid(1)) is changed
        changed.write_piece(0, body(2, 12 * KiB))
        assert read(storage, 1) == body(2, 12 * KiB)
        assert storage.disk_usage() == blocks + 4 * KiB  # the old copy's blocks were given back
        storage.delete_task(tid(1))
        assert storage.open_task(tid(1)) is None and storage.disk_usage() == 0
    finally:
        storage.close()


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_pack_files_are_private(tmp_path):
    old = os.umask(0)
    try:
        storage = StorageManager(tmp_path / "data")
        put(storage, 1, 100)
        small = tmp_path / "data" / SMALL_DIR
        assert oct(small.stat().st_mode & 0o777) == oct(0o700)
        for name in (PACK_FILE, INDEX_FILE, f"{INDEX_FILE}-wal"):
            assert oct((small / name).stat().st_mode & 0o777) == oct(0o600), name
        storage.close()
    finally:
        os.umask(old)


DEFERRING_CHILD = textwrap.dedent(
    """
    import hashlib, random, sys, time
    from dffs.storage import StorageManager, TaskMeta, small
    small.FLUSH_BATCH = 5  # the lookup below commits the five rows waiting by then
    storage = StorageManager(sys.argv[1])
    for i in range(8):
        tid = hashlib.sha256(f"object-{i}".encode()).hexdigest()
        meta = TaskMeta(task_id=tid, url=f"http://origin/{i}", content_length=9000, piece_length=4 << 20)
        store = storage.create_task(meta)
        assert store.writes_inline  # no GC hooks: the mount would write it on its event loop
        store.write_piece(0, random.Random(i).randbytes(9000), defer_index=True)
        if i == 4:
            storage.open_task(hashlib.sha256(b"absent").hexdigest())  # a lookup, a batch waiting: committed
    print("written", flush=True)
    time.sleep(600)
    """
)


def test_deferred_rows_are_committed_in_batches_and_a_crash_loses_only_the_waiting_ones(tmp_path):
    """Rows of objects written on the event loop wait until a call made off it finds a batch of them;
    a SIGKILL before that loses only those objects (fetched again), and their blocks are given back."""
    child = subprocess.Popen([sys.executable, "-c", DEFERRING_CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "written\n"
    finally:
        child.kill()
        child.wait(30)
    storage = StorageManager(tmp_path, memory_tier_bytes=0)
    try:
        assert [read(storage, i) == body(i, 9000) for i in range(8)] == [True] * 5 + [False] * 3
        assert storage.disk_usage() == 5 * 12 * KiB  # the three unrecorded objects' blocks were punched
    finally:
        storage.close()


def _committed_rows(directory) -> int:
    """Rows another process would find in the index now (what a crash would keep)."""
    db = sqlite3.connect(directory / SMALL_DIR / INDEX_FILE)
    try:
        return db.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
    finally:
        db.close()


def test_a_lookup_answers_waiting_rows_from_memory_and_commits_only_a_batch_or_an_old_one(tmp_path, monkeypatch):
    """Opening a dataset's files must not cost a transaction each: a lookup finds a row that waits
    in memory, and commits what waits only once FLUSH_BATCH rows have gathered or the oldest has
    waited FLUSH_AGE seconds."""
    monkeypatch.setattr(small, "FLUSH_BATCH", 4)
    monkeypatch.setattr(small, "FLUSH_AGE", 3600.0)
    storage = StorageManager(tmp_path, memory_tier_bytes=0)

    def write_deferred(i: int) -> None:
        storage.create_task(meta(i, 9000)).write_piece(0, body(i, 9000), defer_index=True)

    try:
        for i in range(3):
            write_deferred(i)
        assert _committed_rows(tmp_path) == 0
        assert [storage.small.lookup(tid(i)).length for i in range(3)] == [9000] * 3  # from memory
        assert storage.small.lookup(tid(99)) is None
        assert _committed_rows(tmp_path) == 0  # three wait: fewer than a batch, none old
        write_deferred(3)
        assert storage.small.lookup(tid(99)) is None
        assert _committed_rows(tmp_path) == 4  # a batch: committed by that lookup
        write_deferred(4)
        monkeypatch.setattr(small, "FLUSH_AGE", 0.0)  # the row waiting is now old enough
        assert storage.small.lookup(tid(0)) is not None
        assert _committed_rows(tmp_path) == 5
    finally:
        storage.close()
    reopened = StorageManager(tmp_path, memory_tier_bytes=0)
    try:
        assert [read(reopened, i) == body(i, 9000) for i in range(5)] == [True] * 5
    finally:
        reopened.close()
