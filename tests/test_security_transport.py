"""The cluster CA, member certificates, mutual TLS on real gRPC servers, and signed piece requests."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import empty_pb2

from dffs.api import dfdaemon_pb2, dfdaemon_pb2_grpc
from dffs.errors import UsageError
from dffs.security.ca import Identity, create_cluster_key, identity_of, load_cluster_key
from dffs.security.pieceauth import PieceAuth, PieceAuthError
from dffs.security.setup import is_loopback, make_transport
from dffs.security.transport import insecure, secure


class _Health(dfdaemon_pb2_grpc.DfdaemonDownloadServicer):
    """A plain grpcio servicer that says who called it."""

    def __init__(self, transport):
        self.transport = transport
        self.callers = []

    def Health(self, request, context):  # noqa: N802
        self.callers.append(self.transport.peer(context))
        return dfdaemon_pb2.HealthResponse(host_id="server", serving=True)


@pytest.fixture
def server_with(tmp_path):
    servers = []

    def start(transport):
        servicer = _Health(transport)
        server = grpc.server(ThreadPoolExecutor(max_workers=2))
        dfdaemon_pb2_grpc.add_DfdaemonDownloadServicer_to_server(servicer, server)
        port = transport.add_port(server, "127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", servicer

    yield start
    for server in servers:
        server.stop(0)


def _health(channel, timeout=5):
    try:
        return dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel).Health(empty_pb2.Empty(), timeout=timeout)
    finally:
        channel.close()


def test_cluster_init_writes_a_private_key_once(tmp_path):
    path = tmp_path / "etc" / "cluster.key"
    key = create_cluster_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_cluster_key(path).fingerprint == key.fingerprint
    with pytest.raises(UsageError, match="never overwritten"):
        create_cluster_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(UsageError, match="readable by others"):
        load_cluster_key(path)
    (tmp_path / "junk.key").write_text("not a key")
    os.chmod(tmp_path / "junk.key", 0o600)
    with pytest.raises(UsageError, match="not a dffs cluster key"):
        load_cluster_key(tmp_path / "junk.key")


def test_members_of_one_cluster_talk_and_know_each_other(tmp_path, server_with):
    key = create_cluster_key(tmp_path / "cluster.key")
    address, servicer = server_with(secure(key, Identity("scheduler", "s1")))
    client = secure(key, Identity("daemon", "0123abcd"))
    assert _health(client.channel(address)).serving
    assert servicer.callers == [Identity("daemon", "0123abcd")]
    assert identity_of(client.credentials.cert_pem) == Identity("daemon", "0123abcd")


def test_outsiders_get_nothing(tmp_path, server_with):
    key = create_cluster_key(tmp_path / "cluster.key")
    other = create_cluster_key(tmp_path / "other.key")
    address, servicer = server_with(secure(key, Identity("scheduler", "s1")))
    # plain text to a TLS port, a client with no certificate, a member of another cluster
    no_cert = grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(root_certificates=key.ca_pem),
        options=[("grpc.ssl_target_name_override", "dffs.cluster")],
    )
    for channel in (
        insecure().channel(address),
        no_cert,
        secure(other, Identity("daemon", "intruder")).channel(address),
    ):
        with pytest.raises(grpc.RpcError) as info:
            _health(channel, timeout=3)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert servicer.callers == []


def test_a_member_does_not_trust_a_server_of_another_cluster(tmp_path, server_with):
    key = create_cluster_key(tmp_path / "cluster.key")
    other = create_cluster_key(tmp_path / "other.key")
    address, servicer = server_with(secure(other, Identity("scheduler", "fake")))
    with pytest.raises(grpc.RpcError):
        _health(secure(key, Identity("daemon", "d1")).channel(address), timeout=3)
    assert servicer.callers == []


def test_signed_piece_requests():
    auth = PieceAuth(b"k" * 32)
    header = auth.sign("GET", "/pieces/abc/0", "host-1", now=1000.0)
    assert auth.verify(header, "GET", "/pieces/abc/0", now=1100.0) == "host-1"
    for bad, now, match in [
        (None, 1000.0, "no piece request signature"),
        ("Bearer xyz", 1000.0, "malformed"),
        (header, 2000.0, "from now"),
        (header.replace("host-1", "host-2"), 1000.0, "bad piece request signature"),
        (PieceAuth(b"x" * 32).sign("GET", "/pieces/abc/0", "host-1", 1000.0), 1000.0, "bad piece"),
    ]:
        with pytest.raises(PieceAuthError, match=match):
            auth.verify(bad, "GET", "/pieces/abc/0", now=now)
    with pytest.raises(PieceAuthError, match="bad piece"):
        auth.verify(header, "GET", "/pieces/abc/1", now=1000.0)  # another piece


def test_which_transport_a_process_gets(tmp_path, monkeypatch):
    monkeypatch.setattr("dffs.security.setup.DEFAULT_CLUSTER_KEY", tmp_path / "no-such-default.key")
    monkeypatch.delenv("DFFS_CLUSTER_KEY", raising=False)
    ident = Identity("daemon", "d1")
    data = tmp_path / "data"
    data.mkdir()
    # loopback alone: a key is made in the data dir, and reused
    first = make_transport(
        "daemon", ident, cluster_key=None, insecure_ok=False, data_dir=data, addresses=["127.0.0.1:4000"]
    )
    assert first.secure and (data / "cluster.key").exists()
    again = make_transport(
        "daemon", ident, cluster_key=None, insecure_ok=False, data_dir=data, addresses=["[::1]:1", "unix:/x"]
    )
    assert again.fingerprint == first.fingerprint
    # beyond loopback without a key: a one-line refusal that says how to make one
    with pytest.raises(UsageError, match="dffs cluster init"):
        make_transport("daemon", ident, cluster_key=None, insecure_ok=False, data_dir=data, addresses=["10.0.0.1:1"])
    assert not make_transport(
        "daemon", ident, cluster_key=None, insecure_ok=True, data_dir=data, addresses=["10.0.0.1:1"]
    ).secure
    explicit = create_cluster_key(tmp_path / "explicit.key")
    got = make_transport(
        "daemon",
        ident,
        cluster_key=tmp_path / "explicit.key",
        insecure_ok=False,
        data_dir=None,
        addresses=["10.0.0.1:1"],
    )
    assert got.fingerprint == explicit.fingerprint
    with pytest.raises(UsageError, match="exclude"):
        make_transport(
            "daemon", ident, cluster_key=tmp_path / "explicit.key", insecure_ok=True, data_dir=None, addresses=[]
        )
    assert [is_loopback(a) for a in ("127.0.0.1:1", "localhost:9", "[::1]:2", "unix:/s", "10.1.1.1:3", "h:1")] == [
        True,
        True,
        True,
        True,
        False,
        False,
    ]
