"""``dffs image containerd-config``: what an operator adds to containerd for dffs (pure text).

Like Dragonfly's ``dfinit``: the proxy-plugin table that makes ``dffs`` a
snapshotter, and a ``hosts.toml`` that sends a registry's pulls through the
daemon's registry mirror (so even non-lazy pulls share bytes through P2P).
"""

from __future__ import annotations

from pathlib import Path


def proxy_plugin(data_dir: Path, name: str = "dffs") -> str:
    return (
        "# containerd config.toml (version 2): the dffs snapshotter as a proxy plugin\n"
        f"[proxy_plugins.{name}]\n"
        '  type = "snapshot"\n'
        f'  address = "{data_dir / "snapshotter.sock"}"\n'
        "\n"
        "# For Kubernetes (CRI): the snapshotter, and the layer labels lazy mounts need\n"
        '[plugins."io.containerd.grpc.v1.cri".containerd]\n'
        f'  snapshotter = "{name}"\n'
        "  disable_snapshot_annotations = false\n"
    )


def hosts_toml(registry: str, mirror: str, scheme: str = "https") -> str:
    return (
        f'# /etc/containerd/certs.d/{registry}/hosts.toml ([plugins."io.containerd.grpc.v1.cri".registry]\n'
        '# config_path = "/etc/containerd/certs.d"): pulls go through the dffs registry mirror\n'
        f'server = "{scheme}://{registry}"\n'
        f'[host."{mirror}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )
