"""Who owns a task's background work, and single flight: in-process, on real storage and a real origin."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from dffs.errors import DffsError, SourceError
from dffs.peertask import Background, DownloadRequest, TaskManager
from dffs.peertask.singleflight import SingleFlight
from dffs.peertask.swarm import NoSwarm, OriginFetcher
from dffs.source import SourceRegistry
from dffs.storage import StorageManager

MiB = 1024 * 1024


async def test_a_failing_background_job_is_logged_and_ends_alone(caplog):
    async with trio.open_nursery() as owner:
        background = await Background.open(owner, "t1")
        survivor_ran = trio.Event()

        async def broken():
            raise ValueError("a bug met by one job")

        async def failing():
            raise SourceError("origin said no")

        async def survivor():
            await trio.sleep(0)
            survivor_ran.set()

        with caplog.at_level(logging.INFO, logger="dffs.peertask.background"):
            background.start_soon(broken)
            background.start_soon(failing)
            background.start_soon(survivor)
            await survivor_ran.wait()
            await trio.testing.wait_all_tasks_blocked()
        assert "event=background_job_crashed" in caplog.text and "a bug met by one job" in caplog.text
        assert "event=background_job_failed" in caplog.text and "origin said no" in caplog.text
        background.cancel()


async def test_cancelling_a_background_ends_its_jobs_and_refuses_new_ones():
    async with trio.open_nursery() as owner:
        background = await Background.open(owner, "t2")
        ended = trio.Event()

        async def forever():
            try:
                await trio.sleep_forever()
            finally:
                ended.set()

        background.start_soon(forever)
        await trio.testing.wait_all_tasks_blocked()
        background.cancel()
        await ended.wait()
        late = []
        background.start_soon(lambda: late.append(1))  # type: ignore[arg-type,return-value]
        await trio.testing.wait_all_tasks_blocked()
        assert late == [] and background.cancelled


async def test_a_start_that_fails_before_started_raises_to_the_caller():
    async with trio.open_nursery() as owner:
        background = await Background.open(owner, "t3")

        async def refuses(*, task_status):
            raise DffsError("cannot begin")

        with pytest.raises(DffsError, match="cannot begin"):
            await background.start(refuses)
        background.cancel()


async def test_single_flight_shares_one_run_and_its_error():
    flights: SingleFlight[int] = SingleFlight()
    runs = 0
    done = False

    async def job():
        nonlocal runs
        runs += 1
        await trio.sleep(0.01)
        raise SourceError("boom")

    errors = []

    async def caller():
        try:
            await flights.run(1, job, done=lambda: done)
        except SourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(caller)
    assert runs == 1 and len(errors) == 5 and all(e is errors[0] for e in errors)


async def test_a_cancelled_runner_hands_the_flight_to_a_waiter():
    flights: SingleFlight[str] = SingleFlight()
    finished = []
    gate = trio.Event()

    async def slow_job():
        await gate.wait()
        finished.append("slow")

    async def quick_job():
        finished.append("quick")

    runner_scope = trio.CancelScope()

    async def runner():
        with runner_scope:
            await flights.run("k", slow_job, done=lambda: bool(finished))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(lambda: flights.run("k", quick_job, done=lambda: bool(finished)))
        await trio.testing.wait_all_tasks_blocked()
        runner_scope.cancel()
    # The waiter was not cancelled with the runner: it woke and ran the job itself.
    assert finished == ["quick"]


async def test_forgetting_a_task_cancels_its_background_work(tmp_path, make_file, nginx_origin):
    root = tmp_path / "www"
    make_file(root / "f.bin", 2 * MiB, seed=3)
    origin = nginx_origin(root)
    storage = StorageManager(tmp_path / "data")
    sources = SourceRegistry()
    try:
        async with TaskManager(storage, sources) as tasks:
            request = DownloadRequest(url=origin.url("/f.bin"))
            task = await tasks.open(request)
            stopped = trio.Event()

            async def watch_forever():
                try:
                    await trio.sleep_forever()
                finally:
                    stopped.set()

            task.background.start_soon(watch_forever)
            await trio.testing.wait_all_tasks_blocked()
            tasks.forget(request.task_id)
            await stopped.wait()
            assert tasks.active(request.task_id) is None
            again = await tasks.open(request)
            assert again is not task and not again.background.cancelled

            deleted = trio.Event()

            async def until_deleted():
                try:
                    await trio.sleep_forever()
                finally:
                    deleted.set()

            again.background.start_soon(until_deleted)
            await trio.testing.wait_all_tasks_blocked()
            await tasks.delete(request.task_id)
            await deleted.wait()
            assert storage.open_task(request.task_id) is None
    finally:
        storage.close()
        await sources.aclose()


async def test_leaving_the_task_manager_ends_every_tasks_work(tmp_path, make_file, nginx_origin):
    root = tmp_path / "www"
    make_file(root / "g.bin", 1 * MiB, seed=4)
    origin = nginx_origin(root)
    storage = StorageManager(tmp_path / "data")
    sources = SourceRegistry()
    stopped = trio.Event()
    try:
        async with TaskManager(storage, sources) as tasks:
            task = await tasks.open(DownloadRequest(url=origin.url("/g.bin")))

            async def forever():
                try:
                    await trio.sleep_forever()
                finally:
                    stopped.set()

            task.background.start_soon(forever)
            await trio.testing.wait_all_tasks_blocked()
        assert stopped.is_set()
        with pytest.raises(RuntimeError, match="outside"):
            await tasks.open(DownloadRequest(url=origin.url("/g.bin")))
    finally:
        storage.close()
        await sources.aclose()


class _SlowReports(OriginFetcher):
    """Stands in for a P2P fetcher whose reports to the scheduler are slow (no scheduler here: only the
    order of reports against completion is under test). Piece 0's report is held until every other
    piece has been stored and reported, after piece 0 itself is on disk."""

    def __init__(self, events: list[str]):
        self.events = events
        self.zero_stored = trio.Event()
        self.others_reported = trio.Event()
        self.pieces = 0

    async def stored(self, task, number: int, origin: bool, seconds: float) -> None:
        self.pieces = task.store.meta.piece_count
        if number == 0:
            self.zero_stored.set()
            await self.others_reported.wait()
            await trio.testing.wait_all_tasks_blocked()  # a waiter on completion has had its chance
        else:
            await self.zero_stored.wait()
        self.events.append(f"piece {number}")
        if sum(e.startswith("piece") for e in self.events) == self.pieces - 1 and number != 0:
            self.others_reported.set()


class _SlowReportSwarm(NoSwarm):
    def __init__(self, fetcher: _SlowReports):
        self._fetcher = fetcher

    def fetcher(self, request: DownloadRequest) -> OriginFetcher:
        return self._fetcher


async def test_a_task_is_complete_only_once_every_pieces_report_is_out(tmp_path, make_file, nginx_origin):
    """A "peer finished" is sent when the task is complete; the scheduler refuses piece reports after it
    (and anchors no digest from them), so a piece stored early but reported late must hold completion."""
    root = tmp_path / "www"
    make_file(root / "r.bin", 3 * 4 * MiB + 5, seed=7)
    origin = nginx_origin(root)
    storage = StorageManager(tmp_path / "data")
    sources = SourceRegistry()
    events: list[str] = []
    fetcher = _SlowReports(events)
    try:
        async with TaskManager(storage, sources, swarm=_SlowReportSwarm(fetcher)) as tasks:
            task = await tasks.open(DownloadRequest(url=origin.url("/r.bin")))
            assert task.store.meta.piece_count >= 3

            async def finished() -> None:
                await task.wait_complete()
                events.append("finished")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(finished)
                await task.fetch_all(concurrency=task.store.meta.piece_count)
        assert events[-1] == "finished" and events.count("finished") == 1, events
        assert sorted(events[:-1]) == sorted(f"piece {n}" for n in range(fetcher.pieces)), events
    finally:
        storage.close()
        await sources.aclose()
