"""``dffs image containerd-config`` and ``dffs image pull``'s usage errors (no containerd needed)."""

from __future__ import annotations

import subprocess
import sys
import tomllib


def dffs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dffs", *args], capture_output=True, text=True, timeout=60)


def test_the_config_fragment_is_toml_containerd_reads(tmp_path):
    result = dffs("image", "containerd-config", "--data-dir", str(tmp_path), "--registry", "10.0.0.5:5000")
    assert result.returncode == 0, result.stderr
    config, _, hosts = result.stdout.partition("\n\n# /etc/containerd/certs.d/")
    parsed = tomllib.loads(config)
    assert parsed["proxy_plugins"]["dffs"] == {"type": "snapshot", "address": str(tmp_path / "snapshotter.sock")}
    cri = parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    assert cri == {"snapshotter": "dffs", "disable_snapshot_annotations": False}
    hosts_toml = tomllib.loads("# " + hosts)
    assert hosts_toml["server"] == "https://10.0.0.5:5000"
    assert hosts_toml["host"]["http://127.0.0.1:4001"]["capabilities"] == ["pull", "resolve"]


def test_pull_usage_errors_are_one_line_and_exit_2():
    result = dffs("image", "pull", "not a reference", "--containerd", "/nonexistent.sock")
    assert result.returncode == 2 and result.stderr.startswith("dffs: error: bad OCI reference"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = dffs("image", "pull")
    assert result.returncode == 2 and "--containerd" in result.stderr


def test_an_unreachable_registry_is_a_runtime_error(tmp_path):
    result = dffs("image", "pull", "127.0.0.1:1/x/y:z", "--containerd", str(tmp_path / "c.sock"), "--plain-http",
                  "--data-dir", str(tmp_path))  # fmt: skip
    assert result.returncode == 1 and "cannot reach registry 127.0.0.1:1" in result.stderr, result.stderr
