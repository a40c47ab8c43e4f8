"""The dffs snapshotter under a real containerd 1.6 + runc.

containerd talks to ``dffs daemon --snapshotter`` as a proxy snapshot plugin;
images come from a real docker-registry (built offline with umoci + busybox).
These tests use no lazy layers: plain ``ctr images pull --snapshotter dffs``
sends no layer labels, and zstd layers have no lazy reader, so every layer is
unpacked by containerd into the snapshotter's ordinary directories, and
containers run on overlay mounts.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from layer_images import convert
from registry import Registry, build_busybox_image
from snapshotter_env import SnapshotterHost


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


@pytest.mark.slow
def test_plain_pull_and_run_through_the_snapshotter(registry, host):
    image = build_busybox_image(registry, "test/plain", "v1", layers=3, message="hello from the dffs snapshotter")
    host.ctr("images", "pull", "--plain-http", "--snapshotter", "dffs", image.ref)
    out = host.run(image.ref, "plain1")
    assert image.message in out
    # containerd's view of our snapshots: three committed layers in one chain
    listing = host.ctr("snapshots", "--snapshotter", "dffs", "ls").stdout
    committed = [line for line in listing.splitlines() if "Committed" in line]
    assert len(committed) == 3, listing
    # and a container's writable layer on top, written through overlay, gone with it
    host.ctr("run", "--snapshotter", "dffs", image.ref, "plain2", "/bin/busybox", "sh", "-c", "echo x > /written")
    assert "plain2" in host.ctr("snapshots", "--snapshotter", "dffs", "ls").stdout
    host.ctr("containers", "rm", "plain2")
    assert "plain2" not in host.ctr("snapshots", "--snapshotter", "dffs", "ls").stdout
    # the image removed: containerd's GC removes the layers from the snapshotter too
    host.ctr("images", "rm", "--sync", image.ref)
    host.ctr("content", "prune", "references", check=False)
    listing = host.ctr("snapshots", "--snapshotter", "dffs", "ls").stdout
    assert not [line for line in listing.splitlines() if "Committed" in line], listing


def _dffs(*args: str, timeout: float = 180) -> str:
    result = subprocess.run([sys.executable, "-m", "dffs", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


@pytest.mark.slow
def test_dffs_image_pull_unpacks_what_cannot_be_lazy(registry, host):
    # zstd layers have no lazy reader: every labelled Prepare gets ordinary mounts
    # back and `dffs image pull` has containerd's differ unpack into them.
    plain = build_busybox_image(registry, "test/pulled", "v1", layers=3, message="pulled by dffs image pull")
    image = convert(host.containerd, registry, plain, "zstd", "--zstdchunked")  # zstd:chunked layers
    host.ctr("images", "rm", plain.ref, image.ref)  # pulled and converted in this containerd: forget them
    _, manifest = registry.get_manifest(image.repo, "zstd")
    assert all("zstd" in layer["mediaType"] for layer in manifest["layers"]), manifest
    out = _dffs("image", "pull", image.ref, "--containerd", host.containerd.address, "--plain-http")
    assert "unpacked=3" in out and "lazy=0" in out, out
    assert image.message in host.run(image.ref, "pulled1")
    # pulled again: every chain is already there
    out = _dffs("image", "pull", image.ref, "--containerd", host.containerd.address, "--plain-http")
    assert "present=3" in out, out
    # the labels reached the snapshotter (containerd passes containerd.io/snapshot/* through)
    info = host.ctr("snapshots", "--snapshotter", "dffs", "info", _top_chain(host)).stdout
    assert "containerd.io/snapshot.ref" in info, info


def _top_chain(host) -> str:
    listing = host.ctr("snapshots", "--snapshotter", "dffs", "ls").stdout.splitlines()[1:]
    parents = {line.split()[1] for line in listing if len(line.split()) > 2}
    tops = [line.split()[0] for line in listing if "Committed" in line and line.split()[0] not in parents]
    assert len(tops) == 1, listing
    return tops[0]
