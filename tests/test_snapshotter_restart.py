"""A snapshotter restart (``dffs daemon --snapshotter`` stopped, or killed, and started again) while a container runs.

Metadata is in SQLite and ordinary layers are directories, so they survive as
they are. The layers' FUSE mount is held by its keeper process, which queues
the kernel's requests while no daemon is connected; the restarted daemon
rebuilds every lazily served layer (same inode numbers) before it serves the
connection again. The container started before the restart must keep running
and keep reading its image's files — ones it had read and ones it had not —
and new containers must start.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from layer_images import build_rich_image, convert_estargz
from registry import Registry
from snapshotter_env import SnapshotterHost

MiB = 1024 * 1024


@pytest.fixture
def registry(tmp_path):
    with Registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def host(tmp_path):
    host = SnapshotterHost(tmp_path, "h1")
    try:
        yield host.start()
    finally:
        host.close()


def _exec(host: SnapshotterHost, container: str, exec_id: str, *argv: str) -> str:
    return host.ctr("tasks", "exec", "--exec-id", exec_id, container, *argv).stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "lazy, signal", [(True, 15), (True, 9), (False, 15)], ids=["lazy-sigterm", "lazy-sigkill", "unpacked-sigterm"]
)
def test_a_container_keeps_running_across_a_snapshotter_restart(registry, host, lazy, signal):
    image = build_rich_image(registry, "test/restart", "v1", payload_bytes=2 * MiB)
    if lazy:
        image = convert_estargz(host.containerd, registry, image, "v1-esgz")
        out = host.image_pull(image.ref).stdout
        assert "lazy=3" in out, out
    else:
        host.ctr("images", "pull", "--plain-http", "--snapshotter", "dffs", image.ref)
    # runc keeps container state in /run/containerd/runc/<ns>/<id> whatever containerd's root: unique IDs
    long = f"long-{os.urandom(4).hex()}"
    loop = ("/bin/busybox", "sh", "-c", "while true; do sleep 1; done")
    host.ctr("run", "-d", "--snapshotter", "dffs", image.ref, long, *loop)
    try:
        assert image.message in _exec(host, long, "e1", "/bin/busybox", "cat", "/etc/message")

        host.daemon.stop(signal)  # SIGKILL: a crash, with whatever the kernel had asked still unanswered
        host.start_daemon()

        assert "RUNNING" in host.ctr("tasks", "ls").stdout
        # files the container had not read before the restart, and ones it had
        assert "small file" in _exec(host, long, "e2", "/bin/busybox", "cat", "/data/small.txt")
        assert image.message in _exec(host, long, "e3", "/bin/busybox", "cat", "/etc/message")
        host.wait_for_containerd_link()
        after = f"after-{os.urandom(4).hex()}"
        assert image.message in host.run(image.ref, after)
    finally:
        # runc's state outlives containerd (/run/containerd/runc): kill and delete the container
        subprocess.run(["runc", "--root", "/run/containerd/runc/default", "delete", "--force", long],
                       capture_output=True)  # fmt: skip
