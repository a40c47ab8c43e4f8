"""The s3:// Source: S3 objects and prefixes, signed by botocore, carried by HttpSource.

``s3://bucket/key`` names an object and ``s3://bucket/prefix/`` a directory-like
prefix. Keys are taken literally, as the AWS CLI does: no percent-decoding, so
a key may contain ``%``, ``?``, ``#`` or spaces.

Each request is signed with SigV4 by botocore (``S3SigV4Auth``) with the
standard credential chain (environment, shared credentials and config files,
``AWS_PROFILE``, container and instance roles), then sent through the process's
shared :class:`HttpSource`, which keeps connections alive, retries, checks
Content-Range and reads bodies straight into piece buffers. Only ``host``,
``x-amz-date``, ``x-amz-content-sha256``, ``x-amz-security-token`` and any
``x-amz-*`` header the caller adds are signed: Range, If-Match and the headers
HttpSource adds itself travel unsigned, which S3 accepts. A signature is valid
for 15 minutes, which covers HttpSource's retries of one call; every call signs
anew.

Addressing is path-style (``ENDPOINT/bucket/key``): it works for every bucket
name, on AWS and on S3-compatible servers (MinIO, Ceph, moto) alike.

Errors: S3 answers HEAD failures with no body, so when a request fails the
source asks once more with a one-byte GET to read S3's XML error document,
and reports its code in one line (``s3://b/k: S3 answered 404 NoSuchKey: ...``).
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import quote

import attrs
import trio

from dffs.bounds import parse_size, timestamp
from dffs.errors import RetryableSourceError, SourceChanged, SourceError, UsageError
from dffs.source.base import ListEntry, SourceStat, Validators
from dffs.source.http import HttpSource
from dffs.source.http.protocol import RETRYABLE_STATUSES, ResponseHead, parse_target

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
#: Largest ListObjectsV2 page read (1000 keys of 1024 bytes each, plus markup).
MAX_LIST_PAGE_BYTES = 16 * 1024 * 1024
#: Largest error document read when explaining a failure.
MAX_ERROR_BYTES = 64 * 1024

# Legacy us-east-1 buckets allow upper case and underscores; newer rules are stricter.
_BUCKET_RE = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
#: Headers the source sets itself when it signs; a caller's copies are dropped.
_SIGNING_HEADERS = frozenset({"authorization", "host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"})
#: Error codes that mean the object is no longer the version being read.
_CHANGED_CODES = frozenset({"PreconditionFailed"})


@attrs.frozen
class S3Location:
    bucket: str
    key: str  #: "" for the bucket itself

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_url(url: str, *, need_key: bool = False) -> S3Location:
    """``s3://bucket/key`` → S3Location; UsageError if malformed.

    With ``need_key`` the URL must name an object, not just a bucket.
    """
    if url[:5].lower() != "s3://":
        raise UsageError(f"malformed S3 URL {url!r}: expected s3://BUCKET/KEY")
    if any(c in url for c in "\r\n\x00"):
        raise UsageError(f"malformed S3 URL {url!r}: contains control characters")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise UsageError(f"malformed S3 URL {url!r}: no bucket name")
    if not _BUCKET_RE.match(bucket):
        raise UsageError(f"malformed S3 URL {url!r}: {bucket!r} is not a valid bucket name")
    if need_key and not key:
        raise UsageError(f"malformed S3 URL {url!r}: no object key (expected s3://{bucket}/KEY)")
    return S3Location(bucket, key)


def canonical_query(params: Mapping[str, str]) -> str:
    """The query string exactly as SigV4 canonicalizes it: RFC 3986-encoded, sorted."""
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in params.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


# ------------------------------------------------------------------ XML
def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child(element: ElementTree.Element, name: str) -> ElementTree.Element | None:
    """The first child named ``name`` in any (or no) XML namespace."""
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def _text(element: ElementTree.Element, name: str) -> str | None:
    child = _child(element, name)
    return None if child is None else (child.text or "")


@attrs.frozen
class S3ErrorDocument:
    code: str
    message: str
    details: dict[str, str]


def parse_error(body: bytes) -> S3ErrorDocument | None:
    """S3's ``<Error><Code>..</Code><Message>..</Message>..</Error>``, or None."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None
    if _local(root.tag) != "Error":
        return None
    details = {_local(c.tag): (c.text or "").strip() for c in root}
    code = details.pop("Code", "") or "UnknownError"
    message = " ".join(details.pop("Message", "").split())
    return S3ErrorDocument(code, message, details)


