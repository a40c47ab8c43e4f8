"""Seed triggers: asking a seed daemon to fetch a task from the origin.

A trigger is any ``async (SeedTriggerRequest) -> None`` that returns once the
seed has *accepted* the download and raises when it cannot be asked or
refuses.  The service runs it in the background after answering the child
(with the seed's placeholder peer as its parent); a failure fails the
placeholder, so the child's next reschedule finds another way.

:class:`GrpcSeedTrigger` is the real one: it calls
``dffs.dfdaemon.DfdaemonUpload/DownloadTask`` (server streaming,
DownloadTaskRequest -> DownloadTaskResponse, the same messages as
DfdaemonDownload.DownloadTask) on the seed's gRPC port, counts the first
response as acceptance and keeps reading the stream in the background until
the seed finishes, so the call does not cancel the seed's download.  The
method must exist on the seed daemon's DfdaemonUpload service; until it does,
the call ends UNIMPLEMENTED and the task falls back to the origin.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from dffs.api import dfdaemon_pb2
from dffs.scheduler.core import SeedTriggerRequest
from dffs.security.transport import Transport

log = logging.getLogger("dffs.scheduler")

SeedTrigger = Callable[[SeedTriggerRequest], Awaitable[None]]

DOWNLOAD_TASK_METHOD = "/dffs.dfdaemon.DfdaemonUpload/DownloadTask"


def seed_target(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class GrpcSeedTrigger:
    def __init__(self, transport: Transport, *, accept_timeout: float = 30.0, channel_options: list | None = None):
        #: Mutual TLS as this scheduler: the seed only takes triggers from schedulers and managers.
        self.transport = transport
        self.accept_timeout = accept_timeout
        self.channel_options = channel_options or []
        self._drains: set[asyncio.Task] = set()

    async def __call__(self, request: SeedTriggerRequest) -> None:
        channel = self.transport.aio_channel(
            seed_target(request.ip, request.port), options=self.channel_options or None
        )
        call = channel.unary_stream(
            DOWNLOAD_TASK_METHOD,
            request_serializer=dfdaemon_pb2.DownloadTaskRequest.SerializeToString,
            response_deserializer=dfdaemon_pb2.DownloadTaskResponse.FromString,
        )(dfdaemon_pb2.DownloadTaskRequest(download=request.download))
        try:
            first = await asyncio.wait_for(call.read(), self.accept_timeout)
            if first is grpc.aio.EOF:
                raise RuntimeError("seed ended DownloadTask without a response")
        except BaseException:
            call.cancel()
            await channel.close()
            raise
        drain = asyncio.create_task(self._drain(request, call, channel))
        self._drains.add(drain)
        drain.add_done_callback(self._drains.discard)

    async def _drain(self, request: SeedTriggerRequest, call, channel) -> None:
        try:
            while (await call.read()) is not grpc.aio.EOF:
                pass
            log.info("event=seed_download_done task=%s seed_host=%s", request.task_id, request.host_id)
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "event=seed_download_failed task=%s seed_host=%s code=%s detail=%r",
                request.task_id,
                request.host_id,
                exc.code().name,
                exc.details(),
            )
        finally:
            await channel.close()

    async def aclose(self) -> None:
        for task in list(self._drains):
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
