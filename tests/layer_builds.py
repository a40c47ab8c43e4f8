"""Real layers for the layer-format tests, and the oracle they are checked against.

- :func:`every_kind_tar` writes a tar with ``tarfile`` holding every member kind,
  PAX long names and xattrs, hard links, whiteouts and an opaque directory.
- :func:`extracted_tree` is the oracle: ``tarfile`` extracts the layer as root into a
  directory, the result is read back with ``os.lstat``/``readlink``, whiteouts are
  converted the way containerd's overlay unpacker converts them, and xattrs are taken
  from the members' PAX records (``tarfile`` does not set xattrs when it extracts).
- :func:`tree_through_layer` reads the same description through a
  :class:`dffs.layers.Layer`: every file's content in odd-sized reads.
- :func:`push_oci_image` makes an OCI layout of given layer blobs and pushes it with
  skopeo; :class:`RangeFetcher` reads a blob from the registry by HTTP Range, as a
  daemon's P2P task would, counting the bytes it asked for.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import trio

from dffs.layers import Kind, Layer

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def _member(archive: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = fields.pop("mtime", 1_700_000_000)
    for key, value in fields.items():
        setattr(info, key, value)
    archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def every_kind_tar(seed: int = 0, big: int = 3 << 20) -> bytes:
    """A PAX tar with every member kind a layer can have (see the module docstring)."""
    rng = random.Random(seed)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        _member(archive, "./", tarfile.DIRTYPE, mode=0o755)
        _member(archive, "etc/", tarfile.DIRTYPE, mode=0o755)
        _member(archive, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n", mode=0o644)
        _member(archive, "etc/shadow", data=b"root:*:19000::::::\n", mode=0o600, uid=0, gid=42)
        _member(archive, "bin/", tarfile.DIRTYPE, mode=0o755)
        _member(archive, "bin/busybox", data=rng.randbytes(200_000), mode=0o4755)
        _member(archive, "bin/sh", tarfile.SYMTYPE, linkname="busybox", mode=0o777)
        _member(archive, "bin/ls", tarfile.LNKTYPE, linkname="bin/busybox", mode=0o4755)
        _member(archive, "bin/cat", tarfile.LNKTYPE, linkname="bin/ls", mode=0o4755)
        _member(
            archive,
            "usr/bin/ping",
            data=b"\x7fELF ping",
            mode=0o755,
            pax_headers={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12},
        )
        _member(
            archive,
            "usr/share/" + "long-directory-name/" * 8 + "a-file-with-a-long-name-" + "x" * 120,
            data=b"long name\n",
            uid=1000,
            gid=1000,
            mode=0o640,
        )
        _member(
            archive,
            "usr/share/tagged",
            data=b"xattrs\n",
            pax_headers={"SCHILY.xattr.user.mime": "text/plain", "SCHILY.xattr.trusted.note": "kept"},
        )
        _member(archive, "usr/share/unicodé-✓.txt", data="ünïcode\n".encode())
        _member(archive, "usr/lib/big.bin", data=rng.randbytes(big), mode=0o644)
        _member(
            archive, "usr/lib/text.txt", data=b"".join(b"line %d of a compressible file\n" % i for i in range(60000))
        )
        _member(archive, "usr/lib/empty", data=b"")
        _member(archive, "dev/", tarfile.DIRTYPE, mode=0o755)
        _member(archive, "dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        _member(archive, "dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660, gid=6)
        _member(archive, "run/initctl", tarfile.FIFOTYPE, mode=0o600)
        _member(archive, "var/lib/.wh.removed", data=b"")
        _member(archive, "var/cache/", tarfile.DIRTYPE, mode=0o755)
        _member(archive, "var/cache/.wh..wh..opq", data=b"")
        _member(archive, "var/cache/fresh", data=b"only me\n")
        _member(archive, "opt/implied/deep/file", data=b"parents implied\n", mtime=1_600_000_000.5)
        _member(archive, "tmp/", tarfile.DIRTYPE, mode=0o1777)
        _member(archive, "etc/replaced", data=b"first version\n")
        _member(archive, "etc/replaced", data=b"second version wins\n")
    return out.getvalue()


def gzip_blob(tar: bytes, level: int = 6) -> bytes:
    return gzip.compress(tar, level, mtime=0)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -------------------------------------------------------------------- the oracle
def _xattrs_from_members(tar: bytes) -> dict[str, dict[bytes, bytes]]:
    found: dict[str, dict[bytes, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:*") as archive:
        for member in archive:
            path = os.path.normpath(member.name).lstrip("/")
            path = "" if path == "." else path
            found[path] = {
                key[len("SCHILY.xattr.") :].encode("utf-8", "surrogateescape"): value.encode("utf-8", "surrogateescape")
                for key, value in member.pax_headers.items()
                if key.startswith("SCHILY.xattr.")
            }
    return found


def extracted_tree(tar: bytes, workdir: Path) -> dict[str, dict]:
    """What overlayfs would find in the layer's directory, by extraction (see above)."""
    root = Path(workdir) / "extracted"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:*") as archive:
        archive.extractall(root, numeric_owner=True, filter="fully_trusted")
    xattrs = _xattrs_from_members(tar)
    tree: dict[str, dict] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [""] if dirpath == str(root) else []:
            tree[name] = _describe(root, Path(dirpath))
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            tree[rel] = _describe(root, full)
    # containerd's overlay conversion of whiteouts (OverlayConvertWhiteout)
    for rel in sorted(tree):
        base = rel.rpartition("/")[2]
        parent = rel.rpartition("/")[0]
        if base == OPAQUE:
            del tree[rel]
            tree[parent]["xattrs"][b"trusted.overlay.opaque"] = b"y"
        elif base.startswith(WHITEOUT):
            info = tree.pop(rel)
            hidden = f"{parent}/{base[len(WHITEOUT) :]}" if parent else base[len(WHITEOUT) :]
            tree[hidden] = dict(info, kind=Kind.CHAR, mode=0, size=0, data=None, dev=(0, 0), link=None, mtime=None)
    groups: dict[int, list[str]] = {}
    for rel, info in tree.items():
        if info["kind"] is not Kind.DIR and info["nlink"] > 1:
            groups.setdefault(info["ino"], []).append(rel)
    for rel, info in tree.items():
        info["xattrs"].update(xattrs.get(rel, {}))
        ino = info.pop("ino")
        info["same_as"] = min(groups[ino]) if ino in groups else None
    return tree


