"""The gRPC Manager service (``dffs.manager.Manager``) over the store.

Database calls run on worker threads (``asyncio.to_thread``), so a slow
database never blocks the event loop.  Errors map to gRPC statuses:
bad input INVALID_ARGUMENT, unknown member/job NOT_FOUND, database down
UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import empty_pb2

from dffs.api import common_pb2, manager_pb2_grpc
from dffs.api import manager_pb2 as pb
from dffs.errors import DffsError
from dffs.manager import jobs as jobs_module
from dffs.manager.config_keys import CLIENT_KEYS, SCHEDULER_KEYS
from dffs.manager.db import DatabaseUnavailable
from dffs.manager.job_names import SCOPE_FROM_PB, SCOPE_TO_PB, STATE_FROM_PB, STATE_TO_PB
from dffs.manager.jobs import JobStore
from dffs.manager.store import DEFAULT_CLUSTER_ID, SCHEDULER, SEED_PEER, NotFound, Store
from dffs.rpc.status import abort_aio

log = logging.getLogger("dffs.manager")


def _kind(source_type: int) -> str:
    return SCHEDULER if source_type == pb.SOURCE_TYPE_SCHEDULER else SEED_PEER


def seed_peer_pb(row: dict[str, Any]) -> pb.SeedPeer:
    return pb.SeedPeer(
        id=row["id"],
        hostname=row["hostname"],
        type=row["type"],
        ip=row["ip"],
        port=row["port"],
        download_port=row["download_port"],
        idc=row["idc"],
        location=row["location"],
        state=row["state"],
        cluster_id=row["cluster_id"],
    )


def scheduler_pb(row: dict[str, Any], seed_peers: Sequence[dict[str, Any]] = ()) -> pb.Scheduler:
    return pb.Scheduler(
        id=row["id"],
        hostname=row["hostname"],
        ip=row["ip"],
        port=row["port"],
        idc=row["idc"],
        location=row["location"],
        state=row["state"],
        cluster_id=row["cluster_id"],
        seed_peers=[seed_peer_pb(s) for s in seed_peers if s["cluster_id"] == row["cluster_id"]],
    )


def cluster_config_pb(cluster: dict[str, Any]) -> pb.ClusterConfig:
    config = cluster.get("config") or {}
    return pb.ClusterConfig(
        cluster_id=cluster["id"],
        name=cluster["name"],
        scheduler_config_json=json.dumps({k: v for k, v in config.items() if k in SCHEDULER_KEYS}, sort_keys=True),
        client_config_json=json.dumps({k: v for k, v in config.items() if k in CLIENT_KEYS}, sort_keys=True),
        idcs=config.get("idcs") or [],
        location=config.get("location") or "",
        cidrs=config.get("cidrs") or [],
    )


def _result_task(result: dict[str, Any]) -> common_pb2.Task:
    task = common_pb2.Task(id=str(result.get("task_id", "")), url=str(result["url"]))
    if isinstance(result.get("content_length"), int):
        task.content_length = result["content_length"]
    return task


def job_pb(job: dict[str, Any]) -> pb.Job:
    args = job["args"]
    preheat = pb.PreheatArgs(
        type=pb.PREHEAT_TYPE_IMAGE if all(u.startswith("oci://") for u in args["urls"]) else pb.PREHEAT_TYPE_FILE,
        urls=args["urls"],
        headers=args.get("headers") or {},
        platform=args.get("platform", ""),
    )
    for key in ("tag", "application", "piece_length"):
        if key in args:
            setattr(preheat, key, args[key])
    preheat.recursive = bool(args.get("recursive"))
    message = pb.Job(
        id=job["id"],
        type=pb.JOB_TYPE_PREHEAT,
        state=STATE_TO_PB[job["state"]],
        scope=SCOPE_TO_PB[job["scope"]],
        cluster_ids=job["cluster_ids"],
        preheat=preheat,
        description=job.get("description") or "",
        results=[
            pb.JobResult(
                hostname=str(r.get("hostname", "")),
                ip=str(r.get("ip", "")),
                host_id=str(r.get("host_id", "")),
                success=bool(r.get("success", False)),
                description=str(r.get("reason") or r.get("description") or ""),
                tasks=[_result_task(r)] if r.get("url") else [],
            )
            for r in job.get("results") or []
            if isinstance(r, dict)
        ],
    )
    message.created_at.FromNanoseconds(int(job["created_at"] * 1e9))
    message.updated_at.FromNanoseconds(int(job["updated_at"] * 1e9))
    return message


class ManagerService(manager_pb2_grpc.ManagerServicer):
    def __init__(self, store: Store, jobs: JobStore) -> None:
        self.store = store
        self.jobs = jobs
        #: Set while the server shuts down: streams cut by our own shutdown do
        #: not mark their members inactive, so a manager restart keeps membership.
        self.stopping = False

    async def _call(self, context: grpc.aio.ServicerContext, fn, *args, **kwargs):
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except DffsError as exc:  # each knows its status (dffs.rpc.status)
            if isinstance(exc, DatabaseUnavailable):
                log.warning("event=database_unavailable error=%r", str(exc))
            await abort_aio(context, exc)

    async def ListSchedulers(self, request, context):
        rows = await self._call(
            context, self.store.ranked_schedulers, idc=request.idc, location=request.location, ip=request.ip
        )
        seeds = await self._call(context, self.store.list_members, SEED_PEER, active_only=True)
        return pb.ListSchedulersResponse(schedulers=[scheduler_pb(r, seeds) for r in rows])

    async def GetScheduler(self, request, context):
        row = await self._call(
            context, self.store.get_member, SCHEDULER, request.hostname, request.ip, request.cluster_id
        )
        seeds = await self._call(
            context, self.store.list_members, SEED_PEER, active_only=True, cluster_id=row["cluster_id"]
        )
        return scheduler_pb(row, seeds)

    async def _register(self, context, kind, request, **extra):
        """Register or refresh a member (scheduler or seed peer) and log it."""
        row = await self._call(
            context,
            self.store.register,
            kind,
            hostname=request.hostname,
            ip=request.ip,
            port=request.port,
            cluster_id=request.cluster_id,
            idc=request.idc,
            location=request.location,
            **extra,
        )
        log.info(
            "event=%s_registered hostname=%s ip=%s port=%d cluster=%d",
            "scheduler" if kind == SCHEDULER else "seed_peer",
            row["hostname"],
            row["ip"],
            row["port"],
            row["cluster_id"],
        )
        return row

    async def UpdateScheduler(self, request, context):
        return scheduler_pb(await self._register(context, SCHEDULER, request))

    async def ListSeedPeers(self, request, context):
        rows = await self._call(
            context, self.store.list_members, SEED_PEER, active_only=True, cluster_id=request.cluster_id
        )
        return pb.ListSeedPeersResponse(seed_peers=[seed_peer_pb(r) for r in rows])

    async def UpdateSeedPeer(self, request, context):
        row = await self._register(context, SEED_PEER, request, download_port=request.download_port, type=request.type)
        return seed_peer_pb(row)

    async def DeleteSeedPeer(self, request, context):
        if not await self._call(
            context, self.store.delete, SEED_PEER, request.hostname, request.ip, request.cluster_id
        ):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no seed peer {request.hostname} ({request.ip})")
        return empty_pb2.Empty()

    async def KeepAlive(self, request_iterator, context):
        member: tuple | None = None
        ended_by_client = False
        try:
            async for request in request_iterator:
                kind = _kind(request.source_type)
                key = (kind, request.hostname, request.ip, request.cluster_id)
                if not await self._call(context, self.store.keepalive, *key):
                    await context.abort(
                        grpc.StatusCode.NOT_FOUND,
                        f"{kind.replace('_', ' ')} {request.hostname} ({request.ip}) is not registered:"
                        " call UpdateScheduler/UpdateSeedPeer first",
                    )
                if member is None:
                    log.info("event=keepalive_started kind=%s hostname=%s ip=%s", *key[:3])
                member = key
            ended_by_client = True
        except asyncio.CancelledError:
            ended_by_client = not self.stopping
            raise
        finally:
            # During our own shutdown the stream ends (or is cancelled) without
            # the member having gone: leave it to the TTL.
            if member is not None and ended_by_client and not self.stopping:
                log.info("event=keepalive_ended kind=%s hostname=%s ip=%s", *member[:3])
                try:
                    await asyncio.shield(asyncio.to_thread(self.store.mark_inactive, *member))
                except (DatabaseUnavailable, asyncio.CancelledError):
                    pass  # the TTL sweep marks it later
        return empty_pb2.Empty()

    async def GetClusterConfig(self, request, context):
        cluster_id = request.cluster_id
        if not cluster_id and request.hostname:
            # The caller's own cluster when it is a member, else the default one.
            kind = _kind(request.source_type)
            try:
                member = await asyncio.to_thread(self.store.get_member, kind, request.hostname, request.ip)
                cluster_id = member["cluster_id"]
            except NotFound:
                pass
            except DatabaseUnavailable as exc:
                await abort_aio(context, exc)
        cluster = await self._call(context, self.store.get_cluster, cluster_id or DEFAULT_CLUSTER_ID)
        return cluster_config_pb(cluster)

    async def CreateJob(self, request, context):
        if request.type != pb.JOB_TYPE_PREHEAT or request.WhichOneof("args") != "preheat":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "only preheat jobs (with preheat args) are supported")
        args = request.preheat
        spec: dict[str, Any] = {
            "type": "preheat",
            "urls": list(args.urls),
            "scope": SCOPE_FROM_PB.get(request.scope, "seed"),
            "cluster_ids": list(request.cluster_ids),
        }
        if args.headers:
            spec["headers"] = dict(args.headers)
        if args.platform:
            spec["platform"] = args.platform
        if args.recursive:
            spec["recursive"] = True
        for key in ("tag", "application", "piece_length"):
            if args.HasField(key):
                spec[key] = getattr(args, key)
        job = await self._call(context, self.jobs.create, spec)
        log.info("event=job_created job=%d type=preheat urls=%d scope=%s", job["id"], len(spec["urls"]), job["scope"])
        return job_pb(job)

    async def GetJob(self, request, context):
        return job_pb(await self._call(context, self.jobs.get, request.id))

    async def ListJobs(self, request, context):
        state = None
        if request.HasField("state"):
            state = STATE_FROM_PB.get(request.state)
            if state is None:  # proto3 enums are open: any number arrives
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown job state {request.state}")
        if request.HasField("type") and request.type != pb.JOB_TYPE_PREHEAT:
            return pb.ListJobsResponse()
        rows = await self._call(
            context, self.jobs.list, state=state, limit=min(request.limit or jobs_module.DEFAULT_LIMIT, 1000)
        )
        return pb.ListJobsResponse(jobs=[job_pb(j) for j in rows])
