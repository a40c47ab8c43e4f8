"""Running preheat jobs.

A job is claimed (pending → running, atomically, so two managers on one
PostgreSQL never run it twice), its URLs expanded (``oci://`` references
become the image's config and layer blob URLs, with the registry's bearer
token), its hosts chosen by scope, and each host asked to download each URL
through ``DfdaemonUpload.DownloadTask``: a seed then holds the task and
serves it to every peer the scheduler sends to it. Results are stored per URL
and host as they arrive; the job ends succeeded when every download did.

A recursive job's directory URLs are walked here, through their listings
(:mod:`dffs.source.tree`), into one download per file.

Scopes: ``seed`` picks one active seed peer per cluster for each URL
(rendezvous hashing on the URL, so a job's URLs spread over the seeds and a
rerun goes to the same seed); ``all-seeds`` is every active seed peer;
``all`` adds every sharing host the cluster's active schedulers know
(``Scheduler.ListHosts``).

Jobs left running by a manager that stopped are run again when it starts
(downloads are idempotent: a host that has the task answers at once).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import attrs
import grpc
import trio
from google.protobuf import empty_pb2

from dffs.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2_grpc
from dffs.errors import DffsError
from dffs.manager import db
from dffs.manager.jobs import FAILED, PENDING, RUNNING, SUCCEEDED, JobStore
from dffs.manager.store import SCHEDULER, SEED_PEER, Store
from dffs.oci.reference import ImageReference
from dffs.oci.registry import RegistryClient
from dffs.rpc.bridge import channel_options
from dffs.security.transport import Transport
from dffs.source import SourceRegistry
from dffs.source.tree import walk

log = logging.getLogger("dffs.manager")


@attrs.frozen
class Target:
    hostname: str
    ip: str
    port: int
    cluster_id: int = 0
    host_id: str = ""

    @property
    def address(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@attrs.frozen
class Download:
    url: str
    headers: dict[str, str] = attrs.Factory(dict)
    #: The oci:// reference this blob belongs to, if any.
    image: str = ""


async def _list_tree(url: str, headers: dict[str, str], max_files: int) -> list[str]:
    """The URL of every file below directory ``url``, from its listings (on a trio run of its own:
    dffs's sources are trio code and the manager is asyncio)."""
    sources = SourceRegistry()
    try:
        return [f.url async for f in walk(sources.for_url(url), url, headers=headers, max_entries=max_files)]
    finally:
        await sources.aclose()


def choose_seed(url: str, seeds: list[Target]) -> Target:
    """One seed for ``url``, the same every time for the same set of seeds."""
    return max(seeds, key=lambda s: hashlib.sha256(f"{url}|{s.address}".encode()).digest())


def plan(
    downloads: list[Download], scope: str, seeds: list[Target], hosts: list[Target]
) -> list[tuple[Download, Target]]:
    """Which host downloads which URL (pure)."""
    if scope == "seed":
        by_cluster: dict[int, list[Target]] = {}
        for seed in seeds:
            by_cluster.setdefault(seed.cluster_id, []).append(seed)
        return [(d, choose_seed(d.url, group)) for d in downloads for group in by_cluster.values()]
    targets = list(seeds)
    if scope == "all":
        known = {t.address for t in targets}
        targets += [h for h in hosts if h.address not in known]
    return [(d, t) for d in downloads for t in targets]


def summarize(results: list[dict[str, Any]]) -> tuple[str, str]:
    """(final state, description) of a job from its results."""
    failed = [r for r in results if not r.get("success")]
    if not failed:
        return SUCCEEDED, f"{len(results)} downloads succeeded"
    return FAILED, f"{len(failed)} of {len(results)} downloads failed; first: {failed[0].get('reason', '')}"


class PreheatExecutor:
    def __init__(
        self,
        store: Store,
        jobs: JobStore,
        transport: Transport,
        *,
        poll_interval: float = 1.0,
        download_timeout: float = 3600.0,
        max_jobs: int = 4,
        max_downloads: int = 8,
        registry: RegistryClient | None = None,
        max_tree_files: int = 100_000,
    ):
        #: Mutual TLS as the manager, to schedulers (ListHosts) and to hosts (DownloadTask).
        self.transport = transport
        self.store = store
        self.jobs = jobs
        self.poll_interval = poll_interval
        self.download_timeout = download_timeout
        self.registry = registry or RegistryClient()
        #: Most files one recursive URL may expand to (a bigger tree fails the job, naming the bound).
        self.max_tree_files = max_tree_files
        self._job_slots = asyncio.Semaphore(max_jobs)
        self._download_slots = asyncio.Semaphore(max_downloads)
        self._running: set[asyncio.Task] = set()

    async def run(self) -> None:
        """Forever: claim pending jobs (and, once, those a previous manager left running) and run them."""
        resume = True
        try:
            while True:
                try:
                    for job in await self._claim_jobs(resume):
                        task = asyncio.create_task(self._execute(job), name=f"preheat-{job['id']}")
                        self._running.add(task)
                        task.add_done_callback(self._running.discard)
                    resume = False
                except db.DatabaseUnavailable as exc:
                    log.warning("event=jobs_poll_failed error=%r", str(exc))
                await asyncio.sleep(self.poll_interval)
        finally:
            for task in self._running:
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _claim_jobs(self, resume: bool) -> list[dict[str, Any]]:
        claimed = []
        states = [PENDING, RUNNING] if resume else [PENDING]
        for state in states:
            for job in reversed(await asyncio.to_thread(self.jobs.list, state=state, job_type="preheat")):
                if state == RUNNING or await asyncio.to_thread(self.jobs.claim, job["id"]):
                    if state == RUNNING:
                        log.info("event=job_resumed job=%d", job["id"])
                    claimed.append(job)
        return claimed

    async def _execute(self, job: dict[str, Any]) -> None:
        async with self._job_slots:
            job_id = job["id"]
            log.info("event=job_started job=%d urls=%d scope=%s", job_id, len(job["args"]["urls"]), job["scope"])
            try:
                state, description, results = await self._run_job(job)
            except Exception as exc:  # noqa: BLE001 - a bug must fail the job, not the manager
                log.exception("event=job_crashed job=%d", job_id)
                state, description, results = FAILED, f"internal error: {type(exc).__name__}: {exc}", None
            await self._finish(job_id, state, description, results)

    async def _finish(self, job_id: int, state: str, description: str, results) -> None:
        for delay in (0, 1, 2, 5, 10, 30):  # the database may be down for a moment
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(self.jobs.update, job_id, state, results, description)
                log.info("event=job_finished job=%d state=%s description=%r", job_id, state, description)
                return
            except db.DatabaseUnavailable as exc:
                log.warning("event=job_update_failed job=%d error=%r", job_id, str(exc))
        log.error("event=job_update_abandoned job=%d detail='runs again when the manager restarts'", job_id)

    async def _run_job(self, job: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]] | None]:
        args = job["args"]
        try:
            downloads = await self._expand(args)
        except DffsError as exc:
            return FAILED, str(exc), []
        seeds, hosts = await self._targets(job)
        pairs = plan(downloads, job["scope"], seeds, hosts)
        if not pairs:
            clusters = ",".join(map(str, job["cluster_ids"])) or "any"
            return (
                FAILED,
                f"no active seed peer{'s or hosts' if job['scope'] == 'all' else ''} in cluster {clusters}",
                [],
            )
        results: list[dict[str, Any]] = []

        async def one(download: Download, target: Target) -> None:
            async with self._download_slots:
                result = await self._download(download, target, args)
            results.append(result)
            try:
                await asyncio.to_thread(self.jobs.update, job["id"], RUNNING, list(results))
            except db.DatabaseUnavailable:
                pass  # progress only; the final update retries

        await asyncio.gather(*(one(d, t) for d, t in pairs))
        state, description = summarize(results)
        return state, description, results

    async def _expand(self, args: dict[str, Any]) -> list[Download]:
        headers = dict(args.get("headers") or {})
        downloads: list[Download] = []
        for url in args["urls"]:
            if args.get("recursive") and not url.startswith("oci://"):
                files = await asyncio.to_thread(trio.run, _list_tree, url, headers, self.max_tree_files)
                log.info("event=tree_listed url=%s files=%d", url, len(files))
                downloads += [Download(f, headers) for f in files]
                continue
            if not url.startswith("oci://"):
                downloads.append(Download(url, headers))
                continue
            ref = ImageReference.parse(url)
            image = await asyncio.to_thread(
                self.registry.resolve, ref, platform=args.get("platform", ""), headers=headers
            )
            log.info("event=image_resolved image=%s manifest=%s blobs=%d", ref, image.manifest_digest, len(image.blobs))
            downloads += [Download(u, dict(image.headers), image=str(ref)) for u in image.blob_urls]
        return downloads

    async def _targets(self, job: dict[str, Any]) -> tuple[list[Target], list[Target]]:
        clusters = set(job["cluster_ids"])

        def members(kind: str) -> list[dict[str, Any]]:
            rows = self.store.list_members(kind, active_only=True)
            return [r for r in rows if not clusters or r["cluster_id"] in clusters]

        seeds = [
            Target(r["hostname"], r["ip"], r["port"], r["cluster_id"])
            for r in await asyncio.to_thread(members, SEED_PEER)
        ]
        hosts: list[Target] = []
        if job["scope"] == "all":
            for scheduler in await asyncio.to_thread(members, SCHEDULER):
                hosts += await self._scheduler_hosts(
                    Target(scheduler["hostname"], scheduler["ip"], scheduler["port"], scheduler["cluster_id"])
                )
        return seeds, hosts

    async def _scheduler_hosts(self, scheduler: Target) -> list[Target]:
        try:
            async with self.transport.aio_channel(scheduler.address, options=channel_options()) as channel:
                answer = await scheduler_pb2_grpc.SchedulerStub(channel).ListHosts(empty_pb2.Empty(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            log.warning("event=list_hosts_failed scheduler=%s code=%s", scheduler.address, exc.code().name)
            return []
        return [
            Target(h.hostname, h.ip, h.port, scheduler.cluster_id, h.id)
            for h in answer.hosts
            if not h.disable_shared and h.port > 0
        ]

    async def _download(self, download: Download, target: Target, args: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {
            "url": download.url,
            "hostname": target.hostname,
            "ip": target.ip,
            "host_id": target.host_id,
            "success": False,
            "reason": "",
        }
        if download.image:
            result["image"] = download.image
        request = dfdaemon_pb2.DownloadTaskRequest(
            download=common_pb2.Download(
                url=download.url,
                tag=args.get("tag", ""),
                application=args.get("application", ""),
                request_header=download.headers,
            )
        )  # piece length: the standard rule, so task IDs match every reader's
        try:
            async with self.transport.aio_channel(target.address, options=channel_options()) as channel:
                call = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel).DownloadTask(
                    request, timeout=self.download_timeout
                )
                async for response in call:
                    result["task_id"] = response.task_id
                    result["host_id"] = response.host_id or result["host_id"]
                    if response.HasField("download_task_started_response"):
                        result["content_length"] = response.download_task_started_response.content_length
            result["success"] = True
        except grpc.aio.AioRpcError as exc:
            result["reason"] = f"{exc.code().name}: {exc.details()}"
        log.info(
            "event=preheat_download job_url=%s host=%s success=%s reason=%r",
            download.url,
            target.address,
            result["success"],
            result["reason"],
        )
        return result
