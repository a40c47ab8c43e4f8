"""A directory-like URL as a whole tree: every file below it, from the source's own listings.

``dffs get --recursive`` and ``dffs ctl preheat --recursive`` treat a dataset
(an autoindex directory, an S3 prefix) as one unit; both need the same walk,
with the same guards against listings that lie:

* a name that cannot be one path component (empty, ``.``, ``..``, a ``/`` or
  NUL inside) is skipped and logged, never joined into a local path;
* a sub-directory is only entered when its URL lies below the root, so a
  listing cannot send the walk to another host or back up the tree, and each
  directory is listed once, so links in a circle end;
* depth and the number of entries are bounded, and going past either is a
  clear error rather than an endless walk.

The walk is breadth first and asks for one listing at a time: a listing is a
cheap request next to the files it names.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import attrs

from dffs.errors import SourceError, UsageError
from dffs.source.base import ListEntry, Source

log = logging.getLogger(__name__)

#: Deepest directory nesting a walk enters.
MAX_DEPTH = 64
#: Most entries (files and directories) one walk accepts.
MAX_ENTRIES = 1_000_000


@attrs.frozen
class TreeFile:
    """One file of a tree: where it goes (``parts`` below the root) and where it comes from."""

    parts: tuple[str, ...]
    url: str
    size: int | None = None
    mtime: float | None = None
    etag: str | None = None

    @property
    def path(self) -> str:
        return "/".join(self.parts)


def is_tree_url(url: str) -> bool:
    """True for a URL that names a directory (ends with ``/``), or an S3 bucket or prefix."""
    parts = urlsplit(url)
    return parts.path.endswith("/") or (parts.scheme.lower() == "s3" and parts.path in ("", "/"))


def component(name: str) -> str | None:
    """``name`` as one safe path component, or None when it cannot be one."""
    name = name.rstrip("/")
    if name in ("", ".", "..") or "/" in name or "\x00" in name or len(name.encode()) > 255:
        return None
    return name


def _below(url: str, root: str) -> bool:
    a, b = urlsplit(url), urlsplit(root)
    return (
        a.scheme.lower() == b.scheme.lower()
        and a.netloc.lower() == b.netloc.lower()
        and a.path.startswith(b.path)
        and a.path != b.path
    )


async def walk(
    source: Source,
    root: str,
    *,
    headers: Mapping[str, str] | None = None,
    max_depth: int = MAX_DEPTH,
    max_entries: int = MAX_ENTRIES,
) -> AsyncIterator[TreeFile]:
    """Every file below ``root``, breadth first, in each listing's order.

    Raises UsageError for a root that is not a directory URL, SourceError when
    a listing fails or the tree is larger than the bounds."""
    if not is_tree_url(root):
        raise UsageError(f"{root}: a recursive download needs a directory URL (ending with '/')")
    if urlsplit(root).scheme.lower() == "s3" and not root.endswith("/"):
        root += "/"
    pending: deque[tuple[tuple[str, ...], str]] = deque([((), root)])
    listed: set[str] = {root}
    seen = 0
    while pending:
        parts, url = pending.popleft()
        names: set[str] = set()
        async for entry in source.list(url, headers=headers):
            seen += 1
            if seen > max_entries:
                raise SourceError(f"{root}: more than {max_entries} entries; not walking further")
            name = component(entry.name)
            if name is None or name in names:
                log.warning("event=listing_entry_skipped url=%s name=%r reason=bad_or_repeated_name", url, entry.name)
                continue
            names.add(name)
            if entry.is_dir:
                sub = _directory_url(entry)
                if not _below(sub, root) or sub in listed:
                    log.warning("event=listing_entry_skipped url=%s name=%r reason=outside_or_seen", url, name)
                    continue
                if len(parts) + 1 > max_depth:
                    raise SourceError(f"{root}: deeper than {max_depth} directories; not walking further")
                listed.add(sub)
                pending.append(((*parts, name), sub))
            else:
                yield _file(parts, name, entry)


def _directory_url(entry: ListEntry) -> str:
    return entry.url if entry.url.endswith("/") else entry.url + "/"


def _file(parts: tuple[str, ...], name: str, entry: ListEntry) -> TreeFile:
    return TreeFile((*parts, name), entry.url, entry.size, entry.mtime, entry.etag)


__all__ = ["MAX_DEPTH", "MAX_ENTRIES", "TreeFile", "component", "is_tree_url", "walk"]
