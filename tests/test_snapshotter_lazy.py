"""Lazily served layers under a real containerd 1.6 + runc, on one host (loopback).

``dffs image pull`` prepares every layer with its labels; the dffs snapshotter
mounts each layer as a directory of its FUSE mount (answering ALREADY_EXISTS)
and containerd runs the container on an overlay of those directories. The
same image is also pulled with containerd's own overlayfs snapshotter, and
each lazily mounted layer directory must hold exactly what containerd
unpacked for that layer: names, types, modes, owners, sizes, contents,
symlink targets, hard links, device numbers, xattrs, whiteouts (char 0/0)
and opaque directories (``trusted.overlay.opaque``).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from layer_images import build_rich_image, convert_estargz, tree_of
from registry import Registry
from snapshotter_env import SnapshotterHost

MiB = 1024 * 1024
#: What an eStargz blob holds besides the layer's files; containerd unpacks them, lazy mounts
#: (dffs's, like stargz-snapshotter's) present only the layer's own files.
ESTARGZ_EXTRAS = {"stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark"}


@pytest.fixture
def registry(tmp_path):
    with Registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def host(tmp_path):
    config = tmp_path / "daemon.toml"
    config.write_text("[snapshotter]\nprefetch_delay = 600\n")  # bytes read on demand only, in these tests
    host = SnapshotterHost(tmp_path, "h1", extra=("--config", str(config)))
    try:
        yield host.start()
    finally:
        host.close()


def overlayfs_layers(host: SnapshotterHost, image) -> list[dict]:
    """The trees containerd's own overlayfs snapshotter unpacked for ``image``, bottom layer first."""
    host.ctr("images", "pull", "--plain-http", "--snapshotter", "overlayfs", image.ref)
    root = host.containerd.root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    dirs = sorted((p for p in root.iterdir() if (p / "fs").is_dir()), key=lambda p: int(p.name))
    return [tree_of(d / "fs") for d in dirs]


def lazy_layers(host: SnapshotterHost, image) -> list[dict]:
    return [tree_of(host.layers_dir / digest.removeprefix("sha256:")) for digest in image.layers]


def _strip(tree: dict, names: set[str]) -> dict:
    return {k: v for k, v in tree.items() if k not in names}


@pytest.mark.slow
def test_a_gzip_image_runs_lazily_and_each_layer_is_what_containerd_unpacks(registry, host):
    image = build_rich_image(registry, "test/rich", "v1", payload_bytes=4 * MiB)
    out = host.image_pull(image.ref).stdout
    assert "lazy=3" in out and "unpacked=0" in out, (out, host.daemon.output()[-3000:])
    assert image.message in host.run(image.ref, "lazy1")
    lazy = lazy_layers(host, image)
    assert lazy == overlayfs_layers(host, image)
    # the whiteout and the opaque directory as overlayfs expects them, hard links shared
    assert lazy[1]["etc/old"][0] == 0o020000 and lazy[1]["etc/old"][7] == (0, 0)
    assert ("trusted.overlay.opaque", b"y") in lazy[1]["opt/stuff"][9]
    assert lazy[0]["bin/ash"][8] == lazy[0]["bin/busybox"][8] == "bin/ash"
    # the merged view a container sees: the deleted file and the hidden directory entries are gone
    listing = host.run(image.ref, "lazy2", "/bin/busybox", "ls", "/etc", "/opt/stuff")
    assert "old" not in listing.split() and "a" not in listing.split() and "c" in listing.split(), listing
    # the image removed: containerd's GC removes its snapshots here, and the layers leave the mount
    host.ctr("images", "rm", "--sync", image.ref)
    assert os.listdir(host.layers_dir) == [], host.daemon.output()[-2000:]


@pytest.mark.slow
def test_an_estargz_image_reads_only_what_the_container_needs(registry, host):
    plain = build_rich_image(registry, "test/esgz", "v1", payload_bytes=24 * MiB)
    image = convert_estargz(host.containerd, registry, plain, "v1-esgz")
    host.ctr("images", "rm", plain.ref)
    before = host.downloaded()
    out = host.image_pull(image.ref).stdout
    assert "lazy=3" in out, (out, host.daemon.output()[-3000:])
    assert image.message in host.run(image.ref, "esgz1")
    fetched = host.downloaded() - before
    total = sum(image.sizes[d] for d in image.layers)
    # per-layer metrics: busybox's layer was read on demand, the big payload's hardly at all
    busybox, payload = image.layers[0], image.layers[2]
    assert host.metric("dffs_daemon_layer_on_demand_bytes_total", layer=busybox) > 0
    assert host.metric("dffs_daemon_layer_present_ratio", layer=busybox) > 0.5
    assert host.metric("dffs_daemon_layer_present_ratio", layer=payload) < 0.2
    print(f"estargz, one host: fetched {fetched:.0f} of {total} image bytes ({100 * fetched / total:.1f} %)")
    assert fetched <= 0.10 * total, (fetched, total)
    lazy = [_strip(t, ESTARGZ_EXTRAS) for t in lazy_layers(host, image)]
    assert lazy == [_strip(t, ESTARGZ_EXTRAS) for t in overlayfs_layers(host, image)]


