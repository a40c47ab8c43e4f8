"""Back-to-source: reaching origins by URL scheme behind one interface."""

from __future__ import annotations

from urllib.parse import urlsplit

from dffs.errors import UsageError
from dffs.source.base import BodyStream, ListEntry, Source, SourceStat, Validators
from dffs.source.file import FileSource
from dffs.source.http import HttpOptions, HttpSource
from dffs.source.http.protocol import parse_target
from dffs.source.s3 import S3Source, parse_s3_url


class SourceRegistry:
    """The Source for each URL scheme, created once per process and shared."""

    def __init__(self, *, http_options: HttpOptions | None = None):
        http = HttpSource(http_options)
        self._by_scheme: dict[str, Source] = {
            "http": http,
            "https": http,
            "file": FileSource(),
            "s3": S3Source(http=http),
        }

    @property
    def schemes(self) -> list[str]:
        return sorted(self._by_scheme)

    def validate(self, url: str) -> None:
        """Raise UsageError if ``url`` is not something any source can fetch."""
        scheme = urlsplit(url).scheme.lower() if "://" in url else ""
        if not scheme:
            raise UsageError(f"malformed URL {url!r}: expected SCHEME://...")
        if scheme not in self._by_scheme:
            raise UsageError(f"unsupported URL scheme {scheme!r} in {url!r} (supported: {', '.join(self.schemes)})")
        if scheme in ("http", "https"):
            parse_target(url)
        elif scheme == "file":
            from dffs.source.file import path_from_url

            path_from_url(url)
        elif scheme == "s3":
            parse_s3_url(url)

    def for_url(self, url: str) -> Source:
        self.validate(url)
        return self._by_scheme[urlsplit(url).scheme.lower()]

    async def aclose(self) -> None:
        for source in {id(s): s for s in self._by_scheme.values()}.values():
            await source.aclose()


__all__ = [
    "BodyStream",
    "FileSource",
    "HttpOptions",
    "HttpSource",
    "ListEntry",
    "S3Source",
    "Source",
    "SourceRegistry",
    "SourceStat",
    "Validators",
]
