"""Storage under pressure and in a shared machine: a bounded number of open task files, a GC pass
that opens no task, transient errors that delete nothing, private modes, exports without symlink races.

Real files in tmp_path; the EMFILE case runs in a child process whose descriptor limit it lowers.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dffs.errors import StorageError
from dffs.gc.policy import GcLimits
from dffs.gc.service import GcService
from dffs.peertask import export
from dffs.peertask.export import export_task
from dffs.storage import StorageManager, TaskMeta

PIECE = 4096


def tid(i: int) -> str:
    return f"{i:064x}"


def piece(i: int, n: int) -> bytes:
    return bytes([(i * 7 + n) % 251]) * PIECE


def make_tasks(storage: StorageManager, count: int, pieces: int = 2) -> None:
    for i in range(count):
        meta = TaskMeta(task_id=tid(i), url=f"http://o/{i}", content_length=pieces * PIECE, piece_length=PIECE)
        store = storage.create_task(meta)
        for n in range(pieces):
            store.write_piece(n, piece(i, n))


def task_fds(storage: StorageManager) -> int:
    """Descriptors this process has open on files under the storage's tasks directory."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(str(storage.tasks_dir))
    return count


def test_open_task_files_are_bounded_and_reopened_transparently(tmp_path):
    storage = StorageManager(tmp_path / "data", max_open_files=4, memory_tier_bytes=0)
    try:
        make_tasks(storage, 40)
        assert len(storage.open_stores()) == 40
        assert storage.open_file_stores <= 4 and task_fds(storage) <= 8
        for i in range(40):  # every store still answers, reopening its files as needed
            store = storage.open_task(tid(i))
            for n in range(2):
                assert store.read_piece(n) == piece(i, n)
            store.write_piece(1, piece(i, 1))  # and takes writes (journal reopened too)
            assert task_fds(storage) <= 8
    finally:
        storage.close()
    reopened = StorageManager(tmp_path / "data", max_open_files=4, memory_tier_bytes=0)
    try:
        for i in range(40):
            store = reopened.open_task(tid(i))
            assert store.is_complete() and store.read_piece(0) == piece(i, 0)
    finally:
        reopened.close()


def test_a_pinned_store_keeps_its_files_under_a_reader(tmp_path):
    storage = StorageManager(tmp_path / "data", max_open_files=2, memory_tier_bytes=0, small_object_max=0)
    try:
        make_tasks(storage, 1)
        store = storage.open_task(tid(0))
        with store.pinned([0]):
            fd = store.content_fd
            make_tasks_from = [
                TaskMeta(task_id=tid(i), url="http://o", content_length=PIECE, piece_length=PIECE) for i in range(1, 20)
            ]
            for meta in make_tasks_from:
                storage.create_task(meta).write_piece(0, piece(0, 0))
            assert store.files_open and store.content_fd == fd
            assert os.pread(fd, PIECE, 0) == piece(0, 0)
        storage.create_task(TaskMeta(task_id=tid(99), url="http://o", content_length=PIECE, piece_length=PIECE))
        assert not store.files_open  # unpinned, it was the oldest: parked
        assert store.read_piece(1) == piece(0, 1)
    finally:
        storage.close()


def test_a_gc_pass_opens_no_task(tmp_path):
    storage = StorageManager(tmp_path / "data", memory_tier_bytes=0)
    make_tasks(storage, 30)
    storage.close()
    storage = StorageManager(tmp_path / "data", memory_tier_bytes=0)
    try:
        gc = GcService(storage, GcLimits())
        result = gc.collect()
        assert result.used >= 30 * 2 * PIECE and not result.evicted_tasks
        assert storage.open_stores() == {} and task_fds(storage) == 0
        # Under a quota it opens only the tasks it takes pieces from.
        gc.limits = GcLimits(quota=30 * 2 * PIECE, high=0.8, low=0.6)
        result = gc.collect()
        touched = {t for t, _ in result.evicted_pieces} | set(result.evicted_tasks)
        assert touched and set(storage.open_stores()) <= touched
    finally:
        storage.close()


