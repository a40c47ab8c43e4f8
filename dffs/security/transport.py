"""How one process talks TCP to the other members: the one place that knows secure from insecure.

Built once per process from the cluster key (:func:`secure`) or for
``--insecure`` (:func:`insecure`), and handed to everything that opens a
channel, binds a port or serves pieces. Unix sockets (the daemon's control
socket) are local and protected by their file mode: they never use TLS.

* gRPC: mutual TLS. Servers require a client certificate from the cluster CA;
  clients verify the server's certificate against the CA and the cluster name
  (:data:`~dffs.security.ca.CLUSTER_NAME`), whatever address they dialled.
  :meth:`Transport.peer` tells a servicer who is calling.
* Data plane: signed requests (:mod:`dffs.security.pieceauth`).
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

import grpc

from dffs.rpc.bridge import channel_options
from dffs.security.ca import CLUSTER_NAME, ClusterKey, Identity, MemberCredentials, identity_of
from dffs.security.pieceauth import PieceAuth

log = logging.getLogger(__name__)


def _is_unix(address: str) -> bool:
    return address.startswith("unix:")


class Transport:
    def __init__(self, credentials: MemberCredentials | None, piece_auth: PieceAuth | None, *, fingerprint: str = ""):
        self.credentials = credentials
        #: Signs and checks piece requests; None when insecure.
        self.piece_auth = piece_auth
        #: Which cluster CA (a short fingerprint), for logs.
        self.fingerprint = fingerprint

    @property
    def secure(self) -> bool:
        return self.credentials is not None

    @property
    def identity(self) -> Identity | None:
        return self.credentials.identity if self.credentials is not None else None

    # --------------------------------------------------------------- clients
    def _channel_credentials(self) -> grpc.ChannelCredentials:
        assert self.credentials is not None
        return grpc.ssl_channel_credentials(
            root_certificates=self.credentials.ca_pem,
            private_key=self.credentials.key_pem,
            certificate_chain=self.credentials.cert_pem,
        )

    def _options(self, options: list[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
        opts = [*(options if options is not None else channel_options())]
        if self.secure:
            opts.append(("grpc.ssl_target_name_override", CLUSTER_NAME))
        return opts

    def channel(self, target: str, *, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
        """A blocking-API channel (the daemon's trio bridge) to another member."""
        if not self.secure or _is_unix(target):
            return grpc.insecure_channel(target, options=options if options is not None else channel_options())
        return grpc.secure_channel(target, self._channel_credentials(), options=self._options(options))

    def aio_channel(self, target: str, *, options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
        """An asyncio channel (the scheduler's and manager's clients) to another member."""
        if not self.secure or _is_unix(target):
            return grpc.aio.insecure_channel(target, options=options if options is not None else channel_options())
        return grpc.aio.secure_channel(target, self._channel_credentials(), options=self._options(options))

    # --------------------------------------------------------------- servers
    def add_port(self, server: Any, address: str) -> int:
        """Bind ``address`` on a grpc or grpc.aio server: mutual TLS for TCP when secure."""
        if not self.secure or _is_unix(address):
            return int(server.add_insecure_port(address))
        assert self.credentials is not None
        creds = grpc.ssl_server_credentials(
            [(self.credentials.key_pem, self.credentials.cert_pem)],
            root_certificates=self.credentials.ca_pem,
            require_client_auth=True,
        )
        return int(server.add_secure_port(address, creds))

    def piece_tls(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """(server, client) TLS contexts for a TLS data plane: both sides present member certificates."""
        assert self.credentials is not None
        creds = self.credentials
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=creds.ca_pem.decode())
        server.verify_mode = ssl.CERT_REQUIRED
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=creds.ca_pem.decode())
        with tempfile.TemporaryDirectory(prefix="dffs-tls-") as tmp:  # ssl loads chains from files only
            cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert.write_bytes(creds.cert_pem)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(creds.key_pem)
            for context in (server, client):
                context.load_cert_chain(cert, key)
        return server, client

    def peer(self, context: Any) -> Identity | None:
        """Who is calling (from the client certificate); None on an insecure transport."""
        if not self.secure:
            return None
        certs = context.auth_context().get("x509_pem_cert") or []
        return identity_of(certs[0]) if certs else None


def secure(key: ClusterKey, identity: Identity, *, addresses: tuple[str, ...] = ()) -> Transport:
    """A member's transport: a certificate for ``identity`` signed now from the cluster key."""
    return Transport(
        key.issue(identity, addresses=addresses), PieceAuth(key.piece_auth_key()), fingerprint=key.fingerprint
    )


def insecure() -> Transport:
    """Plain text, no authentication (``--insecure``)."""
    return Transport(None, None)