def _push_broken_image(registry: Registry, repo: str, layer: bytes) -> str:
    """An image whose only layer blob is ``layer`` (pushed as is: its digest is right, its bytes are not a layer)."""
    layer_digest = registry.push_blob(repo, layer)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}
    ).encode()
    config_digest = registry.push_blob(repo, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": len(layer)}],
    }  # fmt: skip
    body = json.dumps(manifest).encode()
    path = registry.workdir / "manifest.json"
    path.write_bytes(body)
    import subprocess

    subprocess.run(
        registry.command(
            ["curl", "-sf", "-X", "PUT", "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json",
             "--data-binary", f"@{path}", f"{registry.url}/v2/{repo}/manifests/v1"]
        ),
        check=True, capture_output=True,
    )  # fmt: skip
    return f"{registry.address}/{repo}:v1"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_a_bad_layer_blob_is_a_clear_error_and_the_daemon_lives_on(registry, host, kind):
    good = gzip.compress(b"".join(t for t in [os.urandom(1 << 20)]))
    layer = good[: len(good) // 2] if kind == "truncated" else hashlib.sha512(b"x").digest() * 1000
    ref = _push_broken_image(registry, f"test/{kind}", layer)
    result = host.image_pull(ref, check=False)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dffs: error:"), result.stderr
    assert host.daemon.alive(), host.daemon.output()[-3000:]
    # and the snapshotter still serves: a good image pulls and runs
    image = build_rich_image(registry, "test/after", "v1", payload_bytes=1 * MiB)
    host.image_pull(image.ref)
    assert image.message in host.run(image.ref, f"after-{kind}")


@pytest.mark.slow
def test_one_fuse_session_serves_the_url_namespace_and_the_layers(tmp_path, registry, nginx_origin, make_file):
    """``--mount`` with ``--snapshotter``: URLs under MOUNT/http/..., layers under MOUNT/.layers, one FUSE mount."""
    files = tmp_path / "files"
    digest = make_file(files / "blob.bin", 3 * MiB)
    origin = nginx_origin(files)
    host = SnapshotterHost(tmp_path, "both", mount=True)
    try:
        host.start()
        image = build_rich_image(registry, "test/both", "v1", payload_bytes=1 * MiB)
        assert "lazy=3" in host.image_pull(image.ref).stdout
        assert image.message in host.run(image.ref, "both1")
        url_file = host.daemon.path("/blob.bin", origin)
        assert hashlib.sha256(url_file.read_bytes()).hexdigest() == digest
        assert (host.layers_dir / image.layers[1].removeprefix("sha256:") / "etc" / "message").read_text() == (
            image.message + "\n"
        )
        assert ".layers" not in os.listdir(host.daemon.mountpoint)  # hidden from the namespace's listing
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        assert mounts.count(str(host.daemon.mountpoint)) == 1 and str(host.layers_dir) not in mounts
    finally:
        host.close()


@pytest.mark.slow
def test_a_read_the_swarm_cannot_answer_fails_with_eio_after_its_timeout(tmp_path, registry):
    config = tmp_path / "daemon.toml"
    config.write_text("[snapshotter]\nprefetch = false\nread_timeout = 3\n")
    host = SnapshotterHost(tmp_path, "slow", extra=("--config", str(config)))
    try:
        host.start()
        plain = build_rich_image(registry, "test/stall", "v1", payload_bytes=8 * MiB)
        image = convert_estargz(host.containerd, registry, plain, "v1-esgz")
        assert "lazy=3" in host.image_pull(image.ref).stdout
        big = host.layers_dir / image.layers[2].removeprefix("sha256:") / "data" / "big.bin"
        os.kill(registry.proc.pid, signal.SIGSTOP)  # the only source of the bytes stalls
        try:
            with pytest.raises(OSError) as info:
                with open(big, "rb") as f:
                    f.read(4096)
            assert info.value.errno == errno.EIO
            log = host.daemon_log_waits_for("event=layer_read_failed")
            assert "timed out after 3s" in log, log[-2000:]
            assert host.daemon.alive()
        finally:
            os.kill(registry.proc.pid, signal.SIGCONT)
        with open(big, "rb") as f:  # the next read tries again, and the registry answers
            assert len(f.read(4096)) == 4096
    finally:
        host.close()


@pytest.mark.slow
def test_ctr_remote_rpull_labels_are_enough_for_a_lazy_mount(registry, host):
    """stargz-snapshotter's client sends the reference and layer digest: dffs mounts from those."""
    plain = build_rich_image(registry, "test/rpull", "v1", payload_bytes=2 * MiB)
    image = convert_estargz(host.containerd, registry, plain, "v1-esgz")
    host.ctr("images", "rm", plain.ref, image.ref)
    result = subprocess.run(
        ["ctr-remote", "--address", host.containerd.address, "images", "rpull", "--plain-http",
         "--snapshotter", "dffs", image.ref],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert image.message in host.run(image.ref, "rpull1")
    assert host.daemon.output().count("event=remote_snapshot_committed") == 3
    assert sorted(os.listdir(host.layers_dir)) == sorted(d.removeprefix("sha256:") for d in image.layers)
