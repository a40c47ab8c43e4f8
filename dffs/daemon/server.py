"""``dffs daemon``: one process per host that stores, serves and downloads pieces.

:class:`Daemon` is the composition root: its constructor builds every
component with everything it depends on (nothing is attached later), and
:meth:`Daemon.run` starts them in one nursery, in dependency order, and stops
them in reverse. Who owns what while it runs:

* the TaskManager (an async context around everything else) owns every task's
  background work: the P2P conversation, cold-read completion, readahead,
  digest checks, the proxy's blob fetches;
* the daemon's nursery owns the servers (piece upload, gRPC, proxy, metrics),
  the GC loop, the scheduler client's announcement loops, the manager link and
  the mount — or, with ``--snapshotter``, the snapshotter, which serves the
  snapshots API and the one FUSE session (layers, and the mount's namespace);
* the gRPC servers (bridge) own the threads that serve RPCs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Any

import attrs
import trio

from dffs.api import common_pb2, dfdaemon_pb2_grpc
from dffs.daemon.config import DaemonConfig
from dffs.daemon.dataplane import piece_data_plane
from dffs.daemon.finished import FinishedTasks
from dffs.daemon.local_tasks import LocalTasks
from dffs.daemon.membership import ManagerLink
from dffs.daemon.p2p import P2PSettings, P2PSwarm
from dffs.daemon.schedulers import SchedulerClient
from dffs.daemon.service import DownloadServicer, UploadServicer
from dffs.daemon.small_tasks import FinishedRegistrations
from dffs.errors import UsageError
from dffs.fs.mount import MountConfig
from dffs.fs.mount import serve as serve_mount
from dffs.gc.policy import GcLimits, parse_quota
from dffs.gc.service import GcService
from dffs.manager.tunables import ClientTunables
from dffs.metrics import DAEMON
from dffs.metrics.server import serve_trio as serve_metrics
from dffs.peertask import NoSwarm, Swarm, TaskManager
from dffs.proxy import ProxyConfig, ProxyServer
from dffs.rpc import bridge
from dffs.security.ca import Identity
from dffs.security.setup import is_loopback, make_transport
from dffs.security.urls import RemoteUrlPolicy
from dffs.snapshotter.component import Snapshotter
from dffs.snapshotter.config import SnapshotterConfig
from dffs.source import SourceRegistry
from dffs.source.http import HttpOptions
from dffs.storage import StorageManager

log = logging.getLogger(__name__)


class Daemon:
    def __init__(
        self,
        cfg: DaemonConfig,
        mount: MountConfig | None = None,
        *,
        embedded: bool = False,
        snapshotter: SnapshotterConfig | None = None,
    ):
        self.cfg = cfg
        #: Run for one caller's download (``dffs get --scheduler`` without a daemon):
        #: no signals, no socket, no GC, no proxy, no metrics.
        self.embedded = embedded
        self.mount = mount
        self.storage = StorageManager(cfg.data_dir)
        #: How this host talks to other members: mutual TLS from the cluster key, or --insecure.
        self.transport = make_transport(
            "daemon",
            Identity("daemon", cfg.host_id),
            cluster_key=cfg.cluster_key,
            insecure_ok=cfg.insecure,
            data_dir=cfg.data_dir,
            addresses=[cfg.ip, *cfg.schedulers, *([cfg.manager] if cfg.manager else [])],
            cert_addresses=(cfg.ip,),
        )
        self.sources = SourceRegistry(
            http_options=HttpOptions(attempts=cfg.origin_attempts, progress_budgets=cfg.origin_progress_budgets)
        )
        self.upload, self.piece_client = piece_data_plane(cfg, self.transport, self.storage)
        self.schedulers = SchedulerClient(
            cfg.host_id,
            cfg.schedulers,
            announce_interval=cfg.announce_interval,
            channel_factory=self.transport.channel,
        )
        #: Small tasks fetched from the holders a listing named, registered many per call (not for one
        #: caller's embedded download: it leaves when the download is done).
        self.registrations = None if embedded else FinishedRegistrations(self.schedulers)
        self.swarm: Swarm = (
            P2PSwarm(
                self.schedulers,
                self.piece_client,
                P2PSettings(parent_wait=cfg.parent_wait, parent_rounds=cfg.parent_rounds, seed=cfg.seed),
                channel_factory=self.transport.channel,
                registrations=self.registrations,
            )
            if cfg.schedulers or cfg.manager
            else NoSwarm()
        )
        self.tasks = TaskManager(
            self.storage,
            self.sources,
            swarm=self.swarm,
            idle_timeout=cfg.task_idle_timeout,
            revalidate_ttl=cfg.revalidate_ttl,
        )
        self.gc = GcService(
            self.storage,
            _gc_limits(cfg),
            interval=cfg.gc_interval,
            is_active=self.tasks.in_use,
            is_busy=self._is_busy,
            report=self.schedulers.report_evictions,
        )
        self.local = LocalTasks(self.storage, self.tasks, self.gc, self.schedulers, self.sources)
        #: Complete tasks registered again with a scheduler that forgot this host (not for one
        #: caller's embedded download: it leaves when the download is done).
        self.finished = None if embedded else FinishedTasks(self.storage, self.schedulers)
        #: The HTTP proxy / registry mirror (off when embedded or ``proxy_port = -1``); bound here
        #: so a bad or taken address fails before anything runs.
        self.proxy = None if embedded or cfg.proxy_port == -1 else _bind_proxy(self.tasks, cfg)
        #: containerd's snapshots API with lazy layers (``--snapshotter``); it serves the mount too, if any.
        self.snapshotter = (
            Snapshotter(cfg.data_dir, snapshotter, tasks=self.tasks, local=self.local, mount=mount)
            if snapshotter is not None and not embedded
            else None
        )
        #: Membership through ``--manager`` (schedulers handed out, cluster config, seed keepalive).
        self.manager_link = (
            ManagerLink(cfg, self.schedulers, self._apply_cluster_config, channel_factory=self.transport.channel)
            if cfg.manager
            else None
        )
        #: The cluster's dynamic config as last read from the manager (None: no manager, or not yet).
        self.cluster_tunables: ClientTunables | None = None
        self.ports: dict[str, int] = {}

    def _is_busy(self, task_id: str) -> bool:
        """A task with a whole-task download running: the GC leaves it alone."""
        task = self.tasks.active(task_id)
        return task is not None and task.filling > 0

    def _host(self) -> common_pb2.Host:
        cfg = self.cfg
        return common_pb2.Host(
            id=cfg.host_id,
            type=common_pb2.HOST_TYPE_SEED if cfg.seed else common_pb2.HOST_TYPE_NORMAL,
            hostname=cfg.hostname,
            ip=cfg.ip,
            port=self.ports["rpc"],
            download_port=self.ports["upload"],
            idc=cfg.idc,
            location=cfg.location,
            disable_shared=cfg.disable_shared,
        )

    def _apply_cluster_config(self, tunables: ClientTunables) -> None:
        """The cluster's dynamic config, picked up without a restart."""
        self.cluster_tunables = tunables
        limit = tunables.upload_limit if tunables.upload_limit is not None else self.cfg.upload_rate_limit
        self.upload.set_rate_limit(limit or None)
        high = tunables.gc_high_threshold / 100 if tunables.gc_high_threshold else self.cfg.gc_high_watermark
        low = tunables.gc_low_threshold / 100 if tunables.gc_low_threshold else self.cfg.gc_low_watermark
        try:
            self.gc.limits = attrs.evolve(self.gc.limits, high=high, low=low)
        except ValueError as exc:  # e.g. a cluster low above this host's high: keep what works
            log.warning("host=%s event=cluster_gc_thresholds_ignored error=%s", self.cfg.host_id, exc)

    # ------------------------------------------------------------- running
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGINT/SIGTERM (or the mount is unmounted, or the caller cancels)."""
        try:
            async with self.tasks, trio.open_nursery() as nursery, contextlib.AsyncExitStack() as servers:
                await self._start_servers(nursery, servers)
                await self._join_cluster(nursery)
                if self.proxy is not None and (port := await nursery.start(self.proxy.serve)) is not None:
                    self.ports["proxy"] = port
                self._say_ready()
                task_status.started(self)
                try:
                    await self._main_job()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if isinstance(self.swarm, P2PSwarm):
                    self.swarm.close()
                await self.piece_client.aclose()
                self.storage.close()
                await self.sources.aclose()

    async def _start_servers(self, nursery: trio.Nursery, servers: contextlib.AsyncExitStack) -> None:
        """Piece upload, gRPC for members, and (unless embedded) the GC, metrics and the local socket."""
        cfg = self.cfg
        self.ports["upload"] = await nursery.start(self.upload.serve)
        upload_rpc = UploadServicer(
            self.storage,
            self.tasks,
            cfg.host_id,
            self.transport,
            RemoteUrlPolicy(cfg.remote_allow_networks, allow_loopback=is_loopback(cfg.ip)),
        )
        server = await servers.enter_async_context(
            bridge.open_grpc_server(
                f"{cfg.ip}:{cfg.rpc_port}",
                lambda grpc_server: dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(upload_rpc, grpc_server),
                add_port=self.transport.add_port,
            )
        )
        self.ports["rpc"] = server.port
        if self.embedded:
            return
        await nursery.start(self.gc.run)
        if cfg.metrics_port >= 0:
            try:
                self.ports["metrics"] = await nursery.start(serve_metrics, cfg.ip, cfg.metrics_port, DAEMON)
            except OSError as exc:  # metrics are not worth failing the daemon for (a busy port)
                log.warning(
                    "host=%s event=metrics_unavailable port=%d error=%s", cfg.host_id, cfg.metrics_port, exc.strerror
                )
        socket_path = cfg.data_dir / "dffs.sock"
        socket_path.unlink(missing_ok=True)
        download_rpc = DownloadServicer(self.tasks, self.local, cfg.host_id)
        await servers.enter_async_context(
            bridge.open_grpc_server(
                f"unix:{socket_path}",
                lambda grpc_server: dfdaemon_pb2_grpc.add_DfdaemonDownloadServicer_to_server(download_rpc, grpc_server),
            )
        )
        os.chmod(socket_path, 0o600)  # local clients only: it reads and writes files as this daemon

    async def _join_cluster(self, nursery: trio.Nursery) -> None:
        """Announce this host to the schedulers; learn them (and the cluster's config) from the manager."""
        if self.finished is not None:
            await nursery.start(self.finished.run)
        if self.registrations is not None and isinstance(self.swarm, P2PSwarm):
            await nursery.start(self.registrations.run)
        await nursery.start(self.schedulers.run, self._host())
        if self.manager_link is not None:
            # Each call times out: a manager that is down does not block the start.
            await nursery.start(self.manager_link.run, self.ports["rpc"], self.ports["upload"])

    def _say_ready(self) -> None:
        cfg = self.cfg
        log.info(
            "host=%s event=daemon_ready ip=%s upload_port=%d rpc_port=%d seed=%s",
            cfg.host_id,
            cfg.ip,
            self.ports["upload"],
            self.ports["rpc"],
            cfg.seed,
        )
        if self.embedded:
            return
        extra = "".join(f" {name}_port={self.ports[name]}" for name in ("proxy", "metrics") if name in self.ports)
        print(f"dffs daemon ready upload_port={self.ports['upload']} rpc_port={self.ports['rpc']}{extra}", flush=True)

    async def _main_job(self) -> None:
        if self.embedded:
            await trio.sleep_forever()  # the caller cancels when its download is done
        elif self.snapshotter is not None:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.snapshotter.run)
                await _wait_for_signal()
                nursery.cancel_scope.cancel()
        elif self.mount is not None:
            await serve_mount(self.mount, self.tasks)
        else:
            await _wait_for_signal()


def _bind_proxy(tasks: TaskManager, cfg: DaemonConfig) -> ProxyServer:
    options: dict[str, Any] = dict(
        port=cfg.proxy_port,
        listen=cfg.proxy_listen,
        registry_mirror=cfg.registry_mirror,
        bypass=cfg.proxy_bypass,
        allow=cfg.proxy_allow,
        max_connections=cfg.proxy_max_connections,
    )
    if cfg.proxy_rules is not None:
        options["rules"] = cfg.proxy_rules
    proxy = ProxyServer(tasks, ProxyConfig(**options))
    proxy.bind()
    return proxy


def _gc_limits(cfg: DaemonConfig) -> GcLimits:
    """The GC's limits from the config (UsageError when malformed, before anything starts)."""
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
