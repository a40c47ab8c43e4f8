"""Piece storage: journal encoding, crash recovery, verification, the memory tier."""

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dffs.digest import piece_digest
from dffs.errors import StorageError
from dffs.storage import MemoryTier, StorageManager, TaskMeta, TaskStore, journal
from dffs.storage.task import CLEAN_MARKER, JOURNAL_FILE

PIECE = 64 * 1024
TID = "ab" * 32


def make_meta(size=5 * PIECE + 100, tid=TID):
    return TaskMeta(task_id=tid, url="http://o/x", content_length=size, piece_length=PIECE, etag='"e1"')


def piece_bytes(n, length=PIECE):
    return bytes([n % 251]) * length


# ------------------------------------------------------------------ journal
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.booleans(), st.binary(min_size=32, max_size=32)
        )
    )
)
def test_journal_records_round_trip(items):
    records = [journal.PieceRecord(*item) for item in items]
    data = b"".join(journal.encode_record(r) for r in records)
    decoded, good = journal.decode_records(data)
    assert decoded == records
    assert good == len(data)


def test_journal_torn_tail_is_dropped():
    records = [journal.PieceRecord(n, 10, True, bytes([n]) * 32) for n in range(3)]
    data = b"".join(journal.encode_record(r) for r in records)
    decoded, good = journal.decode_records(data[:-5])  # last record torn
    assert decoded == records[:2]
    assert good == 2 * journal.RECORD.size
    damaged = bytearray(data)
    damaged[journal.RECORD.size + 3] ^= 0xFF  # second record damaged
    assert journal.decode_records(bytes(damaged))[0] == records[:1]


def test_journal_replay_applies_removals():
    r = lambda n, present: journal.PieceRecord(n, 1, present, bytes(32))  # noqa: E731
    state = journal.replay([r(1, True), r(2, True), r(1, False), r(3, True), r(3, False), r(3, True)])
    assert sorted(state) == [2, 3]


def test_journal_header():
    assert journal.decode_header(journal.encode_header(PIECE)) == PIECE
    with pytest.raises(ValueError):
        journal.decode_header(b"NOTAJOURNAL12345")


# -------------------------------------------------------------------- meta
def test_meta_round_trip_and_validation():
    meta = make_meta()
    assert TaskMeta.from_json(meta.to_json()) == meta
    assert meta.piece_count == 6
    with pytest.raises(ValueError):
        TaskMeta.from_json('{"version": 99}')


def test_meta_same_content_rules():
    meta = make_meta()
    assert meta.same_content_as(meta.content_length, '"e1"', None)
    assert not meta.same_content_as(meta.content_length, '"e2"', None)
    assert not meta.same_content_as(meta.content_length + 1, '"e1"', None)
    lm = TaskMeta(task_id=TID, url="u", content_length=5, piece_length=PIECE, last_modified="Mon")
    assert lm.same_content_as(5, None, "Mon")
    assert not lm.same_content_as(5, None, "Tue")
    bare = TaskMeta(task_id=TID, url="u", content_length=5, piece_length=PIECE)
    assert not bare.same_content_as(5, None, None)  # nothing to compare: refetch


# ------------------------------------------------------------------- store
def fill(store, numbers):
    for n in numbers:
        store.write_piece(n, piece_bytes(n, store.span(n).length))


def test_write_read_and_missing(tmp_path):
    store = TaskStore.create(tmp_path / "t", make_meta())
    fill(store, [0, 2, 5])
    assert store.present_pieces() == [0, 2, 5]
    assert store.missing_pieces() == [1, 3, 4]
    assert store.read_piece(5) == piece_bytes(5, 100)
    assert store.present_bytes() == 2 * PIECE + 100
    assert store.piece_digest(2) == piece_digest(piece_bytes(2))
    with pytest.raises(StorageError, match="expected"):
        store.write_piece(1, b"short")
    store.close()


