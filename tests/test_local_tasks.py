"""The local-task operations (``dffs ctl``'s) in-process: LocalTasks on real storage, a real
TaskManager and GC, a real nginx origin, and a real ``dffs scheduler`` process for the swarm side.

No gRPC between the test and LocalTasks: this is the plain class the control servicer wraps.
"""

from __future__ import annotations

import hashlib

import pytest
import trio
from cli import sha256_file
from cluster import Process

from dffs.daemon.local_tasks import LocalTasks
from dffs.daemon.schedulers import SchedulerClient
from dffs.errors import NotFound, NotReady, StorageError, UsageError
from dffs.gc.policy import GcLimits
from dffs.gc.service import GcService
from dffs.peertask import DownloadRequest, TaskManager
from dffs.security.ca import Identity, load_cluster_key
from dffs.security.transport import secure
from dffs.source import SourceRegistry
from dffs.storage import StorageManager

MiB = 1024 * 1024
HOST_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def local(tmp_path, cluster_key):
    """``await local(schedulers=())`` -> LocalTasks on fresh storage; everything closed at teardown."""
    made = []
    transport = secure(load_cluster_key(cluster_key), Identity("daemon", HOST_ID))

    async def hold(storage, sources, schedulers, *, task_status):
        async with TaskManager(storage, sources) as tasks, trio.open_nursery() as nursery:
            await nursery.start(schedulers.run, _host())
            gc = GcService(storage, GcLimits(quota=0), report=schedulers.report_evictions)
            task_status.started(LocalTasks(storage, tasks, gc, schedulers, sources))
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:

        async def make(schedulers=()) -> LocalTasks:
            storage = StorageManager(tmp_path / f"data{len(made)}")
            sources = SourceRegistry()
            made.append((storage, sources))
            client = SchedulerClient(HOST_ID, schedulers, announce_interval=60, channel_factory=transport.channel)
            return await nursery.start(hold, storage, sources, client)

        yield make
        nursery.cancel_scope.cancel()
    for storage, sources in made:
        storage.close()
        await sources.aclose()


def _host():
    from dffs.api import common_pb2

    return common_pb2.Host(id=HOST_ID, hostname="local-test", ip="127.0.0.1", port=1, download_port=1)


@pytest.fixture
def scheduler(tmp_path):
    proc = Process(["scheduler", "--listen", "127.0.0.1:0"], tmp_path / "scheduler.log", r"listening on (\S+):(\d+)")
    proc.start()
    try:
        yield f"127.0.0.1:{proc.match.group(2)}"
    finally:
        proc.stop()


async def test_import_list_stat_export_and_delete(local, tmp_path, make_file):
    ops = await local()
    digest = make_file("input.bin", 9 * MiB + 7, seed=5)
    request = DownloadRequest(url="http://127.0.0.1:9/nothing-listens/input.bin")

    info = await ops.import_file(tmp_path / "input.bin", request)
    assert info.meta.imported and info.complete and info.state == "Succeeded"
    assert info.present_pieces == info.meta.piece_count == 3
    assert info.present_bytes == 9 * MiB + 7

    listed = await ops.list()
    assert [i.meta.task_id for i in listed] == [request.task_id]
    assert (await ops.stat(request.task_id)).present_bytes == 9 * MiB + 7

    # Export from local pieces only: no origin exists behind the URL.
    out = tmp_path / "out.bin"
    exported = await ops.export(out, task_id=request.task_id, local_only=True)
    assert exported.meta.task_id == request.task_id
    assert sha256_file(out) == digest

    await ops.delete(request.task_id)
    assert await ops.list() == []
    with pytest.raises(NotFound, match="not on this host"):
        await ops.stat(request.task_id)


async def test_bad_requests_are_clear_errors(local, tmp_path):
    ops = await local()
    with pytest.raises(UsageError, match="64 hex"):
        await ops.stat("not-a-task")
    with pytest.raises(NotFound):
        await ops.delete("a" * 64)
    with pytest.raises(UsageError, match="absolute"):
        await ops.import_file(tmp_path.relative_to(tmp_path.anchor), DownloadRequest(url="http://h/x"))
    with pytest.raises(StorageError, match="cannot import"):
        await ops.import_file(tmp_path / "missing.bin", DownloadRequest(url="http://h/x"))
    with pytest.raises(StorageError, match="not a regular file"):
        await ops.import_file(tmp_path, DownloadRequest(url="http://h/dir"))
    with pytest.raises(NotReady, match="not complete here"):
        await ops.export(tmp_path / "o.bin", request=DownloadRequest(url="http://h/y"), local_only=True)
    assert not list(tmp_path.glob("o.bin*"))


async def test_export_downloads_what_is_not_here_and_refuses_to_delete_a_busy_task(
    local, tmp_path, make_file, nginx_origin
):
    root = tmp_path / "www"
    digest = make_file(root / "f.bin", 6 * MiB + 1, seed=6)
    origin = nginx_origin(root)
    ops = await local()
    request = DownloadRequest(url=origin.url("/f.bin"))

    out = tmp_path / "f.out"
    info = await ops.export(out, request=request)
    assert sha256_file(out) == digest and info.complete

    task = ops.tasks.active(request.task_id)
    assert task is not None
    with task.store.pinned([0]):  # a reader holds piece 0
        with pytest.raises(NotReady, match="being downloaded or read"):
            await ops.delete(request.task_id)
    await ops.delete(request.task_id)
    assert ops.tasks.active(request.task_id) is None


async def test_run_gc_reports_its_limits(local):
    ops = await local()
    report = await ops.run_gc()
    assert report.result.evicted_tasks == () and report.limits.quota == 0


async def test_import_becomes_known_to_the_scheduler_and_delete_removes_it(local, tmp_path, make_file, scheduler):
    ops = await local(schedulers=[scheduler])
    make_file("shared.bin", 5 * MiB, seed=7)
    request = DownloadRequest(url="http://127.0.0.1:9/nowhere/shared.bin")
    await ops.import_file(tmp_path / "shared.bin", request)

    # What another host would learn with its origin gone: the size, from the scheduler.
    stat = await ops.schedulers.stat_task(request)
    assert stat is not None and stat.content_length == 5 * MiB

    await ops.delete(request.task_id)
    assert await ops.schedulers.stat_task(request) is None


async def test_import_is_refused_while_the_task_is_open(local, tmp_path, make_file, nginx_origin):
    root = tmp_path / "www"
    make_file(root / "open.bin", 1 * MiB, seed=8)
    origin = nginx_origin(root)
    ops = await local()
    request = DownloadRequest(url=origin.url("/open.bin"))
    await ops.tasks.open(request)
    make_file("other.bin", 10, seed=9)
    with pytest.raises(NotReady, match="is open on this host"):
        await ops.import_file(tmp_path / "other.bin", request)
    assert hashlib.sha256((tmp_path / "other.bin").read_bytes()).hexdigest()  # the file is untouched


async def test_listing_tasks_opens_none_of_them(local, tmp_path, make_file):
    """dffs ctl tasks on a host with many tasks: each is read from its summary, none is opened."""
    local_tasks = await local()
    for i in range(5):
        make_file(f"f{i}.bin", 1000 + i)
        await local_tasks.import_file(tmp_path / f"f{i}.bin", DownloadRequest(url=f"http://nowhere.invalid/{i}"))
    local_tasks.storage.close()  # as after a restart: nothing open
    infos = await local_tasks.list()
    assert sorted(i.present_bytes for i in infos) == [1000, 1001, 1002, 1003, 1004]
    assert all(i.complete and i.disk_bytes > 0 for i in infos)
    assert local_tasks.storage.open_stores() == {}
