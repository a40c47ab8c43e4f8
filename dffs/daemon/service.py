"""``dffs daemon``: one process per host serving pieces and downloading through P2P.

Everything lives in one trio nursery: the piece upload server (HTTP,
sendfile), the gRPC DfdaemonUpload service (SyncPieces, seed triggers), the
host announcements to the scheduler, each task's AnnouncePeer conversation,
and the optional FUSE mount.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

import attrs
import grpc
import trio

from dffs.api import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from dffs.daemon.config import DaemonConfig
from dffs.daemon.membership import ManagerLink
from dffs.daemon.p2p import P2PContext, P2PFetcher
from dffs.daemon.rpc import DownloadService, UploadService
from dffs.daemon.schedulers import SchedulerPool
from dffs.fs.mount import MountConfig
from dffs.fs.mount import serve as serve_mount
from dffs.manager.tunables import ClientTunables
from dffs.peertask import DownloadRequest, PeerTask, TaskManager
from dffs.rpc import bridge
from dffs.source import SourceRegistry
from dffs.storage import StorageManager
from dffs.upload import PieceUploadServer
from dffs.upload.client import PieceClient

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, cfg: DaemonConfig, mount: MountConfig | None = None, *, embedded: bool = False):
        self.cfg = cfg
        #: Run for one caller's download (``dffs get --scheduler`` without a daemon): no signals, no socket.
        self.embedded = embedded
        self.mount = mount
        self.storage = StorageManager(cfg.data_dir)
        self.sources = SourceRegistry()
        self.tasks = TaskManager(self.storage, self.sources)
        self.upload = PieceUploadServer(
            self.storage,
            host=cfg.ip,
            port=cfg.upload_port,
            max_concurrent_uploads=cfg.max_concurrent_uploads,
            rate_limit_bytes_per_sec=cfg.upload_rate_limit or None,
        )
        self.ports: dict[str, int] = {}
        self.p2p: P2PContext | None = None
        self.schedulers: SchedulerPool | None = None
        #: The cluster's dynamic config as last read from the manager (None: no manager).
        self.cluster_tunables: ClientTunables | None = None
        #: The HTTP proxy / registry mirror (dffs/proxy), built here so a bad setting fails before anything runs.
        self.proxy = None if embedded or cfg.proxy_port == -1 else self._make_proxy()
        #: The cache GC (dffs.gc), started with the daemon unless embedded.
        self.gc = None
        self.gc_limits = _gc_limits(cfg)
        self._nursery: trio.Nursery | None = None

    def _host(self) -> common_pb2.Host:
        return common_pb2.Host(
            id=self.cfg.host_id,
            type=common_pb2.HOST_TYPE_SEED if self.cfg.seed else common_pb2.HOST_TYPE_NORMAL,
            hostname=self.cfg.hostname,
            ip=self.cfg.ip,
            port=self.ports["rpc"],
            download_port=self.ports["upload"],
            idc=self.cfg.idc,
            location=self.cfg.location,
            disable_shared=self.cfg.disable_shared,
        )

    async def _announce_host(self, address: str, stub: scheduler_pb2_grpc.SchedulerStub) -> None:
        """Announce this host every interval (a restarted scheduler relearns it within one)."""
        request = scheduler_pb2.AnnounceHostRequest(host=self._host())
        request.interval.FromNanoseconds(int(self.cfg.announce_interval * 1e9))
        while True:
            try:
                await bridge.unary(stub.AnnounceHost, request, timeout=5)
            except grpc.RpcError as exc:
                log.warning(
                    "host=%s event=announce_host_failed scheduler=%s code=%s", self.cfg.host_id, address, exc.code()
                )
            await trio.sleep(self.cfg.announce_interval)

    async def _attach_p2p(self, task: PeerTask, request: DownloadRequest) -> None:
        assert self.p2p is not None and self._nursery is not None
        fetcher = P2PFetcher(self.p2p, task, request)
        task.fetcher = fetcher
        await self._nursery.start(fetcher.run)

    async def _join_schedulers(self, nursery: trio.Nursery, piece_client: PieceClient) -> None:
        """P2P for every task opened from now on, through the --scheduler list or the
        schedulers the --manager hands out (refreshed while the daemon runs)."""
        if not self.cfg.schedulers and not self.cfg.manager:
            return
        self.schedulers = SchedulerPool(nursery, self._announce_host)
        self.p2p = P2PContext(
            host_id=self.cfg.host_id,
            schedulers=self.schedulers.stubs,
            piece_client=piece_client,
            parent_wait=self.cfg.parent_wait,
            parent_rounds=self.cfg.parent_rounds,
            seed=self.cfg.seed,
        )
        self.tasks.on_open = self._attach_p2p
        # Every scheduler knows every host. With a manager, a static list only
        # serves until the manager's first answer replaces it.
        self.schedulers.update(self.cfg.schedulers)
        if self.cfg.manager:
            link = ManagerLink(self.cfg, self.schedulers, self.ports, self._apply_cluster_config)
            await nursery.start(link.run)  # each call times out: a manager that is down does not block the start

    def _apply_cluster_config(self, tunables: ClientTunables) -> None:
        """The cluster's dynamic config, picked up without a restart."""
        self.cluster_tunables = tunables
        limit = tunables.upload_limit if tunables.upload_limit is not None else self.cfg.upload_rate_limit
        self.upload.set_rate_limit(limit or None)
        high = tunables.gc_high_threshold / 100 if tunables.gc_high_threshold else self.cfg.gc_high_watermark
        low = tunables.gc_low_threshold / 100 if tunables.gc_low_threshold else self.cfg.gc_low_watermark
        try:
            limits = attrs.evolve(self.gc_limits, high=high, low=low)
        except ValueError as exc:  # e.g. a cluster low above this host's high: keep what works
            log.warning("host=%s event=cluster_gc_thresholds_ignored error=%s", self.cfg.host_id, exc)
        else:
            self.gc_limits = limits
            if self.gc is not None:
                self.gc.limits = limits

    def _make_proxy(self):
        from dffs.proxy import ProxyConfig, ProxyServer

        cfg = self.cfg
        options = dict(
            port=cfg.proxy_port,
            listen=cfg.proxy_listen,
            registry_mirror=cfg.registry_mirror,
            bypass=cfg.proxy_bypass,
            allow=cfg.proxy_allow,
            max_connections=cfg.proxy_max_connections,
        )
        if cfg.proxy_rules is not None:
            options["rules"] = cfg.proxy_rules
        proxy = ProxyServer(self.tasks, ProxyConfig(**options))
        proxy.bind()
        return proxy

    async def _start_proxy(self, nursery: trio.Nursery) -> None:
        """The HTTP proxy and registry mirror on --proxy-port, in this nursery."""
        if self.proxy is not None and (port := await nursery.start(self.proxy.serve)) is not None:
            self.ports["proxy"] = port

    async def _start_gc_and_metrics(self, nursery: trio.Nursery) -> None:
        """The cache GC and the metrics endpoint (dffs/gc, dffs/metrics), in this nursery."""
        from dffs.daemon.control import report_evictions, swarm_stat
        from dffs.gc.service import GcService
        from dffs.metrics import DAEMON
        from dffs.metrics.server import serve_trio

        async def report(result) -> None:
            if self.p2p is not None:
                await report_evictions(self.p2p, result)

        async def stat_fallback(request, error):
            return await swarm_stat(self.p2p, request, error) if self.p2p is not None else None

        def busy(tid: str) -> bool:
            task = self.tasks.active(tid)
            return task is not None and task.filling > 0

        self.tasks.stat_fallback = stat_fallback
        self.gc = GcService(
            self.storage,
            self.gc_limits,
            interval=self.cfg.gc_interval,
            is_active=lambda tid: self.tasks.active(tid) is not None,
            is_busy=busy,
            report=report,
        )
        await nursery.start(self.gc.run)
        if self.cfg.metrics_port >= 0:
            try:
                self.ports["metrics"] = await nursery.start(serve_trio, self.cfg.ip, self.cfg.metrics_port, DAEMON)
            except OSError as exc:  # metrics are not worth failing the daemon for (a busy port)
                log.warning(
                    "host=%s event=metrics_unavailable port=%d error=%s",
                    self.cfg.host_id,
                    self.cfg.metrics_port,
                    exc.strerror,
                )

    async def _main_job(self) -> None:
        if self.embedded:
            await trio.sleep_forever()  # the caller cancels when its download is done
        elif self.mount is not None:
            await serve_mount(self.mount, tasks=self.tasks)
        else:
            await _wait_for_signal()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGINT/SIGTERM (or the mount is unmounted, or the caller cancels)."""
        piece_client = PieceClient()
        try:
            async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as servers:
                self._nursery = nursery
                self.ports["upload"] = await nursery.start(self.upload.serve)
                upload_rpc = UploadService(self.storage, self.tasks, self.cfg.host_id)
                server = await servers.enter_async_context(
                    bridge.open_grpc_server(f"{self.cfg.ip}:{self.cfg.rpc_port}", upload_rpc.register)
                )
                self.ports["rpc"] = server.port
                if not self.embedded:
                    await self._start_gc_and_metrics(nursery)
                if not self.embedded:
                    socket_path = self.cfg.data_dir / "dffs.sock"
                    socket_path.unlink(missing_ok=True)
                    download_rpc = DownloadService(self.tasks, self.cfg.host_id)
                    await servers.enter_async_context(
                        bridge.open_grpc_server(f"unix:{socket_path}", download_rpc.register_with_control(self))
                    )
                    os.chmod(socket_path, 0o600)  # local clients only: it writes files as this daemon
                await self._join_schedulers(nursery, piece_client)
                await self._start_proxy(nursery)
                log.info(
                    "host=%s event=daemon_ready ip=%s upload_port=%d rpc_port=%d seed=%s",
                    self.cfg.host_id,
                    self.cfg.ip,
                    self.ports["upload"],
                    self.ports["rpc"],
                    self.cfg.seed,
                )
                if not self.embedded:
                    proxy = f" proxy_port={self.ports['proxy']}" if "proxy" in self.ports else ""
                    proxy += f" metrics_port={self.ports['metrics']}" if "metrics" in self.ports else ""
                    print(
                        f"dffs daemon ready upload_port={self.ports['upload']} rpc_port={self.ports['rpc']}{proxy}",
                        flush=True,
                    )
                task_status.started(self)
                try:
                    await self._main_job()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if self.p2p is not None:
                    self.p2p.close()
                if self.schedulers is not None:
                    self.schedulers.close()
                await piece_client.aclose()
                self.storage.close()
                await self.sources.aclose()


def _gc_limits(cfg: DaemonConfig):
    """The GC's limits from the config (UsageError when malformed, before anything starts)."""
    from dffs.errors import UsageError
    from dffs.gc.policy import GcLimits, parse_quota

    st = os.statvfs(cfg.data_dir)
    quota = parse_quota(cfg.storage_quota, st.f_blocks * st.f_frsize)
    try:
        return GcLimits(quota=quota, high=cfg.gc_high_watermark, low=cfg.gc_low_watermark, task_ttl=cfg.task_ttl)
    except ValueError as exc:
        raise UsageError(f"bad GC settings: {exc}") from None


async def _wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("event=signal signal=%s action=stop", signal.Signals(signum).name)
            return
