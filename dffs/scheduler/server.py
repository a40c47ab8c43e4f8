"""Run the scheduler service: bind, print the address, serve until told to stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from dffs.aioserver import run_until_signal
from dffs.errors import DffsError
from dffs.rpc.bridge import channel_options, is_unix_address, server_options
from dffs.scheduler.config import SchedulerConfig
from dffs.scheduler.core import SchedulerCore
from dffs.scheduler.membership import ManagerMembership
from dffs.scheduler.service import SchedulerService, add_to_server
from dffs.scheduler.trigger import GrpcSeedTrigger, SeedTrigger

log = logging.getLogger("dffs.scheduler")

#: Seconds in-flight calls get to finish when the server stops; streams are
#: long-lived, so they are cut after this.
STOP_GRACE = 0.5


async def serve(
    config: SchedulerConfig,
    stop: asyncio.Event,
    *,
    seed_trigger: SeedTrigger | None = None,
    ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve until ``stop`` is set.  ``ready(address, port)`` runs once bound."""
    core = SchedulerCore(config)
    if seed_trigger is None:
        seed_trigger = GrpcSeedTrigger(
            accept_timeout=config.seed_trigger_timeout, channel_options=channel_options(config.max_message_bytes)
        )
    service = SchedulerService(core, seed_trigger=seed_trigger)
    server = grpc.aio.server(options=server_options(config.max_message_bytes))
    add_to_server(service, server)
    try:
        port = server.add_insecure_port(config.listen)
    except RuntimeError as exc:
        raise DffsError(f"scheduler cannot listen on {config.listen}: {exc}") from None
    await server.start()
    service.start()
    membership = None
    if config.manager:
        membership = asyncio.create_task(
            ManagerMembership(core, config, port, on_change=service.notify_all).run(), name="manager-membership")
    try:
        log.info("event=listening address=%s port=%d", config.listen, port)
        if ready is not None:
            ready(config.listen, port)
        await stop.wait()
        log.info("event=stopping")
    finally:
        if membership is not None:
            membership.cancel()
            await asyncio.gather(membership, return_exceptions=True)
        await server.stop(STOP_GRACE)
        await service.aclose()


def _print_ready(address: str, port: int) -> None:
    if is_unix_address(address):
        print(f"dffs scheduler: listening on {address}", flush=True)
    else:
        print(f"dffs scheduler: listening on {address.rpartition(':')[0]}:{port} (port {port})", flush=True)


def run(config: SchedulerConfig) -> int:
    """The ``dffs scheduler`` process: serve until SIGINT or SIGTERM, then exit 0."""
    return run_until_signal(lambda stop: serve(config, stop, ready=_print_ready))