def test_clean_reopen_keeps_pieces_without_rehashing(tmp_path):
    store = TaskStore.create(tmp_path / "t", make_meta())
    fill(store, [0, 1])
    store.close()
    assert (tmp_path / "t" / CLEAN_MARKER).exists()
    again = TaskStore.open(tmp_path / "t")
    assert again.present_pieces() == [0, 1]
    assert not (tmp_path / "t" / CLEAN_MARKER).exists()  # open means dirty until closed
    again.close()


def test_crash_recovery_drops_damaged_and_unrecorded_pieces(tmp_path):
    d = tmp_path / "t"
    store = TaskStore.create(d, make_meta())
    fill(store, [0, 1, 2, 3])
    # a piece whose bytes were written but whose record never made it
    os.pwrite(store.content_fd, piece_bytes(4), 4 * PIECE)
    # page-cache data lost for piece 1 (e.g. power loss): bytes differ from the record
    os.pwrite(store.content_fd, b"\x00" * 10, PIECE + 7)
    store.close_dirty()
    # and a torn record at the journal's tail
    with open(d / JOURNAL_FILE, "ab") as f:
        f.write(b"\x01\x02\x03")
    recovered = TaskStore.open(d)
    assert recovered.present_pieces() == [0, 2, 3]
    assert recovered.missing_pieces() == [1, 4, 5]
    recovered.close()
    # the journal was compacted: a clean reopen agrees without re-verifying
    assert TaskStore.open(d).present_pieces() == [0, 2, 3]


def test_corruption_at_rest_is_caught_before_serving(tmp_path):
    d = tmp_path / "t"
    store = TaskStore.create(d, make_meta())
    fill(store, [0, 1])
    store.close()
    with open(d / "content", "r+b") as f:  # a byte flips while the task is closed
        f.seek(PIECE + 5)
        f.write(b"\xff")
    reopened = TaskStore.open(d)
    assert reopened.present_pieces() == [0, 1]  # clean marker: journal trusted...
    assert reopened.read_piece(0) == piece_bytes(0)
    with pytest.raises(Exception, match="failed verification"):
        reopened.read_piece(1)  # ...but never served unverified
    assert not reopened.has_piece(1)
    reopened.close()


def test_remove_piece_punches_a_hole(tmp_path):
    store = TaskStore.create(tmp_path / "t", make_meta(size=8 * PIECE))
    fill(store, range(8))
    before = os.fstat(store.content_fd).st_blocks
    store.remove_piece(3)
    assert os.fstat(store.content_fd).st_blocks < before
    assert store.missing_pieces() == [3]
    store.close()
    assert TaskStore.open(tmp_path / "t").missing_pieces() == [3]


def test_hard_linked_content_is_detached_before_change(tmp_path):
    store = TaskStore.create(tmp_path / "t", make_meta(size=2 * PIECE))
    fill(store, [0, 1])
    exported = tmp_path / "out"
    os.link(store.content_path, exported)
    store.remove_piece(1)  # must not punch a hole in the user's file
    assert exported.read_bytes() == piece_bytes(0) + piece_bytes(1)
    fill(store, [1])
    assert store.read_piece(1) == piece_bytes(1)
    assert os.stat(exported).st_nlink == 1
    store.close()


