"""``dffs up``: the embedded default, started and stopped like a user would (Ctrl-C)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli import sha256_file
from mounts import force_unmount, is_mounted

MiB = 1024 * 1024


def _processes_using(path: Path) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_up_serves_a_file_through_the_mount_and_ctrl_c_leaves_nothing(tmp_path, nginx_origin, make_file):
    (tmp_path / "www").mkdir()
    digest = make_file(tmp_path / "www" / "up.bin", 6 * MiB + 5, seed=61)
    origin = nginx_origin(tmp_path / "www")
    data_dir, mountpoint = tmp_path / "data", tmp_path / "mnt"
    up = subprocess.Popen(
        [sys.executable, "-m", "dffs", "up", str(mountpoint), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        ready = ""
        deadline = time.monotonic() + 60
        while "dffs up: ready" not in ready:
            line = up.stdout.readline()
            assert line and time.monotonic() < deadline, (ready, up.stderr.read() if up.poll() is not None else "")
            ready += line
        assert is_mounted(mountpoint)
        path = mountpoint / "http" / f"{origin.host}:{origin.port}" / "up.bin"
        assert sha256_file(path) == digest
        cat = subprocess.run(["cat", str(path)], capture_output=True, timeout=30)
        assert len(cat.stdout) == 6 * MiB + 5
        # Every part is up: the manager knows the scheduler and the seed (their logs say so).
        manager_log = (data_dir / "logs" / "manager.log").read_text()
        assert "event=scheduler_registered" in manager_log and "event=seed_peer_registered" in manager_log

        up.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, err = up.communicate(timeout=60)
        assert up.returncode == 0, err
        assert "dffs up: stopped" in out
        assert not is_mounted(mountpoint)
        assert _processes_using(data_dir) == []
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        for leftover in _processes_using(data_dir):
            os.kill(int(leftover.split(":")[0]), signal.SIGKILL)
        if is_mounted(mountpoint):
            force_unmount(mountpoint)
