"""``dffs daemon --snapshotter``: the daemon and the snapshots API in one trio run.

The snapshotter is a user of the daemon (its TaskManager, later its FUSE
session), so it starts after the daemon is ready and stops before it: when the
daemon's run ends (a signal), the snapshotter's server is cancelled with it.
"""

from __future__ import annotations

import logging

import trio

from dffs.snapshotter.service import serve

log = logging.getLogger(__name__)


def socket_path(data_dir):
    return data_dir / "snapshotter.sock"


async def run_daemon_with_snapshotter(daemon) -> None:
    data_dir = daemon.cfg.data_dir
    async with trio.open_nursery() as nursery:

        async def daemon_then_stop(task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                await daemon.run(task_status=task_status)
            finally:
                nursery.cancel_scope.cancel()

        await nursery.start(daemon_then_stop)
        await nursery.start(serve, data_dir / "snapshotter", socket_path(data_dir), None)
        print(f"dffs snapshotter ready socket={socket_path(data_dir)}", flush=True)