def _describe(root: Path, path: Path) -> dict:
    st = os.lstat(path)
    kinds = {
        stat.S_IFREG: Kind.REG,
        stat.S_IFDIR: Kind.DIR,
        stat.S_IFLNK: Kind.SYMLINK,
        stat.S_IFCHR: Kind.CHAR,
        stat.S_IFBLK: Kind.BLOCK,
        stat.S_IFIFO: Kind.FIFO,
    }
    kind = kinds[stat.S_IFMT(st.st_mode)]
    info = {
        "kind": kind,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "size": st.st_size if kind is Kind.REG else 0,
        "data": path.read_bytes() if kind is Kind.REG else None,
        "link": os.readlink(path) if kind is Kind.SYMLINK else None,
        "dev": (os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in (Kind.CHAR, Kind.BLOCK) else (0, 0),
        "nlink": st.st_nlink,
        "xattrs": {},
        # tarfile sets no symlink times; directories change as their children land
        "mtime": int(st.st_mtime) if kind not in (Kind.DIR, Kind.SYMLINK) else None,
        "ino": st.st_ino,
    }
    return info


async def tree_through_layer(layer: Layer, *, seed: int = 0) -> dict[str, dict]:
    """The same description as :func:`extracted_tree`, through ``layer`` only."""
    rng = random.Random(seed)
    index = layer.index
    tree: dict[str, dict] = {}
    names: dict[str, list[str]] = {}
    for entry in index:
        names.setdefault(index.resolve(entry).path, []).append(entry.path)
    for entry in index:
        target = index.resolve(entry)
        data = None
        if target.kind is Kind.REG:
            parts, offset = [], 0
            while offset < target.size:
                size = rng.choice([1, 511, 4096, 128 << 10, 1 << 20])
                piece = await layer.read(entry, offset, size)
                assert piece, f"short read of {entry.path} at {offset}"
                parts.append(piece)
                offset += len(piece)
            data = b"".join(parts)
            assert await layer.read(entry, target.size, 10) == b""
        nlink = index.nlink(entry)
        same_as = min(names[target.path]) if target.kind is not Kind.DIR and nlink > 1 else None
        tree[entry.path] = {
            "kind": target.kind,
            "mode": target.mode,
            "uid": target.uid,
            "gid": target.gid,
            "size": target.size,
            "data": data,
            "link": target.link_target if target.kind is Kind.SYMLINK else None,
            "dev": (target.devmajor, target.devminor),
            "nlink": nlink,
            "xattrs": dict(target.xattrs),
            "mtime": int(target.mtime) if target.kind not in (Kind.DIR, Kind.SYMLINK) else None,
            "same_as": same_as,
        }
    return tree


def assert_same_tree(expected: dict[str, dict], actual: dict[str, dict], *, mtime_slack: int = 0) -> None:
    """Equal trees; ``mtime_slack`` seconds allowed (eStargz TOCs round times to seconds)."""
    assert sorted(actual) == sorted(expected), (sorted(set(actual) ^ set(expected)))[:20]
    for path in expected:
        want = dict(expected[path])
        got = dict(actual[path])
        if "mtime" not in want or want["mtime"] is None:  # whiteouts and dirs: time of extraction
            got.pop("mtime", None)
            want.pop("mtime", None)
        if mtime_slack and "mtime" in want and abs(got["mtime"] - want["mtime"]) <= mtime_slack:
            got["mtime"] = want["mtime"]
        for key in want:
            assert got[key] == want[key], (
                f"{path!r}: {key} is {str(got[key])[:80]}, extraction says {str(want[key])[:80]}"
            )


# ---------------------------------------------------------------- images, fetch
def push_oci_image(registry, repo: str, tag: str, layers: list[tuple[bytes, str, bytes]], workdir: Path) -> dict:
    """Push an image of ``layers`` = [(blob, media type, uncompressed tar)] with skopeo;
    returns the manifest as the registry serves it."""
    layout = Path(workdir) / f"layout-{repo.replace('/', '_')}-{tag}"
    shutil.rmtree(layout, ignore_errors=True)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = sha256(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest

    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/busybox", "true"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(tar) for _, _, tar in layers]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(config),
                "size": len(config),
            },
            "layers": [{"mediaType": kind, "digest": put(blob), "size": len(blob)} for blob, kind, _ in layers],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": put(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    subprocess.run(
        registry.command(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                f"oci:{layout}:{tag}",
                f"docker://{registry.address}/{repo}:{tag}",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return registry.get_manifest(repo, tag)[1]


class RangeFetcher:
    """``await fetcher(offset, length)``: bytes of one blob by HTTP Range from the registry."""

    def __init__(self, registry, repo: str, digest: str) -> None:
        self.host, self.port = registry.host, registry.port
        self.path = f"/v2/{repo}/blobs/{digest}"
        self.requested = 0
        self.requests = 0

    def _get(self, offset: int, length: int) -> bytes:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request("GET", self.path, headers={"Range": f"bytes={offset}-{offset + length - 1}"})
            response = connection.getresponse()
            body = response.read()
            if response.status != 206:
                raise OSError(f"registry answered {response.status} to a range request")
            return body
        finally:
            connection.close()

    async def __call__(self, offset: int, length: int) -> bytes:
        self.requested += length
        self.requests += 1
        return await trio.to_thread.run_sync(self._get, offset, length)


class ctr_remote:  # noqa: N801  (a namespace of commands)
    """``ctr-remote`` (Debian's stargz-snapshotter) against a test containerd."""

    @staticmethod
    def run(containerd, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            ["ctr-remote", "--address", containerd.address, *args], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise AssertionError(f"ctr-remote {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    @classmethod
    def convert(cls, containerd, src: str, dst: str, *options: str) -> None:
        """Pull ``src``, convert it with ``options`` into ``dst`` and push that (plain HTTP)."""
        cls.run(containerd, "images", "pull", "--plain-http", src)
        cls.run(containerd, "images", "convert", *options, "--oci", src, dst)
        cls.run(containerd, "images", "push", "--plain-http", dst)
