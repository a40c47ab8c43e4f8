"""A real OCI registry for tests: Debian's ``docker-registry`` (distribution 2.8).

``Registry(workdir, host, port, netns_host)`` runs ``docker-registry serve``
with filesystem storage under ``workdir`` (inside a network namespace when
``netns_host`` — a ``netns.Host`` — is given), and counts what it sent from its
access log (Apache combined format: method, path, status, bytes)::

    with Registry(tmp_path / "reg") as reg:
        image = build_busybox_image(reg, "test/busybox", "v1", layers=2)
        ...
        assert reg.blob_gets(image.layers[0]) == 1

:func:`build_busybox_image` builds an image offline — ``umoci`` layers over
busybox-static, the config's command prints a message — and pushes it with
``skopeo``. :meth:`Registry.push_blob` uploads raw bytes as a blob (for range
tests that want a blob of a given size without an image).

Every process started here is killed by :meth:`Registry.close` (also on failure).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import attrs

_ACCESS_RE = re.compile(
    r"^(?P<client>\S+) \S+ \S+ \[[^\]]*\] "
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+|-)'
)
_LISTENING_RE = re.compile(r'msg="listening on (?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:"]*)):(?P<port>\d+)"')

MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json"


@attrs.frozen
class Access:
    client: str
    method: str
    path: str
    status: int
    bytes: int


@attrs.frozen
class Image:
    ref: str  # HOST:PORT/REPO:TAG
    repo: str
    tag: str
    manifest_digest: str
    config_digest: str
    layers: tuple[str, ...]
    message: str
    #: Size in bytes of every blob (config and layers), by digest.
    sizes: dict = attrs.field(factory=dict, eq=False)

    @property
    def blobs(self) -> tuple[str, ...]:
        """Every blob a pull fetches: the config and the layers."""
        return (self.config_digest, *self.layers)


class Registry:
    def __init__(self, workdir: Path, host: str = "127.0.0.1", port: int = 0, netns_host=None):
        self.workdir = Path(workdir)
        self.host = host
        self.port = port
        self.netns_host = netns_host
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "registry.log"

    # ------------------------------------------------------------ process
    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run where the registry is reachable (its namespace, if any)."""
        return self.netns_host.command(argv) if self.netns_host is not None else argv

    def start(self, timeout: float = 20) -> Registry:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "storage").mkdir(exist_ok=True)
        config = self.workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.workdir / 'storage'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}:{self.port}\n"
        )
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.command(["docker-registry", "serve", str(config)]), stdout=log, stderr=log, start_new_session=True
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            match = _LISTENING_RE.search(self._log_text())
            if match:
                self.port = int(match.group("port"))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self._log_text()[-2000:]
                self.close()
                raise RuntimeError(f"docker-registry did not start:\n{output}")
            time.sleep(0.05)
        self._wait_ready(deadline)
        return self

    def _wait_ready(self, deadline: float) -> None:
        while True:
            result = subprocess.run(
                self.command(["curl", "-sf", "-o", "/dev/null", f"{self.url}/v2/"]), capture_output=True
            )
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry at {self.url} does not answer /v2/")
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    # --------------------------------------------------------- access log
    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def accesses(self) -> list[Access]:
        result = []
        for line in self._log_text().splitlines():
            match = _ACCESS_RE.search(line)
            if match and "msg=" not in line:
                size = match.group("bytes")
                result.append(
                    Access(
                        match.group("client"),
                        match.group("method"),
                        match.group("path"),
                        int(match.group("status")),
                        0 if size == "-" else int(size),
                    )
                )
        return result

    def _blob_accesses(self, digest: str) -> list[Access]:
        return [
            a
            for a in self.accesses()
            if a.method == "GET" and a.status in (200, 206) and a.path.split("?")[0].endswith(f"/blobs/{digest}")
        ]

    def blob_gets(self, digest: str) -> int:
        """GET requests for blob ``digest`` that the registry answered with bytes (200/206)."""
        return len(self._blob_accesses(digest))

    def blob_bytes(self, digest: str) -> int:
        """Body bytes the registry sent for blob ``digest``."""
        return sum(a.bytes for a in self._blob_accesses(digest))

    def blob_clients(self, digest: str) -> set[str]:
        """Addresses the registry sent blob ``digest`` to."""
        return {a.client for a in self._blob_accesses(digest)}

    def egress(self) -> int:
        """Every body byte the registry sent (blobs, manifests, errors)."""
        return sum(a.bytes for a in self.accesses() if a.method == "GET")

    # -------------------------------------------------------------- pushes
    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload ``data`` as a blob of ``repo`` (monolithic upload); returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blob = self.workdir / f"upload-{digest[7:19]}"
        blob.write_bytes(data)
        try:
            out = subprocess.run(
                self.command(["curl", "-sS", "-f", "-i", "-X", "POST", f"{self.url}/v2/{repo}/blobs/uploads/"]),
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            location = re.search(r"(?im)^location:\s*(\S+)", out).group(1)
            if location.startswith("/"):
                location = self.url + location
            separator = "&" if "?" in location else "?"
            subprocess.run(
                self.command(
                    [
                        "curl",
                        "-sS",
                        "-f",
                        "-o",
                        "/dev/null",
                        "-X",
                        "PUT",
                        "-H",
                        "Content-Type: application/octet-stream",
                        "--data-binary",
                        f"@{blob}",
                        f"{location}{separator}digest={digest}",
                    ]
                ),
                check=True,
                capture_output=True,
            )
        finally:
            blob.unlink(missing_ok=True)
        return digest

    def get_manifest(self, repo: str, reference: str) -> tuple[str, dict]:
        """The manifest's digest and document, as the registry serves it."""
        raw = subprocess.run(
            self.command(
                ["curl", "-sS", "-f", "-H", f"Accept: {MANIFEST_TYPES}", f"{self.url}/v2/{repo}/manifests/{reference}"]
            ),
            check=True,
            capture_output=True,
        ).stdout
        return "sha256:" + hashlib.sha256(raw).hexdigest(), json.loads(raw)


def build_busybox_image(
    registry: Registry,
    repo: str,
    tag: str,
    *,
    layers: int = 2,
    message: str | None = None,
    payload_bytes: int = 64 * 1024,
    workdir: Path | None = None,
) -> Image:
    """Build an image offline and push it to ``registry``; returns its digests.

    Layer 1 holds ``/bin/busybox`` (busybox-static), layer 2 ``/etc/message``,
    layers 3.. one random (incompressible) file of ``payload_bytes`` each. The
    image's command is ``busybox cat /etc/message``, so ``ctr run`` prints
    ``message``.
    """
    if layers < 2:
        raise ValueError("layers must be at least 2 (busybox, message)")
    message = message or f"hello from {repo}:{tag}"
    work = Path(workdir or registry.workdir / f"build-{repo.replace('/', '_')}-{tag}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    layout = work / "layout"
    image = f"{layout}:{tag}"

    def umoci(*args: str) -> None:
        subprocess.run(["umoci", *args], check=True, capture_output=True)

    umoci("init", "--layout", str(layout))
    umoci("new", "--image", image)
    for index in range(1, layers + 1):
        bundle = work / f"bundle{index}"
        umoci("unpack", "--rootless", "--image", image, str(bundle))
        rootfs = bundle / "rootfs"
        if index == 1:
            (rootfs / "bin").mkdir(parents=True, exist_ok=True)
            shutil.copy2(shutil.which("busybox") or "/bin/busybox", rootfs / "bin" / "busybox")
        elif index == 2:
            (rootfs / "etc").mkdir(parents=True, exist_ok=True)
            (rootfs / "etc" / "message").write_text(message + "\n")
        else:
            (rootfs / f"payload{index}.bin").write_bytes(os.urandom(payload_bytes))
        umoci("repack", "--image", image, str(bundle))
        shutil.rmtree(bundle, ignore_errors=True)
    umoci(
        "config",
        "--image",
        image,
        "--config.cmd",
        "/bin/busybox",
        "--config.cmd",
        "cat",
        "--config.cmd",
        "/etc/message",
    )
    subprocess.run(
        registry.command(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                f"oci:{image}",
                f"docker://{registry.address}/{repo}:{tag}",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    digest, manifest = registry.get_manifest(repo, tag)
    shutil.rmtree(work, ignore_errors=True)
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
