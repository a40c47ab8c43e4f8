"""The OCI registry client against registries that misbehave (FaultyOrigin over real TLS).

It falls back to plain http only when the registry answers the TLS handshake with plain HTTP
(that case, against docker-registry, is in test_oci.py), never after a certificate failure;
redirects keep credentials on their host and never go from https to http.
"""

from __future__ import annotations

import json
import ssl

import pytest
import trustme
from origins import Behavior, FaultyOrigin

from dffs.errors import SourceError
from dffs.oci import ImageReference
from dffs.oci.registry import RegistryClient, answered_tls_with_plain_http

DIGEST = "sha256:" + "a" * 64
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": DIGEST, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": DIGEST, "size": 3}],
    }
).encode()
MANIFEST_TYPE = (("Content-Type", "application/vnd.oci.image.manifest.v1+json"),)


def registry(origin: FaultyOrigin, *, manifest_behavior: Behavior | None = None) -> str:
    origin.add("/v2/", b"{}")
    origin.add("/v2/repo/manifests/v1", MANIFEST, behavior=manifest_behavior or Behavior(replace_headers=MANIFEST_TYPE))
    return f"oci://{origin.host}:{origin.port}/repo:v1"


@pytest.fixture
def ca():
    return trustme.CA()


def tls_origin(ca: trustme.CA) -> FaultyOrigin:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    origin = FaultyOrigin(ssl_context=server_ctx)
    origin.start()
    return origin


def test_a_certificate_failure_is_an_error_never_a_plain_http_retry(ca):
    origin = tls_origin(ca)  # its CA is not trusted by the client
    try:
        ref = ImageReference.parse(registry(origin))
        with pytest.raises(SourceError, match="CERTIFICATE_VERIFY_FAILED"):
            RegistryClient(timeout=5).resolve(ref)
        assert origin.connections == 1  # one TLS attempt; no second, plain connection
    finally:
        origin.stop()


def test_only_a_plain_http_answer_means_plain_http():
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.reason = "CERTIFICATE_VERIFY_FAILED"
    plain = ssl.SSLError(1, "wrong version number")
    plain.reason = "WRONG_VERSION_NUMBER"
    other = ssl.SSLError(1, "handshake failure")
    other.reason = "SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert answered_tls_with_plain_http(plain)
    assert not answered_tls_with_plain_http(verify) and not answered_tls_with_plain_http(other)
    assert not answered_tls_with_plain_http(OSError("refused"))


def trusting(ca: trustme.CA) -> RegistryClient:
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return RegistryClient(timeout=5, ssl_context=client_ctx)


def test_a_redirect_to_another_host_does_not_carry_the_credentials(ca):
    registry_origin, elsewhere = tls_origin(ca), tls_origin(ca)
    try:
        elsewhere.add("/m", MANIFEST, behavior=Behavior(replace_headers=MANIFEST_TYPE))
        ref = ImageReference.parse(registry(registry_origin, manifest_behavior=Behavior.redirect(elsewhere.url("/m"))))
        resolved = trusting(ca).resolve(ref, headers={"Authorization": "Basic c2VjcmV0"})
        assert len(resolved.blobs) == 2
        assert registry_origin.requests("/v2/repo/manifests/v1")[0].headers["authorization"] == "Basic c2VjcmV0"
        assert "authorization" not in elsewhere.requests("/m")[0].headers
    finally:
        registry_origin.stop()
        elsewhere.stop()


def test_a_redirect_from_https_to_http_is_refused(ca, faulty_origin):
    secure = tls_origin(ca)
    try:
        faulty_origin.add("/m", MANIFEST, behavior=Behavior(replace_headers=MANIFEST_TYPE))
        ref = ImageReference.parse(registry(secure, manifest_behavior=Behavior.redirect(faulty_origin.url("/m"))))
        with pytest.raises(SourceError):
            trusting(ca).resolve(ref, headers={"Authorization": "Basic eA=="})
        assert faulty_origin.count("/m") == 0
    finally:
        secure.stop()
