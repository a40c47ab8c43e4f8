"""Resolve an image reference into the blob URLs a pull fetches (blocking I/O; run it in a thread).

The scheme is https unless the registry answers TLS with plain HTTP (a
registry on a private port, as containerd's ``--plain-http``); the 401 →
token → retry dance is done at most once per request; a manifest pinned by
digest is checked against that digest.
"""

from __future__ import annotations

import hashlib
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import Message
from http.client import HTTPMessage
from typing import Any
from urllib.parse import urlsplit

import attrs

from dffs.errors import SourceError
from dffs.oci import auth, manifest
from dffs.oci.reference import ImageReference
from dffs.security.redact import CREDENTIAL_HEADERS
from dffs.source.http.protocol import same_origin

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
DEFAULT_PLATFORM = "linux/amd64"


@attrs.frozen
class ResolvedImage:
    reference: ImageReference
    base_url: str
    manifest_digest: str
    blobs: tuple[manifest.Blob, ...]
    #: Headers the blob downloads need (the bearer token, or the caller's own Authorization).
    headers: Mapping[str, str]
    #: The documents as served, top first: (media type, digest, bytes) of the index (if any) and
    #: the manifest, for clients that store them (``dffs image pull`` into containerd's content store).
    documents: tuple[tuple[str, str, bytes], ...] = ()

    def blob_url(self, blob: manifest.Blob) -> str:
        return f"{self.base_url}/v2/{self.reference.repository}/blobs/{blob.digest}"

    @property
    def blob_urls(self) -> list[str]:
        return [self.blob_url(b) for b in self.blobs]


#: What OpenSSL says when the other end answered a TLS ClientHello with plain text (an HTTP
#: server's "HTTP/1.1 400"): 3.0/3.1 and LibreSSL, then 3.2 and later.
_PLAIN_HTTP_ANSWERS = frozenset({"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE"})


def answered_tls_with_plain_http(error: BaseException | str) -> bool:
    """Whether a failed TLS handshake means a plain-HTTP registry, and only that.

    A certificate that does not verify is *not* that: falling back to http then
    would hand the pull to whoever sits on the path."""
    if isinstance(error, ssl.SSLCertVerificationError) or not isinstance(error, ssl.SSLError):
        return False
    return getattr(error, "reason", None) in _PLAIN_HTTP_ANSWERS


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects that never step down from https to http and never carry credentials to another host."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: HTTPMessage, newurl: str
    ) -> urllib.request.Request | None:
        if req.type == "https" and urlsplit(newurl).scheme.lower() == "http":
            reason = f"refusing a redirect from https to http ({newurl})"
            raise urllib.error.HTTPError(newurl, code, reason, headers, fp)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and not same_origin(req.full_url, new.full_url):
            for name in [k for k in new.headers if k.lower() in CREDENTIAL_HEADERS]:
                del new.headers[name]
        return new


