"""The Source interface: how dffs reaches an origin ("back-to-source").

Every scheme (http, https, file, and later s3 and oci) implements the same
three operations, so the download layer never knows which one it talks to:

* ``stat``       — size and validators, never the body;
* ``read_range`` — fill a caller's buffer with exactly the bytes at an offset;
* ``open_stream``— one sequential body from an offset, for origins without Range;
* ``list``       — the entries under a directory-like URL (used by the mount).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import attrs


@attrs.frozen
class SourceStat:
    """What an origin says about an object, without its bytes."""

    url: str  #: the URL the bytes come from, after redirects
    content_length: int | None  #: None when the origin does not say
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    accepts_ranges: bool = True
    #: True when a conditional stat was answered "not modified".
    not_modified: bool = False


@attrs.frozen
class Validators:
    """Conditions that tie a request to one version of an object."""

    etag: str | None = None
    last_modified: str | None = None
    #: The object's size as first seen: a ranged answer about another size is a changed object.
    content_length: int | None = None

    @property
    def any(self) -> bool:
        return bool(self.etag or self.last_modified)


@attrs.frozen
class ListEntry:
    name: str
    url: str
    is_dir: bool
    size: int | None = None
    mtime: float | None = None
    etag: str | None = None


class BodyStream(Protocol):
    """A sequential body: ``readinto`` returns 0 only at the end."""

    content_length: int | None

    async def readinto(self, buffer: memoryview) -> int: ...


class Source(Protocol):
    async def stat(
        self, url: str, *, headers: Mapping[str, str] | None = None, validators: Validators | None = None
    ) -> SourceStat: ...

    async def read_range(
        self,
        url: str,
        offset: int,
        buffer: memoryview,
        *,
        headers: Mapping[str, str] | None = None,
        validators: Validators | None = None,
    ) -> None: ...

    def open_stream(
        self, url: str, offset: int = 0, *, headers: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[BodyStream]: ...

    def list(self, url: str, *, headers: Mapping[str, str] | None = None) -> AsyncIterator[ListEntry]: ...

    async def aclose(self) -> None: ...
