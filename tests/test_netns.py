"""The multi-host harness itself: hosts reach each other, not the root namespace; cleanup is total."""

from __future__ import annotations

import subprocess
import sys

import pytest
from netns import Network


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_hosts_reach_each_other_and_cleanup_is_total(tmp_path, nginx_origin):
    before = namespaces()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello.txt").write_text("hello from a")
    with Network() as net:
        a, b = net.add_host("a"), net.add_host("b")
        origin = nginx_origin(tmp_path / "www", host=a.ip, port=8080, netns=a.netns)
        out = net.check_output(b, ["curl", "-s", "--max-time", "5", f"http://{a.ip}:8080/hello.txt"])
        assert out == "hello from a"
        # the root namespace's loopback servers are out of reach from a host
        root = subprocess.Popen(
            [sys.executable, "-m", "http.server", "-b", "127.0.0.1", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            failed = subprocess.run(
                b.command(["curl", "-s", "--max-time", "2", f"http://127.0.0.1:{origin.port}/"]), capture_output=True
            )
            assert failed.returncode != 0
        finally:
            root.kill()
            root.wait()
        sleeper = net.run(b, ["sleep", "300"])
        created = {a.netns, b.netns, net.bridge_ns}
        assert created <= namespaces()
    assert sleeper.poll() is not None  # killed
    assert namespaces() == before  # nothing left behind


def test_cleanup_after_a_failure():
    before = namespaces()
    with pytest.raises(RuntimeError):
        with Network() as net:
            net.add_host("x")
            net.run(net.hosts[0], ["sleep", "300"])
            raise RuntimeError("boom")
    assert namespaces() == before
