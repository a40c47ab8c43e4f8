"""The scheduler's membership in a manager's cluster (``dffs scheduler --manager``).

Registers (UpdateScheduler), keeps a KeepAlive stream flowing, and every
refresh interval reads the cluster's dynamic config and its seed peers.
A manager that goes away is retried with backoff; the scheduler keeps
scheduling with what it last learned, so the manager is never on the data path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import grpc

from dffs.api import manager_pb2, manager_pb2_grpc
from dffs.manager.tunables import scheduler_tunables
from dffs.rpc.bridge import channel_options
from dffs.scheduler.config import SchedulerConfig
from dffs.scheduler.core import SchedulerCore
from dffs.security.transport import Transport

log = logging.getLogger("dffs.scheduler")

#: Seconds each manager call may take.
CALL_TIMEOUT = 5.0
MAX_BACKOFF = 30.0


def advertised_ip(config: SchedulerConfig) -> str:
    """The address told to the manager: ``advertise_ip``, else the listen host unless it is a wildcard."""
    if config.advertise_ip:
        return config.advertise_ip
    host = config.listen.rpartition(":")[0].strip("[]")
    try:
        if not ipaddress.ip_address(host).is_unspecified:
            return host
    except ValueError:
        pass
    log.warning(
        "event=advertise_ip_guessed ip=127.0.0.1 detail='listening on %s; set advertise_ip so daemons on "
        "other hosts can reach this scheduler'",
        config.listen,
    )
    return "127.0.0.1"


class ManagerMembership:
    def __init__(
        self, core: SchedulerCore, config: SchedulerConfig, port: int, transport: Transport, *, on_change=lambda: None
    ):
        assert config.manager
        self.transport = transport
        self.core = core
        self.config = config
        self.port = port
        self.ip = advertised_ip(config)
        #: Called when the config or the seed list changed (wakes waiting scheduling rounds).
        self.on_change = on_change
        self.cluster_id = config.cluster_id
        self._problems: list[str] = []

    def _identity(self) -> dict:
        return {"source_type": manager_pb2.SOURCE_TYPE_SCHEDULER, "hostname": self.config.hostname, "ip": self.ip}

    async def run(self) -> None:
        """Forever: register, keep alive, refresh; reconnect with backoff when the manager is gone."""
        backoff = 1.0
        assert self.config.manager is not None
        async with self.transport.aio_channel(self.config.manager, options=channel_options()) as channel:
            stub = manager_pb2_grpc.ManagerStub(channel)
            while True:
                try:
                    await self._session(stub)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                    detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else exc
                    log.warning(
                        "event=manager_unreachable manager=%s error=%r retry_in=%.0fs",
                        self.config.manager,
                        str(detail),
                        backoff,
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _session(self, stub: manager_pb2_grpc.ManagerStub) -> None:
        me = await stub.UpdateScheduler(
            manager_pb2.UpdateSchedulerRequest(
                **self._identity(),
                port=self.port,
                idc=self.config.idc,
                location=self.config.location,
                cluster_id=self.config.cluster_id,
            ),
            timeout=CALL_TIMEOUT,
        )
        self.cluster_id = me.cluster_id
        log.info(
            "event=manager_registered manager=%s cluster=%d ip=%s port=%d",
            self.config.manager,
            me.cluster_id,
            self.ip,
            self.port,
        )
        call = stub.KeepAlive()
        try:
            while True:
                await call.write(manager_pb2.KeepAliveRequest(**self._identity(), cluster_id=self.cluster_id))
                await self.refresh(stub)
                await asyncio.sleep(self.config.manager_refresh_interval)
        finally:
            call.cancel()

    async def refresh(self, stub: manager_pb2_grpc.ManagerStub) -> None:
        """Read the cluster's config and seed peers; a failure keeps what was learned before."""
        try:
            cluster = await stub.GetClusterConfig(
                manager_pb2.GetClusterConfigRequest(**self._identity(), cluster_id=self.cluster_id),
                timeout=CALL_TIMEOUT,
            )
            seeds = await stub.ListSeedPeers(
                manager_pb2.ListSeedPeersRequest(**self._identity(), cluster_id=self.cluster_id), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("event=manager_refresh_failed code=%s detail=%r", exc.code().name, exc.details())
            return
        tunables, problems = scheduler_tunables(cluster.scheduler_config_json)
        if problems != self._problems:
            for problem in problems:
                log.warning("event=cluster_config_ignored cluster=%d problem=%r", self.cluster_id, problem)
            self._problems = problems
        changed = self.core.apply_tunables(tunables)
        if self.core.learn_seed_peers(list(seeds.seed_peers), self.config.manager_refresh_interval):
            changed = True
        if changed:
            self.on_change()
