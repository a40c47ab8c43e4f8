"""The file:// Source: local paths, mainly for tests, imports and NFS-style origins."""

from __future__ import annotations

import os
import stat as stat_module
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import trio

from dffs.errors import SourceChanged, SourceError, UsageError
from dffs.source.base import ListEntry, SourceStat, Validators


def path_from_url(url: str) -> Path:
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise UsageError(f"unsupported URL scheme {parts.scheme!r} in {url!r}")
    if parts.netloc not in ("", "localhost"):
        raise UsageError(f"malformed URL {url!r}: file URLs name no host")
    if not parts.path:
        raise UsageError(f"malformed URL {url!r}: no path")
    return Path(unquote(parts.path))


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


class _FileStream:
    def __init__(self, fd: int, offset: int, length: int):
        self._fd = fd
        self._offset = offset
        self.content_length = length

    async def readinto(self, buffer: memoryview) -> int:
        got = await trio.to_thread.run_sync(os.preadv, self._fd, [buffer], self._offset)
        self._offset += got
        return got


class FileSource:
    schemes = ("file",)

    async def stat(
        self, url: str, *, headers: Mapping[str, str] | None = None, validators: Validators | None = None
    ) -> SourceStat:
        path = path_from_url(url)
        try:
            st = await trio.to_thread.run_sync(os.stat, path)
        except OSError as exc:
            raise SourceError(f"{path}: {exc.strerror}") from None
        if not stat_module.S_ISREG(st.st_mode):
            raise SourceError(f"{path}: not a regular file")
        etag = _etag(st)
        return SourceStat(
            url=url,
            content_length=st.st_size,
            etag=etag,
            not_modified=validators is not None and validators.etag == etag,
        )

    async def read_range(
        self,
        url: str,
        offset: int,
        buffer: memoryview,
        *,
        headers: Mapping[str, str] | None = None,
        validators: Validators | None = None,
    ) -> None:
        path = path_from_url(url)

        def read() -> None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if validators is not None and validators.etag and validators.etag != _etag(os.fstat(fd)):
                    raise SourceChanged(f"{path} changed while it was being read")
                view, position = buffer, offset
                while view:
                    got = os.preadv(fd, [view], position)
                    if got == 0:
                        raise SourceChanged(f"{path} is shorter than expected")
                    view, position = view[got:], position + got
            finally:
                os.close(fd)

        try:
            await trio.to_thread.run_sync(read)
        except OSError as exc:
            raise SourceError(f"{path}: {exc.strerror}") from None

    @asynccontextmanager
    async def open_stream(self, url: str, offset: int = 0, *, headers: Mapping[str, str] | None = None):
        path = path_from_url(url)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(f"{path}: {exc.strerror}") from None
        try:
            yield _FileStream(fd, offset, max(0, os.fstat(fd).st_size - offset))
        finally:
            os.close(fd)

    async def list(self, url: str, *, headers: Mapping[str, str] | None = None) -> AsyncIterator[ListEntry]:
        path = path_from_url(url)
        try:
            entries = await trio.to_thread.run_sync(lambda: sorted(os.scandir(path), key=lambda e: e.name))
        except OSError as exc:
            raise SourceError(f"{path}: {exc.strerror}") from None
        for entry in entries:
            try:
                st = entry.stat()
            except OSError:
                continue
            is_dir = stat_module.S_ISDIR(st.st_mode)
            yield ListEntry(
                name=entry.name,
                url="file://" + quote(os.path.join(path, entry.name)) + ("/" if is_dir else ""),
                is_dir=is_dir,
                size=None if is_dir else st.st_size,
                mtime=st.st_mtime,
                etag=None if is_dir else _etag(st),
            )

    async def aclose(self) -> None:
        pass