def test_a_piece_written_while_the_content_is_detached_lands_in_the_private_copy(tmp_path, monkeypatch):
    """The soak's wrong bytes: a pwrite in flight (outside the lock) while a removal detached the
    hard-linked content went to the old file (or a descriptor number reused by another file).
    The detach must wait for it, and keep the descriptor number readers already hold."""
    import threading

    from dffs.storage import task as task_module

    store = TaskStore.create(tmp_path / "t", make_meta(size=3 * PIECE))
    fill(store, [0, 1])
    exported = tmp_path / "out"
    os.link(store.content_path, exported)
    fd_before = store.content_fd
    started, go = threading.Event(), threading.Event()
    real_pwrite = task_module._pwrite_all

    def held_pwrite(fd, view, offset):  # instrumentation: hold the write in flight, then write for real
        started.set()
        assert go.wait(30)
        real_pwrite(fd, view, offset)

    monkeypatch.setattr(task_module, "_pwrite_all", held_pwrite)
    writer = threading.Thread(target=store.write_piece, args=(2, piece_bytes(2)))
    writer.start()
    assert started.wait(30)
    remover = threading.Thread(target=store.remove_piece, args=(1,))
    remover.start()
    remover.join(1)  # let the removal reach the detach (with the fix it waits there for the write)
    go.set()
    writer.join(30)
    remover.join(30)
    assert not writer.is_alive() and not remover.is_alive()
    assert store.content_fd == fd_before
    assert os.stat(exported).st_nlink == 1
    assert exported.read_bytes()[: 2 * PIECE] == piece_bytes(0) + piece_bytes(1)  # the user's file untouched
    store.close()
    again = TaskStore.open(tmp_path / "t")
    assert again.present_pieces() == [0, 2]
    assert again.read_piece(2) == piece_bytes(2)  # verified against its digest: the bytes are there
    again.close()


# ------------------------------------------- removals racing writes (issue 16)
def _assert_no_wrong_byte(store, length_of):
    """Every piece the store holds as verified reads back as its own bytes from the content file."""
    for n in store.present_pieces():
        if store.is_verified(n):
            span = store.span(n)
            assert os.pread(store.content_fd, span.length, span.offset) == piece_bytes(n, length_of(n)), n


def test_a_removal_waiting_for_a_detach_never_punches_a_copy_written_meanwhile(tmp_path, monkeypatch):
    """The soak's zeros through the proxy: a removal popped piece 1, then (the content hard-linked
    by an export) waited for writes in flight with the lock released; a reader meanwhile found
    piece 1 absent, wrote a fresh copy and recorded it verified; the removal then punched that
    copy. Piece 1 was served as zeros by sendfile until the process ended."""
    import threading

    from dffs.storage import task as task_module

    store = TaskStore.create(tmp_path / "t", make_meta(size=3 * PIECE))
    fill(store, [0, 1])
    os.link(store.content_path, tmp_path / "out")
    started, go, waiting = threading.Event(), threading.Event(), threading.Event()
    real_pwrite = task_module._pwrite_all

    def held_pwrite(fd, view, offset):  # instrumentation: hold piece 2's write in flight
        if offset == 2 * PIECE:
            started.set()
            assert go.wait(30)
        real_pwrite(fd, view, offset)

    class SeenWaiting(threading.Condition):  # instrumentation: say when the removal waits for writes
        def wait(self, timeout=None):
            waiting.set()
            return super().wait(timeout)

    monkeypatch.setattr(task_module, "_pwrite_all", held_pwrite)
    store._content_writes_done = SeenWaiting(store._lock)
    writer = threading.Thread(target=store.write_piece, args=(2, piece_bytes(2)))
    writer.start()
    assert started.wait(30)
    remover = threading.Thread(target=store.remove_piece, args=(1,))
    remover.start()
    assert waiting.wait(30)  # the removal waits for piece 2's write, the lock released
    store.write_piece(1, piece_bytes(1))  # a reader's fresh copy of piece 1, recorded meanwhile
    go.set()
    writer.join(30)
    remover.join(30)
    assert not writer.is_alive() and not remover.is_alive()
    _assert_no_wrong_byte(store, lambda n: PIECE)
    assert store.is_verified(2)
    store.close()