@attrs.frozen
class ListPage:
    entries: list[ListEntry]
    next_token: str | None  #: None on the last page
    #: (key, why) of entries left out: not a direct child, a bad size. Logged by the caller.
    skipped: list[tuple[str, str]] = attrs.Factory(list)


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        when = datetime.datetime.fromisoformat(value.strip())
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return timestamp(when.timestamp())
    except (ValueError, OverflowError):
        return None


def parse_list_page(body: bytes, bucket: str, prefix: str) -> ListPage:
    """One ListObjectsV2 result page; ValueError if it is not one."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise ValueError(f"not XML ({exc})") from None
    if _local(root.tag) != "ListBucketResult":
        raise ValueError(f"root element is <{_local(root.tag)}>, not <ListBucketResult>")
    entries: list[ListEntry] = []
    skipped: list[tuple[str, str]] = []
    for element in root:
        kind = _local(element.tag)
        if kind == "CommonPrefixes":
            sub = _text(element, "Prefix") or ""
            if not sub.startswith(prefix) or not sub.endswith("/"):
                skipped.append((sub, "a common prefix outside the listed prefix"))
                continue
            name = sub[len(prefix) : -1]
            if not name:
                continue  # "prefix//": an empty component names nothing
            if "/" in name:
                skipped.append((sub, "a common prefix more than one level down"))
                continue
            entries.append(ListEntry(name=name, url=f"s3://{bucket}/{sub}", is_dir=True))
        elif kind == "Contents":
            key = _text(element, "Key") or ""
            if key == prefix or not key.startswith(prefix):
                continue  # the prefix's own "directory marker" object
            if "/" in key[len(prefix) :]:
                skipped.append((key, "a key below a sub-prefix (the listing used delimiter '/')"))
                continue
            size_text = _text(element, "Size")
            try:
                size = parse_size(size_text) if size_text is not None else None
            except ValueError as exc:
                skipped.append((key, str(exc)))
                continue
            entries.append(
                ListEntry(
                    name=key[len(prefix) :],
                    url=f"s3://{bucket}/{key}",
                    is_dir=False,
                    size=size,
                    mtime=_parse_time(_text(element, "LastModified")),
                    etag=_text(element, "ETag") or None,
                )
            )
    truncated = (_text(root, "IsTruncated") or "false").strip().lower() == "true"
    token = _text(root, "NextContinuationToken") if truncated else None
    if truncated and not token:
        raise ValueError("a truncated page without a NextContinuationToken")
    return ListPage(entries, token, skipped)


# --------------------------------------------------------------- config
@attrs.frozen
class S3Config:
    endpoint: str  #: scheme://host[:port][/path], no trailing slash
    region: str
    credentials: Any  #: botocore Credentials, or None for unsigned requests


def _credentials_from(value: Any) -> Any:
    if value is None or hasattr(value, "get_frozen_credentials"):
        return value
    from botocore.credentials import Credentials

    if isinstance(value, (tuple, list)) and len(value) in (2, 3):
        return Credentials(*value)
    raise TypeError(f"credentials must be botocore Credentials or (access_key, secret_key[, token]), not {value!r}")


def load_config(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    credentials: Any = None,
    profile: str | None = None,
    unsigned: bool = False,
) -> S3Config:
    """Resolve endpoint, region and credentials the way the AWS SDKs do.

    Blocking (reads files, may ask an instance-metadata service): run it in a thread.
    """
    import botocore.exceptions
    import botocore.session

    try:
        session = botocore.session.Session(profile=profile)
        scoped = session.get_scoped_config()
        region = region or os.environ.get("AWS_REGION") or session.get_config_variable("region") or DEFAULT_REGION
        endpoint = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or scoped.get("endpoint_url")
            or f"https://s3.{region}.amazonaws.com"
        )
        creds = None
        if not unsigned:
            creds = _credentials_from(credentials) if credentials is not None else session.get_credentials()
    except botocore.exceptions.ProfileNotFound as exc:
        raise UsageError(f"S3: {exc}") from None
    except (botocore.exceptions.BotoCoreError, ValueError, OSError) as exc:  # providers raise all three
        raise SourceError(f"S3: cannot load AWS configuration or credentials: {exc}") from None
    endpoint = endpoint.rstrip("/")
    target = parse_target(endpoint)  # UsageError for a malformed endpoint
    if "?" in target.path:
        raise UsageError(f"S3 endpoint {endpoint!r} must not have a query string")
    if creds is None and not unsigned:
        log.debug("event=s3_no_credentials detail='no AWS credentials found; S3 requests go unsigned'")
    return S3Config(endpoint=endpoint, region=region, credentials=creds)


# --------------------------------------------------------------- source
def _retarget(exc: SourceError, http_url: str, s3_url: str) -> SourceError:
    """The same error (type and attributes kept), naming the s3:// URL instead of the endpoint's."""
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (exc.args[0].replace(http_url, s3_url), *exc.args[1:])
    return exc


