"""Process faults: nothing outlives its supervisor, and a crash never blocks the next start.

Real processes throughout: ``dffs up`` (manager, scheduler, seed, daemon with a
FUSE mount) killed with SIGKILL, a ``dffs daemon --mount`` killed with SIGKILL,
and the next start on the same data dir and mount point read with ordinary tools.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli import sha256_file
from mounts import MountProcess, force_unmount, is_mounted

MiB = 1024 * 1024
#: Generous bound for children to notice a dead supervisor (they get SIGTERM at once, then unmount).
GONE_TIMEOUT = 30.0


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (``dffs up``'s children call setsid: walk the parent chain)."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True).stdout
        for child in map(int, out.split()):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its (already dead) parent's reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def processes_using(path: Path) -> set[int]:
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline and alive(int(pid)):
            found.add(int(pid))
    return found


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(0.05)


class Up:
    """``dffs up MOUNT --data-dir DIR`` as a child process; :meth:`close` leaves nothing behind."""

    def __init__(self, mountpoint: Path, data_dir: Path):
        self.mountpoint, self.data_dir = mountpoint, data_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dffs", "up", str(mountpoint), "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        seen = ""
        deadline = time.monotonic() + timeout
        while "dffs up: ready" not in seen:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"dffs up ended before ready: {seen}{self.proc.stderr.read()}")
            assert time.monotonic() < deadline, seen
            seen += line

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in processes_using(self.data_dir):
            os.kill(pid, signal.SIGKILL)
        if is_mounted(self.mountpoint):
            force_unmount(self.mountpoint)
        self.proc.stdout.close()
        self.proc.stderr.close()


def test_dffs_up_killed_with_sigkill_leaves_no_child_and_no_mount_and_starts_again(tmp_path, nginx_origin, make_file):
    (tmp_path / "www").mkdir()
    digest = make_file(tmp_path / "www" / "f.bin", 5 * MiB + 3, seed=71)
    origin = nginx_origin(tmp_path / "www")
    data_dir, mountpoint = tmp_path / "data", tmp_path / "mnt"
    path = mountpoint / "http" / f"{origin.host}:{origin.port}" / "f.bin"
    first = Up(mountpoint, data_dir)
    second = None
    try:
        first.wait_ready()
        assert sha256_file(path) == digest
        children = descendants(first.proc.pid)
        assert len(children) >= 4, children  # manager, scheduler, seed, daemon

        # While it lives, the data dir is taken: a second `dffs up` says so instead of starting on top.
        clash = subprocess.run(
            [sys.executable, "-m", "dffs", "up", str(tmp_path / "mnt2"), "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert clash.returncode == 1 and f"in use by another dffs up (pid {first.proc.pid}" in clash.stderr

        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
        wait_until(lambda: not any(alive(pid) for pid in children), GONE_TIMEOUT, f"children {children} to exit")
        # Unmounted by the daemon itself (the death signal is SIGTERM), not left stale.
        wait_until(lambda: not is_mounted(mountpoint), GONE_TIMEOUT, "the mount to go")
        assert processes_using(data_dir) == set()

        second = Up(mountpoint, data_dir)
        second.wait_ready()
        assert sha256_file(path) == digest
        cat = subprocess.run(["cat", str(path)], capture_output=True, timeout=60)
        assert cat.returncode == 0 and len(cat.stdout) == 5 * MiB + 3
        second.proc.send_signal(signal.SIGINT)
        out, err = second.proc.communicate(timeout=60)
        assert second.proc.returncode == 0, err
        assert not is_mounted(mountpoint)
    finally:
        first.close()
        if second is not None:
            second.close()


def test_daemon_with_a_mount_killed_with_sigkill_the_next_one_mounts_and_serves(tmp_path, nginx_origin):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "a.txt").write_text("after a crash")
    origin = nginx_origin(tmp_path / "www")
    mountpoint, data_dir = tmp_path / "mnt", tmp_path / "data"
    path = mountpoint / "http" / f"{origin.host}:{origin.port}" / "a.txt"
    ports = ("--upload-port", "0", "--rpc-port", "0", "--proxy-port", "-1", "--metrics-port", "-1")
    first = MountProcess(mountpoint, data_dir, *ports, command=("daemon",))
    second = MountProcess(mountpoint, data_dir, *ports, command=("daemon",))
    try:
        first.start()
        assert path.read_text() == "after a crash"
        first.kill9()
        with pytest.raises(OSError) as info:
            os.listdir(mountpoint)
        assert info.value.errno == errno.ENOTCONN  # what a crashed FUSE daemon leaves

        second.start()  # the same data dir (its lock died with the first) and the same mount point
        assert path.read_text() == "after a crash"
        read = subprocess.run(["cat", str(path)], capture_output=True, text=True, timeout=60)
        assert read.returncode == 0 and read.stdout == "after a crash", read.stderr
        assert "event=stale_mount_cleared" in second.output()
        assert second.alive()
    finally:
        second.stop()
        first.stop()
        force_unmount(mountpoint)


def test_a_child_whose_supervisor_is_already_gone_does_not_start(tmp_path):
    """The race PR_SET_PDEATHSIG leaves open: the supervisor died between the fork and the prctl.
    The child finds its parent is not the supervisor it was started by, and stops at once."""
    env = dict(os.environ, DFFS_SUPERVISOR_PID="1")  # our parent is this test, not pid 1
    result = subprocess.run(
        [sys.executable, "-m", "dffs", "daemon", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    assert "supervisor (pid 1) is gone; not starting" in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was started
