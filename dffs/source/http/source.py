"""The http and https Source: stat, ranged reads and streams with retries and redirects."""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import attrs
import tenacity
import trio

from dffs import __version__
from dffs.errors import (
    RangeNotSupported,
    RetryableSourceError,
    SourceChanged,
    SourceError,
    UsageError,
)
from dffs.source.base import ListEntry, SourceStat, Validators
from dffs.source.http.autoindex import parse_index
from dffs.source.http.connection import HttpConnection, StaleConnection
from dffs.source.http.pool import ConnectionPool
from dffs.source.http.protocol import (
    CREDENTIAL_HEADERS,
    REDIRECT_STATUSES,
    RETRYABLE_STATUSES,
    ResponseHead,
    describe_status,
    parse_content_range,
    parse_target,
    range_header,
    redirect_url,
    same_origin,
)

log = logging.getLogger(__name__)

#: Largest directory index page read (a 10,000-entry nginx page is ~1.5 MB).
MAX_LISTING_BYTES = 64 * 1024 * 1024


@attrs.frozen
class HttpOptions:
    connect_timeout: float = 10.0
    #: Longest silence while waiting for response bytes.
    read_timeout: float = 30.0
    #: Attempts per request, the first included; only retryable failures repeat.
    attempts: int = 4
    backoff_initial: float = 0.2
    #: Attempt budgets one ranged read may use: after the first, a fresh one starts only when an
    #: attempt brought bytes (an origin that flaps cuts a slow piece at every outage). 1: a read
    #: makes at most ``attempts`` requests, however its attempts end.
    progress_budgets: int = 1
    backoff_max: float = 5.0
    max_redirects: int = 5
    max_idle_per_origin: int = 16
    user_agent: str = f"dffs/{__version__}"
    verify_tls: bool = True
    #: Extra CA certificates (PEM) to trust, e.g. a private CA; the system's are trusted too.
    ca_file: str | None = None
    #: A ready TLS context used instead of the above (the P2P data plane's, with a client certificate).
    ssl_context: ssl.SSLContext | None = None


