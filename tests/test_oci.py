"""OCI references, manifests and the registry token dance.

Pure parts without sockets; the client against a real HTTP server in the test
that plays a token-auth registry (401 + WWW-Authenticate, a token realm, then
manifests only for the right bearer token), and against Debian's docker-registry.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading

import pytest

from dffs.errors import SourceError, UsageError
from dffs.oci import auth, manifest
from dffs.oci.reference import ImageReference
from dffs.oci.registry import RegistryClient

D = "sha256:" + "a" * 64


def blob(digest: str, size: int = 10, media_type: str = "application/vnd.oci.image.layer.v1.tar+gzip") -> dict:
    return {"mediaType": media_type, "digest": digest, "size": size}


# ---------------------------------------------------------------- references


@pytest.mark.parametrize(
    "text, expected",
    [
        ("oci://reg:5000/lib/busybox:1.36", ("reg:5000", "lib/busybox", "1.36", None)),
        ("oci://registry.example.com/a", ("registry.example.com", "a", "latest", None)),
        (f"oci://reg/a/b@{D}", ("reg", "a/b", None, D)),
        (f"oci://reg/a:v1@{D}", ("reg", "a", "v1", D)),
    ],
)
def test_reference_parse(text, expected):
    ref = ImageReference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected
    assert ref.reference == (expected[3] or expected[2])


@pytest.mark.parametrize(
    "text",
    [
        "oci://",
        "oci://reg",
        "oci://reg/",
        "oci://reg/UPPER:1",
        "http://reg/a:1",
        "oci://reg/a:",
        "oci://reg/a@sha256:xyz",
        "oci://reg:99999999/a",
        "oci://reg/a b:1",
    ],
)
def test_bad_references_are_usage_errors(text):
    with pytest.raises(UsageError, match="bad OCI reference"):
        ImageReference.parse(text)


# ---------------------------------------------------------------- auth


def test_parse_challenge_and_token_url():
    scheme, params = auth.parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull",
    }
    assert auth.token_request_url(params, "a/b") == (
        "https://auth.example/token?service=registry.example&scope=repository%3Aa%2Fb%3Apull"
    )
    # No scope in the challenge: ask for pull on the repository.
    assert auth.token_request_url({"realm": "http://t/x?y=1"}, "r") == "http://t/x?y=1&scope=repository%3Ar%3Apull"
    with pytest.raises(SourceError, match="realm"):
        auth.token_request_url({"realm": "file:///etc/passwd"}, "r")


@pytest.mark.parametrize("body, token", [(b'{"token": "t1"}', "t1"), (b'{"access_token": "t2"}', "t2")])
def test_token_response(body, token):
    assert auth.parse_token_response(body) == token


@pytest.mark.parametrize("body", [b"nope", b"[]", b'{"token": ""}', b"{}"])
def test_bad_token_responses(body):
    with pytest.raises(SourceError):
        auth.parse_token_response(body)


# ---------------------------------------------------------------- manifests


def test_manifest_and_index_parsing():
    doc = {
        "schemaVersion": 2,
        "mediaType": manifest.OCI_MANIFEST,
        "config": blob(D, 5, "cfg"),
        "layers": [blob("sha256:" + "b" * 64), blob("sha256:" + "c" * 64)],
    }
    parsed = manifest.parse(json.dumps(doc).encode())
    assert isinstance(parsed, manifest.Manifest)
    assert [b.digest for b in parsed.blobs] == [D, "sha256:" + "b" * 64, "sha256:" + "c" * 64]
    index = {
        "mediaType": manifest.OCI_INDEX,
        "manifests": [
            {**blob("sha256:" + "1" * 64), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {**blob("sha256:" + "2" * 64), "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    parsed = manifest.parse(json.dumps(index).encode())
    assert isinstance(parsed, manifest.Index)
    assert parsed.select("linux/amd64") == "sha256:" + "2" * 64
    assert parsed.select("linux/arm64") == "sha256:" + "1" * 64
    with pytest.raises(SourceError, match=r"no manifest for platform windows/amd64 \(available: linux/arm64/v8"):
        parsed.select("windows/amd64")


@pytest.mark.parametrize(
    "body, message",
    [
        (b"<html>", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"schemaVersion": 1, "fsLayers": []}', "unsupported manifest type"),
        (json.dumps({"layers": [blob("sha256:zz")], "config": blob(D)}).encode(), "bad digest"),
        (json.dumps({"layers": [blob(D, -1)], "config": blob(D)}).encode(), "bad size"),
        (json.dumps({"layers": "x", "config": blob(D)}).encode(), "no layers list"),
        (json.dumps({"mediaType": manifest.OCI_INDEX, "manifests": {}}).encode(), "no manifests list"),
    ],
)
def test_malformed_manifests(body, message):
    with pytest.raises(SourceError, match=message):
        manifest.parse(body)


# ---------------------------------------------------------------- a token-auth registry over real HTTP


class TokenRegistry(http.server.ThreadingHTTPServer):
    """Plays distribution with token auth: 401 + challenge without the token, manifests with it."""

    daemon_threads = True

    def __init__(self, manifests: dict[str, bytes]):
        self.manifests = manifests
        self.token_requests: list[str] = []
        self.status_override: int | None = None
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: TokenRegistry

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path.startswith("/token?"):
            self.server.token_requests.append(self.path)
            return self._send(200, b'{"token": "secret-token"}')
        if self.headers.get("Authorization") != "Bearer secret-token":
            realm = f"http://{self.server.registry}/token"
            return self._send(
                401,
                b"{}",
                {"WWW-Authenticate": f'Bearer realm="{realm}",service="test-registry",scope="repository:a/b:pull"'},
            )
        if self.server.status_override:
            return self._send(self.server.status_override, b"{}")
        if self.path == "/v2/":
            return self._send(200, b"{}")
        name = self.path.removeprefix("/v2/a/b/manifests/")
        body = self.server.manifests.get(name)
        if body is None:
            return self._send(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')
        return self._send(200, body, {"Content-Type": json.loads(body).get("mediaType", "")})


@pytest.fixture
def token_registry():
    image = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": manifest.OCI_MANIFEST,
            "config": blob(D, 3, "cfg"),
            "layers": [blob("sha256:" + "e" * 64, 100)],
        }
    ).encode()
    image_digest = "sha256:" + hashlib.sha256(image).hexdigest()
    index = json.dumps(
        {
            "mediaType": manifest.OCI_INDEX,
            "manifests": [{**blob(image_digest, len(image)), "platform": {"os": "linux", "architecture": "amd64"}}],
        }
    ).encode()
    server = TokenRegistry({"v1": index, image_digest: image})
    server.image_digest = image_digest
    yield server
    server.shutdown()
    server.server_close()


def test_token_dance_index_and_platform_manifest(token_registry):
    resolved = RegistryClient(timeout=5).resolve(ImageReference.parse(f"oci://{token_registry.registry}/a/b:v1"))
    assert resolved.base_url == f"http://{token_registry.registry}"  # TLS refused: plain HTTP registry
    assert resolved.manifest_digest == token_registry.image_digest
    assert resolved.blob_urls == [
        f"http://{token_registry.registry}/v2/a/b/blobs/{d}" for d in (D, "sha256:" + "e" * 64)
    ]
    assert resolved.headers == {"Authorization": "Bearer secret-token"}  # what the seeds send for the blobs
    assert token_registry.token_requests and "service=test-registry" in token_registry.token_requests[0]


def test_unknown_image_and_errors_are_clear(token_registry):
    client = RegistryClient(timeout=5)
    with pytest.raises(SourceError, match="image not found"):
        client.resolve(ImageReference.parse(f"oci://{token_registry.registry}/a/b:nope"))
    token_registry.status_override = 500
    with pytest.raises(SourceError, match="registry answered 500"):
        client.resolve(ImageReference.parse(f"oci://{token_registry.registry}/a/b:v1"))
    with pytest.raises(SourceError, match="cannot reach registry 127.0.0.1:1"):
        client.resolve(ImageReference.parse("oci://127.0.0.1:1/a/b:v1"))


def test_digest_pinned_manifest_is_checked(token_registry):
    wrong = "sha256:" + "f" * 64
    token_registry.manifests[wrong] = token_registry.manifests[token_registry.image_digest]
    with pytest.raises(SourceError, match=f"not the {wrong}"):
        RegistryClient(timeout=5).resolve(ImageReference.parse(f"oci://{token_registry.registry}/a/b@{wrong}"))


def test_a_manifest_nested_too_deeply_is_a_source_error():
    """Found by tests/test_fuzz.py: json.loads raised RecursionError, past the SourceError handler."""
    with pytest.raises(SourceError, match="not JSON"):
        manifest.parse(b"[" * 100_000)


def test_a_token_response_nested_too_deeply_is_a_source_error():
    """Found by tests/test_fuzz.py: the token service's answer had the same RecursionError."""
    with pytest.raises(SourceError, match="not JSON"):
        auth.parse_token_response(b"[" * 100_000)


def test_an_index_platform_that_is_not_an_object_is_a_source_error():
    """Found by tests/test_fuzz.py: ``"platform": 1`` raised AttributeError out of the parser."""
    digest = "sha256:" + "a" * 64
    body = json.dumps({"manifests": [{"digest": digest, "size": 0, "platform": 1}]}).encode()
    with pytest.raises(SourceError, match="platform"):
        manifest.parse(body)
