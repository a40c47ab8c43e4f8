"""Run the manager: migrate the database, bind gRPC and HTTP, print the
addresses, expire silent members, serve until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import grpc

from dffs.aioserver import run_until_signal
from dffs.api import manager_pb2_grpc
from dffs.errors import DffsError
from dffs.manager import db
from dffs.manager.config import ManagerConfig
from dffs.manager.http import Api, HttpApiServer
from dffs.manager.jobs import JobStore
from dffs.manager.preheat import PreheatExecutor
from dffs.manager.service import ManagerService
from dffs.manager.store import Store
from dffs.manager.tokens import ApiTokens
from dffs.oci.registry import RegistryClient
from dffs.rpc.bridge import server_options
from dffs.security.ca import Identity
from dffs.security.setup import host_of, make_transport
from dffs.security.transport import Transport

log = logging.getLogger("dffs.manager")

STOP_GRACE = 0.5


async def expire_loop(store: Store, interval: float) -> None:
    """Marks members whose keepalive is older than the TTL inactive, forever."""
    while True:
        try:
            count = await asyncio.to_thread(store.expire)
            if count:
                log.info("event=members_expired count=%d", count)
        except db.DatabaseUnavailable as exc:
            log.warning("event=expire_failed error=%r", str(exc))
        await asyncio.sleep(interval)


def manager_transport(config: ManagerConfig) -> Transport:
    """Mutual TLS from the cluster key (or --insecure): see dffs/security/setup.py."""
    host = host_of(config.listen)
    return make_transport(
        "manager",
        Identity("manager", config.listen),
        cluster_key=config.cluster_key,
        insecure_ok=config.insecure,
        data_dir=Path(config.data_dir),
        addresses=[config.listen],
        cert_addresses=(host,) if host and host not in ("0.0.0.0", "::") else (),
    )


async def serve(
    config: ManagerConfig,
    stop: asyncio.Event,
    *,
    transport: Transport,
    ready: Callable[[str, int, str, int | None], None] | None = None,
) -> None:
    engine = db.create_engine(config.db, connect_timeout=config.db_connect_timeout)
    try:
        revision = await asyncio.to_thread(db.migrate, engine)
        log.info("event=schema_ready revision=%s", revision)
        store = Store(engine, keepalive_ttl=config.keepalive_ttl)
        jobs = JobStore(engine)
        tokens = ApiTokens(engine)
        first_token = await asyncio.to_thread(tokens.ensure_first)
        if first_token is not None:
            # Printed once: only its SHA-256 is kept.
            print(f"dffs manager: HTTP API token (shown once, keep it): {first_token}", flush=True)
        service = ManagerService(store, jobs)
        server = grpc.aio.server(options=server_options())
        manager_pb2_grpc.add_ManagerServicer_to_server(service, server)
        try:
            port = transport.add_port(server, config.listen)
        except RuntimeError as exc:
            raise DffsError(f"manager cannot listen on {config.listen}: {exc}") from None
        http = HttpApiServer(config.http_listen, Api(store, jobs), tokens) if config.http_listen else None
        await server.start()
        if http is not None:
            http.start()
        interval = config.expire_interval or max(config.keepalive_ttl / 3, 0.05)
        expirer = asyncio.create_task(expire_loop(store, interval))
        executor = asyncio.create_task(
            PreheatExecutor(
                store,
                jobs,
                transport,
                poll_interval=config.job_poll_interval,
                download_timeout=config.preheat_timeout,
                registry=RegistryClient(timeout=config.registry_timeout),
            ).run(),
            name="preheat-executor",
        )
        try:
            log.info("event=listening address=%s port=%d", config.listen, port)
            if ready is not None:
                ready(config.listen, port, config.http_listen, http.port if http else None)
            await stop.wait()
            log.info("event=stopping")
        finally:
            service.stopping = True
            for background in (expirer, executor):
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
            await server.stop(STOP_GRACE)
            if http is not None:
                await asyncio.to_thread(http.close)
    finally:
        engine.dispose()


def _print_ready(address: str, port: int, http_address: str, http_port: int | None) -> None:
    print(f"dffs manager: listening on {address.rpartition(':')[0]}:{port} (port {port})", flush=True)
    if http_port is not None:
        host = http_address.rpartition(":")[0]
        print(f"dffs manager: http api on http://{host}:{http_port}/api/v1 (port {http_port})", flush=True)


def run(config: ManagerConfig) -> int:
    """The ``dffs manager`` process: serve until SIGINT or SIGTERM, then exit 0."""
    transport = manager_transport(config)
    return run_until_signal(lambda stop: serve(config, stop, transport=transport, ready=_print_ready))