EMFILE_CHILD = textwrap.dedent(
    """
    import os, resource, sys
    from dffs.errors import StorageError
    from dffs.storage import StorageManager
    storage = StorageManager(sys.argv[1])
    tid = sys.argv[2]
    held = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    try:
        storage.open_task(tid)
    except StorageError as exc:
        print("refused:", exc)
    else:
        print("opened")
    """
)


def test_a_transient_error_while_opening_a_task_deletes_nothing(tmp_path):
    storage = StorageManager(tmp_path / "data", memory_tier_bytes=0)
    make_tasks(storage, 1)
    storage.close()
    child = subprocess.run(
        [sys.executable, "-c", EMFILE_CHILD, str(tmp_path / "data"), tid(0)], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("refused:") and "Too many open files" in child.stdout
    storage = StorageManager(tmp_path / "data", memory_tier_bytes=0)
    try:
        store = storage.open_task(tid(0))
        assert store is not None and store.is_complete() and store.read_piece(1) == piece(0, 1)
    finally:
        storage.close()


def test_a_corrupt_task_is_reset(tmp_path):
    storage = StorageManager(tmp_path / "data", memory_tier_bytes=0)
    make_tasks(storage, 1)
    storage.close()
    directory = storage.task_dir(tid(0))
    (directory / "meta.json").write_text("{not json")
    storage = StorageManager(tmp_path / "data", memory_tier_bytes=0)
    try:
        assert storage.open_task(tid(0)) is None and not directory.exists()
    finally:
        storage.close()


MODES_CHILD = textwrap.dedent(
    """
    import os, sys
    os.umask(0)
    from dffs.storage import StorageManager, TaskMeta
    storage = StorageManager(sys.argv[1])
    meta = TaskMeta(task_id="ab" * 32, url="http://o/x", content_length=8192, piece_length=4096)
    store = storage.create_task(meta)
    store.write_piece(0, b"x" * 4096)
    store.touch()
    storage.close()
    """
)


@pytest.mark.parametrize("existing", [False, True], ids=["new-data-dir", "existing-0755-data-dir"])
def test_data_dir_is_private_whatever_the_umask(tmp_path, existing):
    data = tmp_path / "data"
    if existing:
        data.mkdir()
        data.chmod(0o755)
    child = subprocess.run([sys.executable, "-c", MODES_CHILD, str(data)], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(data) == 0o700 and mode(data / "tasks") == 0o700
    files = [p for p in (data / "tasks").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"meta.json", "content", "pieces.journal", "clean"}
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    assert all(mode(p) == 0o700 for p in (data / "tasks").rglob("*") if p.is_dir())


def test_export_never_follows_a_planted_symlink(tmp_path, monkeypatch):
    """The temporary name is random; the randomness is fixed here (a mock) to plant the symlink."""
    storage = StorageManager(tmp_path / "data", memory_tier_bytes=0)
    try:
        make_tasks(storage, 1)
        store = storage.open_task(tid(0))
        shared = tmp_path / "shared"
        shared.mkdir()
        victim = tmp_path / "victim"
        victim.write_bytes(b"precious")
        monkeypatch.setattr(export.secrets, "token_hex", lambda n: "f" * (2 * n))
        (shared / f".out.bin.dffs-{'f' * 16}").symlink_to(victim)
        with pytest.raises(StorageError, match="no free temporary name"):
            export_task(store, shared / "out.bin")
        assert victim.read_bytes() == b"precious" and not (shared / "out.bin").exists()
        monkeypatch.undo()
        assert export_task(store, shared / "out.bin") in ("hardlink", "reflink", "copy_file_range", "sendfile")
        assert (shared / "out.bin").read_bytes() == piece(0, 0) + piece(0, 1)
        assert victim.read_bytes() == b"precious"
        assert sorted(p.name for p in shared.iterdir()) == [".out.bin.dffs-" + "f" * 16, "out.bin"]
    finally:
        storage.close()