def test_a_write_whose_range_was_punched_before_its_record_is_written_again(tmp_path, monkeypatch):
    """Two copies of one piece in flight (a streamed fetch and a reader's): the first is recorded,
    the GC removes it — punching the range after the second copy's pwrite — and the second copy
    must not then be recorded present over the hole."""
    import threading

    from dffs.storage import task as task_module

    store = TaskStore.create(tmp_path / "t", make_meta(size=2 * PIECE))
    fill(store, [0, 1])
    written, go = threading.Event(), threading.Event()
    real_pwrite = task_module._pwrite_all
    held = [True]

    def pwrite_then_hold(fd, view, offset):  # instrumentation: the bytes land, the record waits
        real_pwrite(fd, view, offset)
        if held[0]:
            held[0] = False
            written.set()
            assert go.wait(30)

    monkeypatch.setattr(task_module, "_pwrite_all", pwrite_then_hold)
    writer = threading.Thread(target=store.write_piece, args=(1, piece_bytes(1)))
    writer.start()
    assert written.wait(30)
    assert store.remove_piece(1) == PIECE  # the GC's eviction of the copy recorded before
    go.set()
    writer.join(30)
    assert not writer.is_alive()
    assert store.is_verified(1)  # written again after the punch, then recorded
    _assert_no_wrong_byte(store, lambda n: PIECE)
    store.close()
    again = TaskStore.open(tmp_path / "t")
    assert again.read_piece(1) == piece_bytes(1)
    again.close()