class RegistryClient:
    def __init__(self, *, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None, plain_http: bool = False):
        self.timeout = timeout
        self.ssl_context = ssl_context
        #: Only plain HTTP (containerd's ``--plain-http``), no TLS attempt first.
        self.plain_http = plain_http
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=ssl_context or ssl.create_default_context()), _SafeRedirects()
        )

    def _fetch(self, url: str, headers: Mapping[str, str]) -> tuple[int, Message, bytes]:
        """Status, headers (an email Message: looked up without regard to case) and at most a manifest's bytes."""
        request = urllib.request.Request(url, headers=dict(headers))
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.headers, response.read(MAX_MANIFEST_BYTES + 1)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers, exc.read(64 * 1024)

    def _base_url(self, ref: ImageReference, headers: Mapping[str, str]) -> str:
        """https, or http when the registry answers the TLS handshake with plain HTTP (and only then);
        only http with ``plain_http``."""
        for scheme in ("http",) if self.plain_http else ("https", "http"):
            try:
                self._fetch(f"{scheme}://{ref.registry}/v2/", headers)
                return f"{scheme}://{ref.registry}"
            except urllib.error.URLError as exc:
                if scheme == "https" and answered_tls_with_plain_http(exc.reason):
                    continue  # TLS spoken to a plain-HTTP registry
                raise SourceError(f"{ref}: cannot reach registry {ref.registry}: {exc.reason}") from None
            except (TimeoutError, OSError) as exc:
                raise SourceError(f"{ref}: cannot reach registry {ref.registry}: {exc}") from None
        raise AssertionError("unreachable")

    def _get(self, ref: ImageReference, url: str, headers: dict[str, str]) -> tuple[Message, bytes]:
        """GET with the token dance; ``headers`` gains the Authorization that worked."""
        try:
            status, answer_headers, body = self._fetch(url, headers)
            if status == 401:
                scheme, params = auth.parse_challenge(answer_headers.get("WWW-Authenticate", ""))
                if scheme != "bearer":
                    raise SourceError(
                        f"{ref}: registry wants {scheme or 'unknown'} authentication; pass an "
                        "Authorization header with the job"
                    )
                token_status, _, token_body = self._fetch(
                    auth.token_request_url(params, ref.repository),
                    {k: v for k, v in headers.items() if k.lower() == "authorization"},
                )
                if token_status != 200:
                    raise SourceError(f"{ref}: registry token service answered {token_status}")
                headers["Authorization"] = f"Bearer {auth.parse_token_response(token_body)}"
                status, answer_headers, body = self._fetch(url, headers)
        except urllib.error.URLError as exc:
            raise SourceError(f"{ref}: cannot reach registry {ref.registry}: {exc.reason}") from None
        except (TimeoutError, OSError) as exc:
            raise SourceError(f"{ref}: cannot reach registry {ref.registry}: {exc}") from None
        if status == 404:
            raise SourceError(f"{ref}: image not found (404 from {ref.registry})", status=404)
        if status in (401, 403):
            raise SourceError(f"{ref}: access denied ({status} from {ref.registry})", status=status)
        if status != 200:
            raise SourceError(f"{ref}: registry answered {status} for the manifest", status=status)
        if len(body) > MAX_MANIFEST_BYTES:
            raise SourceError(f"{ref}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
        return answer_headers, body

    def resolve(
        self, ref: ImageReference, *, platform: str = "", headers: Mapping[str, str] | None = None
    ) -> ResolvedImage:
        request_headers = dict(headers or {})
        base = self._base_url(ref, request_headers)
        wanted = ref.reference
        documents: list[tuple[str, str, bytes]] = []
        for _ in range(2):  # an index, then the platform's manifest
            request_headers["Accept"] = manifest.ACCEPT
            answer_headers, body = self._get(ref, f"{base}/v2/{ref.repository}/manifests/{wanted}", request_headers)
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            if wanted.startswith("sha256:") and digest != wanted:
                raise SourceError(f"{ref}: manifest digest is {digest}, not the {wanted} asked for")
            parsed = manifest.parse(body, answer_headers.get("Content-Type", ""))
            documents.append((manifest.media_type(body, answer_headers.get("Content-Type", "")), digest, body))
            if isinstance(parsed, manifest.Manifest):
                request_headers.pop("Accept")
                return ResolvedImage(ref, base, digest, parsed.blobs, request_headers, tuple(documents))
            wanted = parsed.select(platform or DEFAULT_PLATFORM)
        raise SourceError(f"{ref}: an image index points at another index")

    def fetch_blob(self, image: ResolvedImage, blob: manifest.Blob, *, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """A small blob (an image config) in memory, checked against its digest."""
        if blob.size > limit:
            raise SourceError(f"{image.reference}: blob {blob.digest} is {blob.size} bytes, more than {limit}")
        _, body = self._get(image.reference, image.blob_url(blob), dict(image.headers))
        if "sha256:" + hashlib.sha256(body).hexdigest() != blob.digest:
            raise SourceError(f"{image.reference}: blob {blob.digest} does not match its digest")
        return body
