"""Run the scheduler service: bind, print the address, serve until told to stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import grpc

from dffs.aioserver import run_until_signal
from dffs.errors import DffsError
from dffs.rpc.bridge import channel_options, is_unix_address, server_options
from dffs.scheduler.config import SchedulerConfig
from dffs.scheduler.core import SchedulerCore
from dffs.scheduler.membership import ManagerMembership
from dffs.scheduler.service import SchedulerService, add_to_server
from dffs.scheduler.trigger import GrpcSeedTrigger, SeedTrigger
from dffs.security.ca import Identity
from dffs.security.setup import host_of, make_transport
from dffs.security.transport import Transport

log = logging.getLogger("dffs.scheduler")

#: Seconds in-flight calls get to finish when the server stops; streams are
#: long-lived, so they are cut after this.
STOP_GRACE = 0.5


def scheduler_transport(config: SchedulerConfig) -> Transport:
    """Mutual TLS from the cluster key (or --insecure): see dffs/security/setup.py."""
    advertise = config.advertise_ip or host_of(config.listen)
    return make_transport(
        "scheduler",
        Identity("scheduler", config.advertise_ip or config.listen),
        cluster_key=config.cluster_key,
        insecure_ok=config.insecure,
        data_dir=Path(config.data_dir),
        addresses=[config.listen, *([config.manager] if config.manager else [])],
        cert_addresses=(advertise,) if advertise and advertise not in ("0.0.0.0", "::") else (),
    )


async def serve(
    config: SchedulerConfig,
    stop: asyncio.Event,
    *,
    transport: Transport,
    seed_trigger: SeedTrigger | None = None,
    ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve until ``stop`` is set.  ``ready(address, port)`` runs once bound."""
    core = SchedulerCore(config)
    if seed_trigger is None:
        seed_trigger = GrpcSeedTrigger(
            transport,
            accept_timeout=config.seed_trigger_timeout,
            channel_options=channel_options(config.max_message_bytes),
        )
    service = SchedulerService(core, transport, seed_trigger=seed_trigger)
    server = grpc.aio.server(options=server_options(config.max_message_bytes))
    add_to_server(service, server)
    try:
        port = transport.add_port(server, config.listen)
    except RuntimeError as exc:
        raise DffsError(f"scheduler cannot listen on {config.listen}: {exc}") from None
    await server.start()
    service.start()
    metrics_server = None
    membership = None
    if config.manager:
        membership = asyncio.create_task(
            ManagerMembership(core, config, port, transport, on_change=service.notify_all).run(),
            name="manager-membership",
        )
    try:
        log.info("event=listening address=%s port=%d", config.listen, port)
        if ready is not None:
            ready(config.listen, port)
        metrics_server = await _start_metrics(config, core)
        await stop.wait()
        log.info("event=stopping")
    finally:
        if membership is not None:
            membership.cancel()
            await asyncio.gather(membership, return_exceptions=True)
        await server.stop(STOP_GRACE)
        await service.aclose()
        if metrics_server is not None:
            metrics_server.close()


async def _start_metrics(config: SchedulerConfig, core: SchedulerCore):
    """Prometheus text and /healthy on ``metrics_port`` (a busy port is logged, not fatal)."""
    if config.metrics_port < 0:
        return None
    from dffs.metrics import SCHEDULER
    from dffs.metrics import scheduler as metrics
    from dffs.metrics.server import start_asyncio

    graph = core.graph
    metrics.hosts.set_function(lambda: len(graph.hosts))
    metrics.tasks.set_function(lambda: len(graph.tasks))
    metrics.peers.set_function(lambda: len(graph.peers))
    host = "127.0.0.1" if is_unix_address(config.listen) else config.listen.rpartition(":")[0].strip("[]")
    try:
        server, port = await start_asyncio(host, config.metrics_port, SCHEDULER)
    except OSError as exc:
        log.warning("event=metrics_unavailable port=%d error=%s", config.metrics_port, exc.strerror)
        return None
    print(f"dffs scheduler: metrics on http://{host}:{port}/metrics (port {port})", flush=True)
    return server


def _print_ready(address: str, port: int) -> None:
    if is_unix_address(address):
        print(f"dffs scheduler: listening on {address}", flush=True)
    else:
        print(f"dffs scheduler: listening on {address.rpartition(':')[0]}:{port} (port {port})", flush=True)


def run(config: SchedulerConfig) -> int:
    """The ``dffs scheduler`` process: serve until SIGINT or SIGTERM, then exit 0."""
    transport = scheduler_transport(config)
    return run_until_signal(lambda stop: serve(config, stop, transport=transport, ready=_print_ready))
