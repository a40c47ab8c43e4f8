"""Tasks nobody holds are forgotten from memory, and a long-running daemon then applies the task TTL.

Real origins (FaultyOrigin) and, for the TTL, a real ``dffs daemon`` with ``dffs get`` and
``dffs ctl`` talking to it over its socket.
"""

from __future__ import annotations

import json
import resource
import time

import pytest
import trio
from cli import run_dffs
from cluster import Daemon

from dffs.peertask import DownloadRequest, TaskManager
from dffs.source import SourceRegistry
from dffs.storage import StorageManager


async def test_idle_tasks_are_forgotten_and_held_ones_kept(tmp_path, faulty_origin):
    idle_url = faulty_origin.add("/idle", b"i" * 1000)
    held_url = faulty_origin.add("/held", b"h" * 1000)
    storage = StorageManager(tmp_path / "data")
    sources = SourceRegistry()
    try:
        async with TaskManager(storage, sources, idle_timeout=0.2) as tasks:
            held = await tasks.open(DownloadRequest(url=held_url))
            with held.held():
                idle = await tasks.open(DownloadRequest(url=idle_url))
                await idle.fetch_all()
                with trio.fail_after(30):
                    while tasks.active(idle.task_id) is not None:
                        await trio.sleep(0.05)
                assert idle.background.cancelled  # forgetting ended its background work
                assert tasks.active(held.task_id) is held and not held.background.cancelled
            # Its pieces stayed on disk: opened again, it is complete without the origin.
            again = await tasks.open(DownloadRequest(url=idle_url))
            assert again is not idle and again.store.is_complete()
            assert faulty_origin.count("/idle", "GET") == 1
    finally:
        storage.close()
        await sources.aclose()


async def test_a_task_with_a_pinned_piece_is_not_forgotten(tmp_path, faulty_origin):
    url = faulty_origin.add("/pinned", b"p" * 1000)
    other_url = faulty_origin.add("/other", b"o" * 1000)
    storage = StorageManager(tmp_path / "data")
    sources = SourceRegistry()
    try:
        async with TaskManager(storage, sources, idle_timeout=0.2) as tasks:
            task = await tasks.open(DownloadRequest(url=url))
            await task.fetch_all()
            with task.store.pinned([0]):
                other = await tasks.open(DownloadRequest(url=other_url))
                with trio.fail_after(30):
                    while tasks.active(other.task_id) is not None:
                        await trio.sleep(0.05)
                assert tasks.active(task.task_id) is task
    finally:
        storage.close()
        await sources.aclose()


@pytest.mark.slow
async def test_a_task_being_opened_is_in_use_for_the_gc(tmp_path, faulty_origin):
    """Between its store's creation and its PeerTask's registration a task is not yet active;
    the GC asks ``in_use``, which counts it (a deletion in that window closed the store under the
    task: every read of it failed with "task ... is closed", seen in the soak)."""
    from origins import Behavior

    url = faulty_origin.add("/slow", b"s" * 1000, behavior=Behavior.stall(after=None, duration=3, times=1))
    storage = StorageManager(tmp_path / "data")
    sources = SourceRegistry()
    request = DownloadRequest(url=url)
    try:
        async with TaskManager(storage, sources, idle_timeout=60) as tasks, trio.open_nursery() as nursery:
            opened = []

            async def open_it():
                opened.append(await tasks.open(request))

            nursery.start_soon(open_it)
            with trio.fail_after(30):
                while not faulty_origin.requests("/slow"):
                    await trio.sleep(0.02)
            assert tasks.active(request.task_id) is None and tasks.in_use(request.task_id)
            with trio.fail_after(30):
                while not opened:
                    await trio.sleep(0.02)
            assert tasks.in_use(request.task_id)
    finally:
        storage.close()
        await sources.aclose()


async def test_a_task_whose_store_was_deleted_under_it_is_opened_afresh(tmp_path, faulty_origin):
    body = bytes(range(256)) * 40
    url = faulty_origin.add("/gone", body)
    storage = StorageManager(tmp_path / "data")
    sources = SourceRegistry()
    try:
        async with TaskManager(storage, sources, idle_timeout=60) as tasks:
            task = await tasks.open(DownloadRequest(url=url))
            await task.fetch_all()
            storage.delete_task(task.task_id)  # what a GC deletion did to a task being opened
            assert task.store.closed
            again = await tasks.open(DownloadRequest(url=url))
            assert again is not task and not again.store.closed
            await again.fetch_all()
            assert again.store.read_piece(0) == body
    finally:
        storage.close()
        await sources.aclose()


def test_a_long_running_daemon_applies_the_task_ttl(tmp_path, faulty_origin):
    url = faulty_origin.add("/ttl.bin", b"t" * 100_000)
    config = tmp_path / "daemon.toml"
    config.write_text("task_ttl = 2.0\ngc_interval = 0.5\ntask_idle_timeout = 0.5\n")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    daemon = Daemon(
        tmp_path,
        "ttl",
        None,
        extra=("--config", str(config), "--metrics-port", "-1", "--proxy-port", "-1"),
        prefix=["prlimit", f"--nofile=256:{hard}"],  # started with a low soft limit
    )
    daemon.start()
    try:
        # It raised its soft descriptor limit to the hard one at start.
        limits = open(f"/proc/{daemon.proc.pid}/limits").read()
        soft_now = next(line.split()[3] for line in limits.splitlines() if line.startswith("Max open files"))
        assert int(soft_now) == hard, limits
        out = tmp_path / "out.bin"
        got = run_dffs("get", url, "-O", str(out), "--data-dir", str(daemon.data_dir))
        assert got.returncode == 0, got.stderr + daemon.output()[-3000:]
        assert out.read_bytes() == b"t" * 100_000
        deadline = time.monotonic() + 60
        while True:
            listed = run_dffs("ctl", "--data-dir", str(daemon.data_dir), "tasks", "--json")
            assert listed.returncode == 0, listed.stderr
            if json.loads(listed.stdout) == []:
                break
            assert time.monotonic() < deadline, daemon.output()[-3000:]
            time.sleep(0.2)
        assert "event=gc_evict_task reason=ttl" in daemon.output()
        assert daemon.alive()
    finally:
        daemon.stop()