@pytest.mark.parametrize("linked", [False, True], ids=["private", "hard-linked"])
def test_writes_removals_pins_and_reads_in_threads_never_show_a_wrong_byte(tmp_path, linked):
    """Threads doing what the proxy, the GC and exports do to one store at once: a reader pins a
    piece, writes it if absent (single flight per piece, like PeerTask), then reads it back."""
    import random
    import threading
    import time

    size = 4 * PIECE - 1000
    store = TaskStore.create(tmp_path / "t", make_meta(size=size))

    def length_of(n):
        return store.span(n).length

    flights = [threading.Lock() for _ in range(4)]
    deadline = time.monotonic() + 2.0  # how long the threads hammer, not a bound on anything
    wrong: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def guarded(fn):
        def run():
            try:
                while time.monotonic() < deadline and not wrong:
                    fn()
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        return run

    def read():
        n = random.randrange(4)
        with store.pinned([n]):
            if not store.is_verified(n):
                with flights[n]:
                    if not store.has_piece(n):
                        store.write_piece(n, piece_bytes(n, length_of(n)))
            span = store.span(n)
            data = os.pread(store.content_fd, span.length, span.offset)
            if data != piece_bytes(n, span.length):
                wrong.append((n, data.count(0)))

    def evict():
        store.evict_piece(random.randrange(4))

    exports = iter(range(10**9))

    def export():
        path = tmp_path / f"out{next(exports)}"
        try:
            os.link(store.content_path, path)
        except FileNotFoundError:  # a detach is renaming its private copy into place right now
            return
        path.unlink()

    work = [read] * 4 + [evict] * 2 + ([export] if linked else [])
    threads = [threading.Thread(target=guarded(fn)) for fn in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    assert not wrong, f"pieces read with wrong bytes (piece, zero bytes): {wrong[:5]}"
    store.close()


def test_manager_open_create_delete_and_usage(tmp_path):
    manager = StorageManager(tmp_path / "data")
    assert manager.open_task(TID) is None
    store = manager.create_task(make_meta())
    fill(store, [0, 1])
    assert manager.open_tasks_bytes == 2 * PIECE
    assert manager.task_ids() == [TID]
    assert manager.disk_usage() >= 2 * PIECE
    manager.close()
    again = StorageManager(tmp_path / "data")
    assert again.open_task(TID).present_pieces() == [0, 1]
    assert again.open_tasks_bytes == 2 * PIECE
    again.delete_task(TID)
    assert again.open_task(TID) is None and again.task_ids() == []
    assert again.open_tasks_bytes == 0


def test_manager_discards_a_task_with_garbage_metadata(tmp_path):
    manager = StorageManager(tmp_path)
    manager.create_task(make_meta())
    manager.close()
    (manager.task_dir(TID) / "meta.json").write_text("{not json")
    fresh = StorageManager(tmp_path)
    assert fresh.open_task(TID) is None  # cleared, not a crash
    assert fresh.task_ids() == []


def test_manager_rejects_bad_task_ids(tmp_path):
    manager = StorageManager(tmp_path)
    with pytest.raises(Exception, match="invalid task id"):
        manager.task_dir("../../etc")


# ------------------------------------------------------------- memory tier
def test_memory_tier_is_lru_and_bounded():
    tier = MemoryTier(budget_bytes=300, max_item_bytes=100)
    for key in "abc":
        tier.put(key, b"x" * 100)
    assert tier.get("a") == b"x" * 100  # a is now most recent
    tier.put("d", b"y" * 100)  # evicts b
    assert tier.get("b") is None
    assert tier.get("a") is not None and tier.get("d") is not None
    assert tier.used_bytes == 300
    tier.put("big", b"z" * 101)  # too large to admit
    assert tier.get("big") is None
    tier.discard("a")
    assert tier.used_bytes == 200


def test_small_tasks_are_served_from_memory(tmp_path):
    manager = StorageManager(tmp_path)
    meta = TaskMeta(task_id=TID, url="u", content_length=1000, piece_length=PIECE, etag='"e"')
    store = manager.create_task(meta)
    store.write_piece(0, b"q" * 1000)
    hits = manager.memory.hits
    assert store.read_piece(0) == b"q" * 1000
    assert manager.memory.hits == hits + 1
    manager.close()


def test_a_journal_record_that_does_not_fit_is_cut_back_and_a_later_write_succeeds(tmp_path):
    """A short write (the disk fills in the middle of a record) must not leave part of a record:
    every later one would sit off its boundary and be lost at the next open. A real short write:
    RLIMIT_FSIZE lets the kernel write only up to the limit (SIGXFSZ ignored, so it is an error)."""
    import resource
    import signal

    store = TaskStore.create(tmp_path / "t", make_meta(size=10))  # one 10-byte piece
    journal_path = tmp_path / "t" / JOURNAL_FILE
    before = journal_path.stat().st_size
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (before + 20, limits[1]))  # room for 20 of 48 bytes
        with pytest.raises(StorageError, match="recording piece 0"):
            store.write_piece(0, piece_bytes(0, 10))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert journal_path.stat().st_size == before  # no partial record
    assert not store.has_piece(0)
    assert store.write_health.failing and "recording piece 0" in store.write_health.failing
    store.write_piece(0, piece_bytes(0, 10))
    assert store.write_health.failing is None
    store.close_dirty()
    reopened = TaskStore.open(tmp_path / "t")
    assert reopened.present_pieces() == [0] and reopened.read_piece(0) == piece_bytes(0, 10)
    reopened.close()


@pytest.mark.parametrize("size", [1000, 3 * PIECE + 5], ids=["one-piece", "task-files"])
def test_an_export_pins_every_piece_and_refuses_a_task_that_lost_one(tmp_path, size):
    """`dffs get` verifies, then exports: a piece the GC evicted in between used to be exported as a
    hole (zeros, seen with small objects in the shared pack). The export pins every piece for its
    whole copy and refuses a task that is no longer complete, so the caller fetches it again."""
    from dffs.peertask.export import PiecesEvicted, export_task

    storage = StorageManager(tmp_path / "data")
    try:
        store = storage.create_task(make_meta(size=size))
        body = os.urandom(size)
        for n in range(store.meta.piece_count):
            span = store.span(n)
            store.write_piece(n, body[span.offset : span.offset + span.length])
        out = tmp_path / "out.bin"
        export_task(store, out)
        assert out.read_bytes() == body
        assert store.pinned_pieces() == frozenset()  # the export's pins are released
        assert store.evict_piece(store.meta.piece_count - 1) > 0
        with pytest.raises(PiecesEvicted):
            export_task(store, tmp_path / "again.bin")
        assert not (tmp_path / "again.bin").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".again.bin")]  # no temp file left
    finally:
        storage.close()
