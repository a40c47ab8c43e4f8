"""Test images whose layers hold every kind of tar entry, built offline and pushed to a real registry.

Layers are written with Python's ``tarfile`` (so the test controls every
header: owners, modes, PAX xattrs, hard links, devices, fifos, whiteouts and
opaque directories), gzipped, laid out as an OCI image layout by hand and
pushed with ``skopeo``; ``convert_estargz`` converts an image with Debian's
``ctr-remote image convert --estargz --oci`` through a containerd and pushes
the result. :func:`tree_of` describes a directory tree completely (names,
types, modes, owners, sizes, content digests, symlink targets, hard-link
groups, device numbers, every xattr) so two trees can be compared with ``==``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

from registry import Image, Registry

MiB = 1024 * 1024


def _add(tar: tarfile.TarFile, name: str, kind: bytes, *, data: bytes = b"", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = fields.pop("mode", 0o644)
    info.uid = fields.pop("uid", 0)
    info.gid = fields.pop("gid", 0)
    info.mtime = fields.pop("mtime", 1_700_000_000)
    info.linkname = fields.pop("linkname", "")
    info.devmajor = fields.pop("devmajor", 0)
    info.devminor = fields.pop("devminor", 0)
    info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in fields.pop("xattrs", {}).items()}
    assert not fields, fields
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _layer(build) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return raw.getvalue()


def rich_layers(message: str, payload_bytes: int) -> list[bytes]:
    """Uncompressed tars: busybox and every entry kind; whiteouts and an opaque dir; a big payload."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()

    def base(tar):
        _add(tar, "bin", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "bin/busybox", tarfile.REGTYPE, data=busybox, mode=0o755)
        _add(tar, "bin/sh", tarfile.SYMTYPE, linkname="busybox", mode=0o777)
        _add(
            tar, "bin/ash", tarfile.LNKTYPE, linkname="bin/busybox", mode=0o755
        )  # a hard link header carries the mode too
        _add(tar, "etc", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "etc/old", tarfile.REGTYPE, data=b"to be deleted\n")
        _add(tar, "etc/secret", tarfile.REGTYPE, data=b"s3cr3t\n", mode=0o600, uid=1000, gid=1001)
        _add(tar, "etc/tagged", tarfile.REGTYPE, data=b"x\n", xattrs={"user.dffs.test": "hello"})
        _add(tar, "dev", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
        _add(tar, "dev/loop9", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=9, gid=6)
        _add(tar, "run", tarfile.DIRTYPE, mode=0o1777)
        _add(tar, "run/pipe", tarfile.FIFOTYPE, mode=0o620)
        _add(tar, "opt/stuff", tarfile.DIRTYPE, mode=0o750, uid=5, gid=5)  # opt/ only implied
        _add(tar, "opt/stuff/a", tarfile.REGTYPE, data=b"a\n")
        _add(tar, "opt/stuff/b", tarfile.REGTYPE, data=b"b\n")
        _add(tar, "srv/" + "long-name-" * 12 + "end", tarfile.REGTYPE, data=b"pax long name\n")

    def changes(tar):
        _add(tar, "etc", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "etc/.wh.old", tarfile.REGTYPE)  # a whiteout: etc/old deleted
        _add(tar, "etc/message", tarfile.REGTYPE, data=(message + "\n").encode())
        _add(tar, "opt/stuff", tarfile.DIRTYPE, mode=0o750, uid=5, gid=5)
        _add(tar, "opt/stuff/.wh..wh..opq", tarfile.REGTYPE)  # opaque: a and b hidden
        _add(tar, "opt/stuff/c", tarfile.REGTYPE, data=b"c\n")

    def payload(tar):
        _add(tar, "data", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "data/small.txt", tarfile.REGTYPE, data=b"small file in a big layer\n")
        _add(tar, "data/big.bin", tarfile.REGTYPE, data=os.urandom(payload_bytes))

    return [_layer(base), _layer(changes), _layer(payload)]


def _blob(directory: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (directory / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def build_rich_image(
    registry: Registry, repo: str, tag: str, *, message: str = "hello from a rich image", payload_bytes: int = 8 * MiB
) -> Image:
    """Build the image as an OCI layout and push it; returns what was pushed."""
    work = registry.workdir / f"rich-{repo.replace('/', '_')}-{tag}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "blobs" / "sha256").mkdir(parents=True)
    tars = rich_layers(message, payload_bytes)
    layers = []
    for raw in tars:
        layer = _blob(work, gzip.compress(raw, compresslevel=6, mtime=0))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer})
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/busybox", "cat", "/etc/message"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]},
    }
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(work, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}
    manifest |= {"config": config_desc, "layers": layers}
    manifest_desc = _blob(work, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (work / "index.json").write_text(json.dumps(index))
    (work / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    subprocess.run(
        registry.command(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{work}:{tag}",
             f"docker://{registry.address}/{repo}:{tag}"]
        ),
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return _pushed(registry, repo, tag, message)


def _pushed(registry: Registry, repo: str, tag: str, message: str) -> Image:
    digest, manifest = registry.get_manifest(repo, tag)
    return Image(
        ref=f"{registry.address}/{repo}:{tag}",
        repo=repo,
        tag=tag,
        manifest_digest=digest,
        config_digest=manifest["config"]["digest"],
        layers=tuple(layer["digest"] for layer in manifest["layers"]),
        message=message,
        sizes={d["digest"]: d["size"] for d in (manifest["config"], *manifest["layers"])},
    )


def convert_estargz(containerd, registry: Registry, image: Image, tag: str) -> Image:
    """``ctr-remote image convert --estargz --oci`` in ``containerd`` (a tests.containerd.Containerd), pushed."""
    return convert(containerd, registry, image, tag, "--estargz")


def convert(containerd, registry: Registry, image: Image, tag: str, *flags: str) -> Image:
    """``ctr-remote image convert FLAGS --oci`` (``--estargz``, ``--zstdchunked``, ...), pushed as ``tag``."""
    target = f"{registry.address}/{image.repo}:{tag}"

    def ctr_remote(*args: str) -> None:
        result = subprocess.run(
            containerd.command(["ctr-remote", "--address", containerd.address, *args]),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, (args, result.stdout, result.stderr)

    ctr_remote("images", "pull", "--plain-http", image.ref)
    ctr_remote("image", "convert", *flags, "--oci", image.ref, target)
    ctr_remote("images", "push", "--plain-http", target)
    return _pushed(registry, image.repo, tag, image.message)


def tree_of(root: Path) -> dict[str, tuple]:
    """Everything about every entry under ``root``, keyed by relative path."""
    root = Path(root)
    out: dict[str, tuple] = {}
    inodes: dict[tuple[int, int], str] = {}
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(directory) / name
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            xattrs = {}
            for key in sorted(os.listxattr(path, follow_symlinks=False)):
                xattrs[key] = os.getxattr(path, key, follow_symlinks=False)
            kind = stat.S_IFMT(st.st_mode)
            content = ""
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
            rdev = (os.major(st.st_rdev), os.minor(st.st_rdev)) if stat.S_ISCHR(kind) or stat.S_ISBLK(kind) else ()
            size = st.st_size if stat.S_ISREG(st.st_mode) else None
            first = ""
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                first = inodes.setdefault((st.st_dev, st.st_ino), rel)  # hard links name their group
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, content, link, rdev, first,
                        tuple(xattrs.items()))  # fmt: skip
    return out
