"""Several hosts on one machine: network namespaces joined by a bridge.

Each host is a namespace with one veth leg on a bridge that lives in its own
namespace (so nothing touches the root namespace's networking). Processes
are started with ``nsenter --net=...``: network only, so a FUSE mount made by
a process "on" a host is visible to the test as usual (``ip netns exec``
would give it a private mount namespace).

Everything is torn down in :meth:`Network.close`, even after a failure:
processes are killed, namespaces deleted.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import attrs

_serial = itertools.count(1)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@attrs.define
class Host:
    name: str
    netns: str
    ip: str
    veth: str

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    def command(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net={self.netns_path}", "--", *argv]


class Network:
    """``with Network() as net: a = net.add_host("a"); net.run(a, [...])``"""

    def __init__(self, subnet: str = "10.77.0"):
        self.tag = f"d{os.getpid() % 100000}x{next(_serial)}"
        self.subnet = subnet
        self.bridge_ns = f"{self.tag}-br"
        self.hosts: list[Host] = []
        self.processes: list[subprocess.Popen] = []
        self._made_bridge = False

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _bridge(self) -> None:
        if self._made_bridge:
            return
        _ip("netns", "add", self.bridge_ns)
        self._made_bridge = True
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def add_host(self, name: str) -> Host:
        self._bridge()
        index = len(self.hosts) + 1
        host = Host(name, f"{self.tag}-{name}", f"{self.subnet}.{index + 1}", f"v{self.tag}{index}"[:15])
        peer = f"b{self.tag}{index}"[:15]
        _ip("netns", "add", host.netns)
        self.hosts.append(host)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", host.veth, "netns", host.netns)
        _ip("link", "set", peer, "netns", self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "set", peer, "master", "br0")
        _ip("-n", self.bridge_ns, "link", "set", peer, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", host.veth)
        _ip("-n", host.netns, "link", "set", host.veth, "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        return host

    def limit(self, host: Host, rate: str = "200mbit") -> None:
        """Shape the host's outgoing traffic with a token bucket (tc tbf)."""
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                host.netns,
                "tc",
                "qdisc",
                "add",
                "dev",
                host.veth,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "256kb",
                "latency",
                "50ms",
            ],
            check=True,
            capture_output=True,
        )

    def set_link(self, host: Host, up: bool) -> None:
        _ip("-n", host.netns, "link", "set", host.veth, "up" if up else "down")

    def run(self, host: Host, argv: list[str], **popen) -> subprocess.Popen:
        """Start ``argv`` on ``host`` (network namespace only); killed at close()."""
        proc = subprocess.Popen(host.command(argv), start_new_session=True, **popen)
        self.processes.append(proc)
        return proc

    def check_output(self, host: Host, argv: list[str], timeout: float = 30) -> str:
        return subprocess.run(host.command(argv), check=True, capture_output=True, text=True, timeout=timeout).stdout

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for netns in [h.netns for h in self.hosts] + ([self.bridge_ns] if self._made_bridge else []):
            _kill_netns_processes(netns)
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        self.hosts.clear()
        self._made_bridge = False


def _kill_netns_processes(netns: str) -> None:
    """Anything still running inside a namespace (children that escaped their group)."""
    result = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    pids = [int(p) for p in result.stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
        time.sleep(0.02)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


_TAG = re.compile(r"^d(\d+)x\d+-")


def sweep_orphaned_namespaces() -> list[str]:
    """Delete namespaces an earlier test run left behind (its process was killed before its
    ``Network`` closed): ``d<pid>x<n>-*`` whose pid no longer runs. Returns their names."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    swept = []
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _TAG.match(name)
        if match is None or os.path.exists(f"/proc/{match.group(1)}"):
            continue
        _kill_netns_processes(name)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        swept.append(name)
    return swept
