"""A daemon's link to the manager (``dffs daemon --manager ADDR``).

* Schedulers: ``ListSchedulers`` (ranked by the manager for this host's IDC,
  location and address) at start and every refresh interval; the daemon's
  scheduler client follows the list. An unreachable manager keeps the last list.
* Dynamic config: the cluster's client config (upload limit, GC thresholds,
  ...) is read on the same schedule and handed to ``apply``.
* A seed daemon is a member: ``UpdateSeedPeer`` then a ``KeepAlive`` stream,
  re-registering with backoff whenever the manager goes away.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
import trio

from dffs.api import common_pb2, manager_pb2, manager_pb2_grpc
from dffs.daemon.config import DaemonConfig
from dffs.daemon.schedulers import ChannelFactory, SchedulerClient
from dffs.manager.tunables import ClientTunables, client_tunables
from dffs.rpc import bridge

log = logging.getLogger(__name__)

CALL_TIMEOUT = 5.0
MAX_BACKOFF = 30.0


def scheduler_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class ManagerLink:
    def __init__(
        self,
        cfg: DaemonConfig,
        schedulers: SchedulerClient,
        apply: Callable[[ClientTunables], None],
        *,
        channel_factory: ChannelFactory,
    ):
        assert cfg.manager
        self.cfg = cfg
        self.schedulers = schedulers
        self._channel_factory = channel_factory
        self.apply = apply
        self.cluster_id = cfg.cluster_id
        self._tunables: ClientTunables | None = None
        self._problems: list[str] = []
        self._reachable = True

    def _identity(self) -> dict:
        kind = manager_pb2.SOURCE_TYPE_SEED_PEER if self.cfg.seed else manager_pb2.SOURCE_TYPE_PEER
        return {"source_type": kind, "hostname": self.cfg.hostname, "ip": self.cfg.ip}

    async def run(self, rpc_port: int, upload_port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Learn the schedulers once (so the first download already has them), then keep refreshing."""
        assert self.cfg.manager is not None  # a ManagerLink is only built with --manager
        channel = self._channel_factory(self.cfg.manager)
        try:
            stub = manager_pb2_grpc.ManagerStub(channel)
            async with trio.open_nursery() as nursery:
                if self.cfg.seed:
                    nursery.start_soon(self._seed_membership, stub, rpc_port, upload_port)
                await self.refresh(stub)
                task_status.started()
                while True:
                    await trio.sleep(self.cfg.manager_refresh_interval)
                    await self.refresh(stub)
        finally:
            channel.close()

    async def refresh(self, stub: manager_pb2_grpc.ManagerStub) -> None:
        try:
            answer = await bridge.unary(
                stub.ListSchedulers,
                manager_pb2.ListSchedulersRequest(**self._identity(), idc=self.cfg.idc, location=self.cfg.location),
                timeout=CALL_TIMEOUT,
            )
        except grpc.RpcError as exc:
            if self._reachable:  # once per outage
                log.warning(
                    "host=%s event=manager_unreachable manager=%s code=%s action=keep_schedulers count=%d",
                    self.cfg.host_id,
                    self.cfg.manager,
                    exc.code(),
                    len(self.schedulers.addresses),
                )
            self._reachable = False
            return
        if not self._reachable:
            log.info("host=%s event=manager_reachable manager=%s", self.cfg.host_id, self.cfg.manager)
        self._reachable = True
        addresses = [scheduler_address(s.ip, s.port) for s in answer.schedulers]
        if self.schedulers.update(addresses):
            log.info(
                "host=%s event=schedulers_from_manager schedulers=%s", self.cfg.host_id, ",".join(addresses) or "-"
            )
        await self._refresh_config(stub)

    async def _refresh_config(self, stub: manager_pb2_grpc.ManagerStub) -> None:
        try:
            cluster = await bridge.unary(
                stub.GetClusterConfig,
                manager_pb2.GetClusterConfigRequest(**self._identity(), cluster_id=self.cluster_id),
                timeout=CALL_TIMEOUT,
            )
        except grpc.RpcError as exc:
            log.info("host=%s event=cluster_config_unavailable code=%s", self.cfg.host_id, exc.code())
            return
        tunables, problems = client_tunables(cluster.client_config_json)
        if problems != self._problems:
            for problem in problems:
                log.warning("host=%s event=cluster_config_ignored problem=%r", self.cfg.host_id, problem)
            self._problems = problems
        if tunables != self._tunables:
            self._tunables = tunables
            log.info(
                "host=%s event=cluster_config_applied cluster=%d config=%s",
                self.cfg.host_id,
                cluster.cluster_id,
                cluster.client_config_json,
            )
            self.apply(tunables)

    async def _seed_membership(self, stub: manager_pb2_grpc.ManagerStub, rpc_port: int, upload_port: int) -> None:
        backoff = 1.0
        while True:
            try:
                me = await bridge.unary(
                    stub.UpdateSeedPeer,
                    manager_pb2.UpdateSeedPeerRequest(
                        **self._identity(),
                        type=common_pb2.HOST_TYPE_SEED,
                        port=rpc_port,
                        download_port=upload_port,
                        idc=self.cfg.idc,
                        location=self.cfg.location,
                        cluster_id=self.cfg.cluster_id,
                    ),
                    timeout=CALL_TIMEOUT,
                )
                self.cluster_id = me.cluster_id
                log.info("host=%s event=manager_registered kind=seed_peer cluster=%d", self.cfg.host_id, me.cluster_id)
                backoff = 1.0
                async with bridge.open_stream_unary(stub.KeepAlive) as keepalive:
                    while True:
                        await keepalive.send(
                            manager_pb2.KeepAliveRequest(**self._identity(), cluster_id=self.cluster_id)
                        )
                        await trio.sleep(self.cfg.manager_refresh_interval)
            except (grpc.RpcError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                code = exc.code() if isinstance(exc, grpc.RpcError) else type(exc).__name__
                log.warning(
                    "host=%s event=manager_membership_lost code=%s retry_in=%.0fs", self.cfg.host_id, code, backoff
                )
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