class S3Source:
    """The s3 scheme; shares the process's HttpSource (and so its connection pool).

    ``endpoint_url``, ``region``, ``credentials`` (botocore Credentials or an
    ``(access_key, secret_key[, token])`` tuple), ``profile`` and ``unsigned``
    override what the environment and AWS config files say.
    """

    schemes = ("s3",)

    def __init__(
        self,
        http: HttpSource | None = None,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials: Any = None,
        profile: str | None = None,
        unsigned: bool = False,
    ):
        self.http = http if http is not None else HttpSource()
        self._owns_http = http is None
        self._overrides = dict(
            endpoint_url=endpoint_url, region=region, credentials=credentials, profile=profile, unsigned=unsigned
        )
        self._config: S3Config | None = None
        self._config_lock = trio.Lock()

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    # ------------------------------------------------------------ plumbing
    async def config(self) -> S3Config:
        """Resolved once, on first use: importing botocore and reading config costs ~100 ms."""
        if self._config is None:
            async with self._config_lock:
                if self._config is None:
                    self._config = await trio.to_thread.run_sync(lambda: load_config(**self._overrides))
        return self._config

    async def _object_url(self, loc: S3Location) -> str:
        config = await self.config()
        return f"{config.endpoint}/{quote(loc.bucket, safe='')}/{quote(loc.key, safe='/~')}"

    async def _sign(self, method: str, url: str, headers: Mapping[str, str] | None) -> dict[str, str]:
        """The headers to send with ``method url``: the caller's, plus a SigV4 signature.

        Signed: host (exactly the Host HttpSource sends), x-amz-date,
        x-amz-content-sha256, x-amz-security-token and the caller's x-amz-*
        headers; everything else goes unsigned.
        """
        config = await self.config()
        if config.credentials is None:
            return dict(headers or {})
        creds = config.credentials
        if getattr(creds, "refresh_needed", lambda: False)():  # refreshing may reach the network
            frozen = await trio.to_thread.run_sync(creds.get_frozen_credentials)
        else:
            frozen = creds.get_frozen_credentials()
        if not frozen.access_key or not frozen.secret_key:
            return dict(headers or {})

        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        unsigned: dict[str, str] = {}
        to_sign: dict[str, str] = {"host": parse_target(url).host_header}
        for name, value in (headers or {}).items():
            lname = name.lower()
            if lname in _SIGNING_HEADERS:
                continue
            if lname.startswith("x-amz-"):
                to_sign[lname] = value
            else:
                unsigned[name] = value
        request = AWSRequest(method=method, url=url, headers=to_sign)
        S3SigV4Auth(frozen, "s3", config.region).add_auth(request)
        signed = {name: value for name, value in request.headers.items() if name.lower() != "host"}
        return {**unsigned, **signed}

    async def _explain(
        self,
        exc: SourceError,
        loc: S3Location,
        http_url: str,
        headers: Mapping[str, str] | None,
        conditions: Mapping[str, str] | None = None,
    ) -> SourceError:
        """A one-line error about ``loc`` for a failed request to ``http_url``.

        HttpSource reports only the status; S3's reason is in an XML body, and
        HEAD has none. So a plain failure is asked again as a one-byte GET
        (with the same conditions) that does not follow redirects, and the
        error document it gets names the reason.
        """
        if type(exc) is SourceError:
            probe_headers = {**(headers or {}), **(conditions or {})}
            try:
                signed = await self._sign("GET", http_url, probe_headers)
                head, body = await self.http.get_bytes(
                    http_url, {**signed, "Range": "bytes=0-0"}, MAX_ERROR_BYTES, follow_redirects=False
                )
            except SourceError:
                pass
            else:
                if head.status >= 300:
                    error = await self._s3_error(loc, head, body)
                    if error is not None:
                        return error
        return _retarget(exc, http_url, loc.url)

    async def _s3_error(self, loc: S3Location, head: ResponseHead, body: bytes) -> SourceError | None:
        document = parse_error(body)
        if document is None:
            return None
        message = f"{loc.url}: S3 answered {head.status} {document.code}"
        if document.message:
            message += f": {document.message}"
        region = head.get("x-amz-bucket-region") or document.details.get("Region")
        config = await self.config()
        if region and region != config.region:
            message += f" (the bucket is in {region}; set AWS_REGION={region})"
        elif document.code == "PermanentRedirect" and document.details.get("Endpoint"):
            message += f" (endpoint {document.details['Endpoint']})"
        if head.status in (401, 403) and config.credentials is None:
            message += " (no AWS credentials were found, so the request was unsigned)"
        if document.code in _CHANGED_CODES or head.status == 412:
            error: SourceError = SourceChanged(message)
        elif head.status in RETRYABLE_STATUSES:
            error = RetryableSourceError(message)
        else:
            error = SourceError(message)
        error.status = head.status
        return error

    @staticmethod
    def _conditions(validators: Validators | None) -> dict[str, str]:
        """Pin a read to one version: S3 honours If-Match (412 otherwise)."""
        if validators is None:
            return {}
        if validators.etag and not validators.etag.startswith("W/"):
            return {"If-Match": validators.etag}
        if validators.last_modified:
            return {"If-Unmodified-Since": validators.last_modified}
        return {}

    # ---------------------------------------------------------------- API
    async def stat(
        self, url: str, *, headers: Mapping[str, str] | None = None, validators: Validators | None = None
    ) -> SourceStat:
        """A signed HEAD; the stat's url stays the s3:// URL so reads are signed too."""
        loc = parse_s3_url(url, need_key=True)
        http_url = await self._object_url(loc)
        signed = await self._sign("HEAD", http_url, headers)
        try:
            result = await self.http.stat(http_url, headers=signed, validators=validators)
        except SourceError as exc:
            raise await self._explain(exc, loc, http_url, headers) from None
        return attrs.evolve(result, url=loc.url)

    async def read_range(
        self,
        url: str,
        offset: int,
        buffer: memoryview,
        *,
        headers: Mapping[str, str] | None = None,
        validators: Validators | None = None,
    ) -> None:
        """A signed ranged GET; with validators, If-Match makes S3 refuse a changed object."""
        loc = parse_s3_url(url, need_key=True)
        http_url = await self._object_url(loc)
        conditions = self._conditions(validators)
        signed = await self._sign("GET", http_url, headers)
        try:
            # The size is checked against Content-Range; versions are pinned by the conditions above.
            size_only = Validators(content_length=validators.content_length) if validators is not None else None
            await self.http.read_range(http_url, offset, buffer, headers={**signed, **conditions}, validators=size_only)
        except SourceError as exc:
            raise await self._explain(exc, loc, http_url, headers, conditions) from None

    @asynccontextmanager
    async def open_stream(self, url: str, offset: int = 0, *, headers: Mapping[str, str] | None = None):
        """A signed GET from ``offset`` to the end."""
        loc = parse_s3_url(url, need_key=True)
        http_url = await self._object_url(loc)
        signed = await self._sign("GET", http_url, headers)
        async with AsyncExitStack() as stack:
            try:
                body = await stack.enter_async_context(self.http.open_stream(http_url, offset, headers=signed))
            except SourceError as exc:
                raise await self._explain(exc, loc, http_url, headers) from None
            yield body

    async def list(self, url: str, *, headers: Mapping[str, str] | None = None) -> AsyncIterator[ListEntry]:
        """Objects and sub-prefixes directly under a prefix (ListObjectsV2, every page)."""
        loc = parse_s3_url(url)
        prefix = loc.key if not loc.key or loc.key.endswith("/") else loc.key + "/"
        where = f"s3://{loc.bucket}/{prefix}"
        config = await self.config()
        token: str | None = None
        seen_tokens: set[str] = set()
        while True:
            params = {"list-type": "2", "prefix": prefix, "delimiter": "/"}
            if token is not None:
                params["continuation-token"] = token
            http_url = f"{config.endpoint}/{quote(loc.bucket, safe='')}?{canonical_query(params)}"
            signed = await self._sign("GET", http_url, headers)
            try:
                head, body = await self.http.get_bytes(http_url, signed, MAX_LIST_PAGE_BYTES, follow_redirects=False)
            except SourceError as exc:
                raise _retarget(exc, http_url, where) from None
            if head.status != 200:
                error = await self._s3_error(S3Location(loc.bucket, prefix), head, body)
                if error is None:
                    error = SourceError(f"{where}: listing failed: S3 answered {head.status} {head.reason}".rstrip())
                    error.status = head.status
                raise error
            try:
                page = parse_list_page(body, loc.bucket, prefix)
            except ValueError as exc:
                raise SourceError(f"{where}: malformed ListObjectsV2 response: {exc}") from None
            for key, why in page.skipped[:10]:
                log.error("event=s3_listing_entry_skipped url=%s key=%r reason=%s", where, key[:300], why)
            if len(page.skipped) > 10:
                log.error("event=s3_listing_entries_skipped url=%s count=%d", where, len(page.skipped))
            for entry in page.entries:
                yield entry
            if page.next_token is None:
                return
            if page.next_token in seen_tokens:
                raise SourceError(f"{where}: S3 repeated a continuation token; giving up the listing")
            seen_tokens.add(page.next_token)
            token = page.next_token
