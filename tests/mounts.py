"""Run a real ``dffs mount`` process for a test, and always tear it down."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def is_mounted(mountpoint: Path) -> bool:
    target = str(mountpoint)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f)


def force_unmount(mountpoint: Path) -> None:
    for cmd in (["fusermount3", "-u", "-z", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        if not is_mounted(mountpoint):
            return
        subprocess.run(cmd, capture_output=True)


def journaled_pieces(data_dir: Path) -> dict[str, set[int]]:
    """The pieces each task in ``data_dir`` has recorded as present, read passively from the
    journals (for a process without a control socket, such as ``dffs mount``)."""
    from dffs.storage import journal

    found = {}
    for path in Path(data_dir).glob("tasks/*/*/pieces.journal"):
        data = path.read_bytes()
        records, _ = journal.decode_records(data[journal.HEADER.size :])
        found[path.parent.name] = set(journal.replay(records))
    return found


_serial = itertools.count(1)


def _lists(mountpoint: Path) -> bool:
    try:
        return "http" in os.listdir(mountpoint)  # readdir always reaches the daemon
    except OSError:
        return False


class MountProcess:
    """``dffs mount MOUNTPOINT ARGS`` as a child process."""

    def __init__(self, mountpoint: Path, data_dir: Path, *args: str, command: tuple[str, ...] = ("mount",)):
        self.mountpoint = Path(mountpoint)
        self.data_dir = Path(data_dir)
        self.args = args
        self.command = command
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"{self.mountpoint.name}.mount.{next(_serial)}.log"

    def argv(self) -> list[str]:
        if self.command == ("mount",):
            head = ["mount", str(self.mountpoint)]
        else:
            head = [*self.command, "--mount", str(self.mountpoint)]
        return [sys.executable, "-m", "dffs", *head, "--data-dir", str(self.data_dir), "-v", *self.args]

    def start(self, timeout: float = 15) -> MountProcess:
        try:
            self.mountpoint.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            pass  # a stale mount's leftover: the mount under test must clear it
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        # Wait for *this* process to report its mount (a stale mount may still
        # answer lookups from the kernel's dentry cache), then for it to answer.
        while not ("event=mounted" in self.output() and _lists(self.mountpoint)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"dffs mount exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dffs mount did not come up:\n{self.output()}")
            time.sleep(0.05)
        return self

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        """Signal the mount and wait; always leaves no process and no mount behind."""
        code = None
        try:
            if self.alive():
                self.proc.send_signal(sig)
                try:
                    code = self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            elif self.proc is not None:
                code = self.proc.returncode
        finally:
            force_unmount(self.mountpoint)
            if getattr(self, "log", None):
                self.log.close()
        return code

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()