class HttpSource:
    """One instance per process; owns a keep-alive pool shared by all downloads."""

    schemes = ("http", "https")

    def __init__(self, options: HttpOptions | None = None):
        self.options = options or HttpOptions()
        self.pool = ConnectionPool(
            functools.partial(HttpConnection, read_timeout=self.options.read_timeout),
            connect_timeout=self.options.connect_timeout,
            max_idle_per_origin=self.options.max_idle_per_origin,
            ssl_context_factory=self._ssl_context,
        )

    def _ssl_context(self) -> ssl.SSLContext:
        if self.options.ssl_context is not None:
            return self.options.ssl_context
        """Built on first https use: loading the CA bundle costs ~10 ms."""
        context = ssl.create_default_context()
        if self.options.ca_file:
            try:
                context.load_verify_locations(cafile=self.options.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise UsageError(f"cannot load CA file {self.options.ca_file}: {exc}") from None
        if not self.options.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def aclose(self) -> None:
        await self.pool.aclose()

    # ------------------------------------------------------------ plumbing
    def _retrying(self) -> tenacity.AsyncRetrying:
        o = self.options
        return tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(max(1, o.attempts)),
            wait=tenacity.wait_exponential_jitter(
                multiplier=o.backoff_initial, jitter=o.backoff_initial, max=o.backoff_max
            ),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, SourceError) and e.retryable),
            sleep=trio.sleep,
            reraise=True,
        )

    def _headers(self, extra: Mapping[str, str] | None, *more: tuple[str, str | None]) -> list[tuple[str, str]]:
        """The default headers, then ``extra`` (which overrides them), then ``more`` less those valued None."""
        headers = [("User-Agent", self.options.user_agent), ("Accept-Encoding", "identity")]
        if extra:
            overridden = {k.lower() for k in extra}
            headers = [h for h in headers if h[0].lower() not in overridden]
            headers += list(extra.items())
        headers += [(name, value) for name, value in more if value is not None]
        return headers

    async def _exchange(
        self, method: str, url: str, headers: list[tuple[str, str]], *, follow_redirects: bool = True
    ) -> tuple[HttpConnection, ResponseHead, str]:
        """One request, following redirects; returns the connection holding the body.

        A reused connection that the server already closed is retried at once
        on a fresh one, without counting as an attempt.
        """
        for _ in range(self.options.max_redirects + 1):
            target = parse_target(url)
            for fresh_try in (False, True):
                conn = await self.pool.checkout(target, fresh=fresh_try)
                try:
                    head = await conn.request(method, target, headers)
                    break
                except StaleConnection:
                    await conn.aclose()
                    await self.pool.discard_idle(target.origin_key)
                    if fresh_try:
                        raise
                except SourceError as exc:
                    await conn.aclose()
                    if exc.args and isinstance(exc.args[0], str) and url not in exc.args[0]:
                        exc.args = (f"{method} {url}: {exc.args[0]}", *exc.args[1:])  # one line naming the URL
                    raise
                except BaseException:
                    await conn.aclose()
                    raise
            if follow_redirects and head.status in REDIRECT_STATUSES and method in ("GET", "HEAD"):
                await self._release(conn)
                try:
                    new_url = redirect_url(url, head.get("location"))
                    parse_target(new_url)
                except (ValueError, UsageError) as exc:
                    raise SourceError(f"{method} {url}: bad redirect: {exc}") from None
                if not same_origin(url, new_url):  # credentials are for the origin they were given for
                    headers = [(k, v) for k, v in headers if k.lower() not in CREDENTIAL_HEADERS]
                url = new_url
                continue
            return conn, head, url
        raise SourceError(f"{method} {url}: more than {self.options.max_redirects} redirects")

    async def _release(self, conn: HttpConnection) -> None:
        """Give a connection back, reading a small leftover body so it stays reusable."""
        try:
            if conn.body_remaining:
                await conn.drain()
        except SourceError:
            await conn.aclose()
            return
        await self.pool.checkin(conn)

    @staticmethod
    def _status_error(method: str, url: str, head: ResponseHead) -> SourceError:
        message = f"{method} {url}: origin answered {describe_status(head)}"
        if head.status in RETRYABLE_STATUSES:
            return RetryableSourceError(message, status=head.status)
        return SourceError(message, status=head.status)

    # ---------------------------------------------------------------- stat
    async def stat(
        self, url: str, *, headers: Mapping[str, str] | None = None, validators: Validators | None = None
    ) -> SourceStat:
        parse_target(url)  # usage errors surface before any retry
        async for attempt in self._retrying():
            with attempt:
                return await self._stat_once(url, headers, validators)
        raise AssertionError("unreachable")

    async def _stat_once(self, url, headers, validators) -> SourceStat:
        conditional = []
        if validators is not None:
            conditional = [("If-None-Match", validators.etag), ("If-Modified-Since", validators.last_modified)]
        conn, head, final_url = await self._exchange("HEAD", url, self._headers(headers, *conditional))
        await self._release(conn)
        if head.status in (405, 501):
            return await self._stat_by_get(url, headers)
        if head.status == 304:
            return SourceStat(
                url=final_url,
                content_length=None,
                etag=head.get("etag") or (validators.etag if validators else None),
                last_modified=head.get("last-modified") or (validators.last_modified if validators else None),
                not_modified=True,
            )
        if head.status != 200:
            raise self._status_error("HEAD", url, head)
        return self._stat_from(final_url, head, head.content_length)

    async def _stat_by_get(self, url, headers) -> SourceStat:
        """For origins that refuse HEAD: ask for the first byte and read the total size."""
        conn, head, final_url = await self._exchange("GET", url, self._headers(headers, ("Range", "bytes=0-0")))
        try:
            if head.status == 206:
                try:
                    start, end, total = parse_content_range(head.get("content-range") or "")
                except ValueError as exc:
                    raise SourceError(f"GET {url}: {exc}") from None
                if start != 0 or (head.content_length is not None and head.content_length != end - start + 1):
                    raise SourceError(
                        f"GET {url}: asked for byte 0, origin sent Content-Range {head.get('content-range')!r} "
                        f"with Content-Length {head.content_length}"
                    )
                return self._stat_from(final_url, head, total)
            if head.status == 416:  # nothing to range over: an empty object
                return self._stat_from(final_url, head, 0)
            if head.status == 200:
                return attrs.evolve(self._stat_from(final_url, head, head.content_length), accepts_ranges=False)
            raise self._status_error("GET", url, head)
        finally:
            await conn.aclose()  # the body (maybe the whole object) is not wanted

    @staticmethod
    def _stat_from(url: str, head: ResponseHead, size: int | None) -> SourceStat:
        return SourceStat(
            url=url,
            content_length=size,
            etag=head.get("etag"),
            last_modified=head.get("last-modified"),
            content_type=head.get("content-type"),
            accepts_ranges=(head.get("accept-ranges") or "bytes").strip().lower() != "none",
        )

    # ---------------------------------------------------------- range read
    async def read_range(
        self,
        url: str,
        offset: int,
        buffer: memoryview,
        *,
        headers: Mapping[str, str] | None = None,
        validators: Validators | None = None,
    ) -> None:
        """Fill ``buffer`` with the object's bytes at ``offset``.

        Progress survives retries: after a reset at byte N of a piece, the
        next attempt asks only for what is still missing. With
        ``progress_budgets`` above 1, an attempt that brought bytes starts a
        fresh budget of attempts (up to that many budgets): an origin that flaps
        every few seconds cuts a slow piece several times, and each cut is
        progress, not a failure.
        """
        parse_target(url)
        try:  # the usual case, one attempt that succeeds, without the retry loop's cost per call
            await self._read_range_once(url, offset, buffer, 0, headers, validators)
            return
        except SourceError as exc:
            if not exc.retryable:
                raise
            replay: SourceError | None = exc
        filled = 0
        for _ in range(max(1, self.options.progress_budgets)):
            at_start = filled
            try:
                async for attempt in self._retrying():
                    with attempt:
                        try:
                            if replay is not None:  # the attempt made above: the loop's first
                                failed, replay = replay, None
                                raise failed
                            filled = await self._read_range_once(url, offset, buffer, filled, headers, validators)
                        except _Partial as exc:
                            filled = exc.filled
                            if filled > at_start and self.options.progress_budgets > 1:
                                raise _Progressed(exc) from exc
                            raise
                return
            except _Progressed as progressed:
                last = progressed.cause
        raise last

    async def _read_range_once(self, url, offset, buffer, filled, headers, validators) -> int:
        want = len(buffer) - filled
        if want == 0:
            return filled
        start = offset + filled
        if_range = None
        if validators is not None:
            if validators.etag and not validators.etag.startswith("W/"):
                if_range = validators.etag
            elif validators.last_modified:
                if_range = validators.last_modified
        conn, head, _ = await self._exchange(
            "GET", url, self._headers(headers, ("Range", range_header(start, want)), ("If-Range", if_range))
        )
        try:
            if head.status == 206:
                self._check_content_range(url, head, start, want, validators)
            elif head.status == 200:
                if validators is not None and validators.etag and head.get("etag") not in (None, validators.etag):
                    raise SourceChanged(f"GET {url}: the object changed at the origin (ETag {head.get('etag')})")
                if start != 0 or head.content_length != want:
                    raise RangeNotSupported(f"GET {url}: origin ignored the Range header")
            elif head.status == 416:
                raise SourceChanged(f"GET {url}: range {start}+{want} is past the end; the object shrank?")
            else:
                raise self._status_error("GET", url, head)
            view = buffer[filled:]
            while view:
                got = await conn.readinto(view)
                if got == 0:
                    break
                filled += got
                view = view[got:]
            if filled < len(buffer):
                raise RetryableSourceError(f"GET {url}: body ended {len(buffer) - filled} bytes short")
        except RetryableSourceError as exc:
            await conn.aclose()
            # Keep the bytes we have: the next attempt asks only for the rest.
            raise _Partial(str(exc), filled) from None
        except BaseException:
            await conn.aclose()
            raise
        await self._release(conn)
        return filled

    @staticmethod
    def _check_content_range(
        url: str, head: ResponseHead, start: int, length: int, validators: Validators | None = None
    ) -> None:
        value = head.get("content-range")
        try:
            got_start, got_end, total = parse_content_range(value or "")
        except ValueError as exc:
            raise SourceError(f"GET {url}: {exc}") from None
        expected_total = validators.content_length if validators is not None else None
        if total is not None and expected_total is not None and total != expected_total:
            raise SourceChanged(
                f"GET {url}: Content-Range {value!r} says the object is {total} bytes, not {expected_total}"
            )
        if got_start != start or got_end != start + length - 1:
            raise SourceError(
                f"GET {url}: asked for bytes {start}-{start + length - 1}, origin sent Content-Range {value!r}"
            )
        if head.content_length is not None and head.content_length != length:
            raise SourceError(f"GET {url}: Content-Length {head.content_length} disagrees with Content-Range {value!r}")

    # -------------------------------------------------------------- stream
    @asynccontextmanager
    async def open_stream(
        self, url: str, offset: int = 0, *, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[HttpConnection]:
        """One GET from ``offset`` to the end; read it with ``readinto``.

        Only the request is retried; a stream that breaks midway raises, and
        the caller resumes with a new stream from the bytes it has.
        """
        parse_target(url)
        extra = [("Range", range_header(offset, None))] if offset else []
        conn = head = None
        async for attempt in self._retrying():
            with attempt:
                conn, head, _ = await self._exchange("GET", url, self._headers(headers, *extra))
                if head.status in (200, 206) and (head.status == 206) == bool(offset):
                    break
                await conn.aclose()
                if head.status == 200 and offset:
                    raise RangeNotSupported(f"GET {url}: origin ignored the Range header")
                raise self._status_error("GET", url, head)
        assert conn is not None and head is not None
        if offset:
            try:
                got_start, _, _ = parse_content_range(head.get("content-range") or "")
            except ValueError as exc:
                await conn.aclose()
                raise SourceError(f"GET {url}: {exc}") from None
            if got_start != offset:
                await conn.aclose()
                raise SourceError(
                    f"GET {url}: asked for bytes from {offset}, origin sent {head.get('content-range')!r}"
                )
        try:
            yield conn
        except BaseException:
            await conn.aclose()
            raise
        await self._release(conn)

    async def list(self, url: str, *, headers: Mapping[str, str] | None = None) -> AsyncIterator[ListEntry]:
        """Entries of a directory-like URL from the server's index page (nginx autoindex
        HTML or JSON, Apache). Sizes the page does not state exactly are None."""
        if not url.endswith("/"):
            url += "/"
        parse_target(url)
        async for attempt in self._retrying():
            with attempt:
                body, content_type, final_url = await self._get_small(url, headers, MAX_LISTING_BYTES)
        try:
            entries = parse_index(final_url, content_type, body)
        except ValueError as exc:
            raise SourceError(f"GET {url}: not a directory listing ({exc})") from None
        for entry in entries:
            yield ListEntry(name=entry.name, url=entry.url, is_dir=entry.is_dir, size=entry.size, mtime=entry.mtime)

    async def _get_small(self, url, headers, limit: int) -> tuple[bytes, str | None, str]:
        """A whole (bounded) body: listings, manifests, tokens."""
        conn, head, final_url = await self._exchange("GET", url, self._headers(headers))
        try:
            if head.status != 200:
                raise self._status_error("GET", url, head)
            body = await self._read_small_body(conn, url, head, limit)
        except BaseException:
            await conn.aclose()
            raise
        await self._release(conn)
        return body, head.get("content-type"), final_url

    async def get_bytes(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        limit: int = MAX_LISTING_BYTES,
        *,
        follow_redirects: bool = True,
    ) -> tuple[ResponseHead, bytes]:
        """One GET returning the response head and its whole (bounded) body, whatever
        the status: for APIs whose error documents matter (S3's XML errors).

        Transport failures and retryable statuses are retried; any other status
        is returned for the caller to judge.
        """
        parse_target(url)
        async for attempt in self._retrying():
            with attempt:
                conn, head, _ = await self._exchange(
                    "GET", url, self._headers(headers), follow_redirects=follow_redirects
                )
                try:
                    if head.status in RETRYABLE_STATUSES:
                        raise self._status_error("GET", url, head)
                    body = await self._read_small_body(conn, url, head, limit)
                except BaseException:
                    await conn.aclose()
                    raise
                await self._release(conn)
                return head, body
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def exchange(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool = True,
    ) -> AsyncIterator[tuple[ResponseHead, HttpConnection]]:
        """One request on a pooled keep-alive connection, whatever the status, never retried
        (only a reused connection the server had already closed is replaced at once).

        For protocols layered on HTTP that judge statuses and headers
        themselves and pick their own retry policy (the P2P piece client, which
        moves on to another parent instead of retrying). Read the body with
        ``conn.readinto`` (``recv_into`` straight into the caller's buffer).
        On a clean exit the connection returns to the pool (a small unread
        body is drained first, a large one closes it); on an exception it is
        closed. Transport failures raise RetryableSourceError.
        """
        parse_target(url)
        conn, head, _ = await self._exchange(method, url, self._headers(headers), follow_redirects=follow_redirects)
        try:
            yield head, conn
        except BaseException:
            await conn.aclose()
            raise
        await self._release(conn)

    @staticmethod
    async def _read_small_body(conn: HttpConnection, url: str, head: ResponseHead, limit: int) -> bytes:
        if head.content_length is not None and head.content_length > limit:
            raise SourceError(f"GET {url}: body of {head.content_length} bytes is over the {limit}-byte limit")
        body = bytearray()
        chunk = memoryview(bytearray(min(limit + 1, 256 * 1024)))
        while got := await conn.readinto(chunk):
            body += chunk[:got]
            if len(body) > limit:
                raise SourceError(f"GET {url}: body is over the {limit}-byte limit")
        return bytes(body)


class _Progressed(Exception):
    """Not retryable by the budget it ends: read_range starts a fresh one (bytes arrived)."""

    def __init__(self, cause: RetryableSourceError):
        super().__init__(str(cause))
        self.cause = cause


class _Partial(RetryableSourceError):
    """A retryable failure that keeps how far the buffer was filled."""

    def __init__(self, message: str, filled: int):
        super().__init__(message)
        self.filled = filled
