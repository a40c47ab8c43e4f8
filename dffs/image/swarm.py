"""An image's documents (manifest, config) through the local daemon's swarm, for a registry that is gone.

After a pull resolves an image at the registry, its documents are published
as a small P2P task keyed by the reference and platform (through the daemon's
control socket: ``ImportTask``, which registers it with the scheduler). A
later pull on any host that cannot reach the registry asks its daemon for
that task (``DownloadTask``): the bytes come from a peer that published them.
The layers already come from the swarm (their blob tasks), so the image runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import grpc

from dffs.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc

log = logging.getLogger(__name__)

MAX_BYTES = 16 << 20


def url_for(reference: str, platform: str) -> str:
    key = hashlib.sha256(f"{reference}\n{platform}".encode()).hexdigest()
    return f"file:///dffs-shared/image/{key}"


def encode(documents: tuple[tuple[str, str, bytes], ...], config: bytes) -> bytes:
    return json.dumps(
        {
            "version": 1,
            "documents": [[t, d, base64.b64encode(b).decode()] for t, d, b in documents],
            "config": base64.b64encode(config).decode(),
        }
    ).encode()


def decode(data: bytes) -> tuple[tuple[tuple[str, str, bytes], ...], bytes] | None:
    """The documents and the config, each checked against its digest; None when anything is off."""
    try:
        doc = json.loads(data)
        documents = tuple((str(t), str(d), base64.b64decode(b)) for t, d, b in doc["documents"])
        config = base64.b64decode(doc["config"])
    except (ValueError, KeyError, TypeError):
        return None
    for _, digest, body in documents:
        if digest != "sha256:" + hashlib.sha256(body).hexdigest():
            return None
    return (documents, config) if documents else None


class DaemonLink:
    """The local daemon's control socket (``DATA_DIR/dffs.sock``)."""

    def __init__(self, socket_path: Path, timeout: float = 60.0):
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    def available(self) -> bool:
        return self.socket_path.exists()

    def publish(self, url: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(prefix="dffs-image-", delete=False) as f:
            f.write(data)
        try:
            with grpc.insecure_channel(f"unix:{self.socket_path}") as channel:
                stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)
                request = dfdaemon_pb2.ImportTaskRequest(path=f.name, download=common_pb2.Download(url=url))
                stub.ImportTask(request, timeout=self.timeout)
        except grpc.RpcError as exc:  # e.g. already published by this host: fine
            log.info("event=image_documents_not_published url=%s code=%s", url, exc.code())
        finally:
            os.unlink(f.name)

    def fetch(self, url: str) -> bytes | None:
        with tempfile.TemporaryDirectory(prefix="dffs-image-") as directory:
            output = Path(directory) / "documents"
            download = common_pb2.Download(url=url, output_path=str(output))
            try:
                with grpc.insecure_channel(f"unix:{self.socket_path}") as channel:
                    stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)
                    for _ in stub.DownloadTask(
                        dfdaemon_pb2.DownloadTaskRequest(download=download), timeout=self.timeout
                    ):
                        pass
            except grpc.RpcError as exc:
                log.info("event=image_documents_unavailable url=%s code=%s", url, exc.code())
                return None
            if not output.exists() or output.stat().st_size > MAX_BYTES:
                return None
            return output.read_bytes()
