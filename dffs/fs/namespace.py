"""What each path in the mount is: resolving lookups and listings against origins.

Layout::

    MOUNT/http/<host[:port]>/<path>     any http URL, by path
    MOUNT/https/<host[:port]>/<path>    any https URL
    MOUNT/<NAME>/...                    a --source NAME=URL tree (HTTP autoindex, S3 prefix)
    MOUNT/<manifest paths>              files laid out by --manifest, no listing calls

Lookups under an origin use the directory's listing when a fresh one is cached
(so ``ls -l`` of a listed directory makes no per-entry request), and a HEAD of
the one URL otherwise. Results are cached with a TTL; misses briefly.
"""

from __future__ import annotations

import errno
import logging
import re
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import TypeVar
from urllib.parse import quote

import attrs
import pyfuse3
import trio

from dffs.bounds import check_size, name_problem, timestamp
from dffs.errors import DffsError, SourceError, UsageError
from dffs.fs.listing_cache import ListingCache
from dffs.fs.manifest import ManifestEntry
from dffs.fs.nodes import InodeTable, Node, Role
from dffs.peertask.request import DownloadRequest
from dffs.peertask.swarm import NoSwarm, Swarm
from dffs.source import ListEntry, SourceRegistry

log = logging.getLogger(__name__)
T = TypeVar("T")


async def collect_with_progress(entries: AsyncIterator[T], timeout: float) -> list[T]:
    """Every item of ``entries``; trio.TooSlowError once ``timeout`` seconds pass without a new one.

    A listing of 100,000 objects comes in many pages (S3 pages 1,000 keys): the timeout bounds a
    stalled origin, not how long a big directory takes to list."""
    items: list[T] = []
    with trio.CancelScope() as scope:
        scope.deadline = pushed = trio.current_time() + timeout
        async for item in entries:
            items.append(item)
            now = trio.current_time()
            if now + timeout - pushed > 0.5:  # move the deadline now and then, not per item
                scope.deadline = pushed = now + timeout
    if scope.cancelled_caught:
        raise trio.TooSlowError
    return items


SCHEMES = ("http", "https")
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::(?:[1-9][0-9]{0,4}))?$"
)
#: Schemes whose directories are resolved from listings only (no HEAD of a guessed URL).
LISTING_ONLY_SCHEMES = ("s3",)


def valid_host(name: str) -> bool:
    if not _HOST_RE.match(name) or len(name) > 260:
        return False
    port = name.rsplit(":", 1)[1] if ":" in name and not name.endswith("]") else None
    return port is None or int(port) <= 65535


def parse_http_date(value: str | None) -> float:
    """An HTTP date as seconds since the epoch; 0 (unknown) when garbage or out of range, as RFC 9110
    lets a recipient ignore an invalid Last-Modified."""
    if not value:
        return 0.0
    try:
        return timestamp(parsedate_to_datetime(value).timestamp()) or 0.0
    except (TypeError, ValueError, OverflowError, IndexError):
        return 0.0


def fuse_error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


@attrs.define
class _Flight:
    done: trio.Event = attrs.Factory(trio.Event)
    result: object = None
    error: BaseException | None = None


class Namespace:
    def __init__(
        self,
        sources: SourceRegistry,
        *,
        named_sources: dict[str, str] | None = None,
        manifest: list[ManifestEntry] | None = None,
        metadata_ttl: float = 60.0,
        negative_ttl: float = 5.0,
        op_timeout: float = 30.0,
        swarm: Swarm | None = None,
        listings: ListingCache | None = None,
    ):
        self.sources = sources
        #: Listings kept across mounts (see dffs.fs.listing_cache); None: memory only.
        self.listings = listings
        #: Who else may know an object (the daemon's P2P): asked before the origin's HEAD.
        self.swarm: Swarm = swarm or NoSwarm()
        self.table = InodeTable()
        self.metadata_ttl = metadata_ttl
        self.negative_ttl = negative_ttl
        self.op_timeout = op_timeout
        #: Origin requests in progress, so concurrent lookups share one (single flight).
        self._flights: dict[tuple, _Flight] = {}
        self.origin_requests = 0
        root = self.table.root
        for scheme in SCHEMES:
            self.table.add_child(root, scheme, Role.SCHEME, static=True)
        for name, url in (named_sources or {}).items():
            if name in root.children:
                raise UsageError(f"--source {name}=...: the name {name!r} is taken")
            sources.validate(url)
            self.table.add_child(root, name, Role.REMOTE_DIR, url=url if url.endswith("/") else url + "/")
        for entry in manifest or []:
            self._add_manifest_entry(entry)

    def _add_manifest_entry(self, entry: ManifestEntry) -> None:
        node = self.table.root
        for part in entry.parts[:-1]:
            child = node.children.get(part)
            if child is None:
                child = self.table.add_child(node, part, Role.STATIC_DIR, static=True)
            elif child.role is not Role.STATIC_DIR:
                raise UsageError(f"manifest path {entry.path!r} collides with the mount's {child.path()!r}")
            node = child
        name = entry.parts[-1]
        if name in node.children:
            raise UsageError(f"manifest path {entry.path!r} collides with the mount's {node.children[name].path()!r}")
        self.sources.validate(entry.url)
        self.table.add_child(
            node,
            name,
            Role.FILE,
            url=entry.url,
            size=entry.size,
            digest=entry.digest,
            mtime=entry.mtime or 0.0,
            static=True,
        )

    # ----------------------------------------------------------- freshness
    def _fresh(self, node: Node) -> bool:
        return node.static or time.monotonic() - node.checked_at < self.metadata_ttl

    def _listed(self, node: Node) -> bool:
        return node.listed_at is not None and time.monotonic() - node.listed_at < self.metadata_ttl

    def _known_missing(self, node: Node, name: str) -> bool:
        when = node.missing.get(name)
        return when is not None and time.monotonic() - when < self.negative_ttl

    # -------------------------------------------------------------- lookup
    async def lookup(self, parent: Node, name: str) -> Node:
        """The child ``name`` of ``parent``; FUSEError(ENOENT/EIO) otherwise."""
        if not name or "/" in name or "\x00" in name or name in (".", ".."):
            raise fuse_error(errno.ENOENT)
        role = parent.role
        child = parent.children.get(name)
        if role in (Role.ROOT, Role.STATIC_DIR):
            if child is None:
                raise fuse_error(errno.ENOENT)
            return child
        if role is Role.SCHEME:
            if child is not None:
                return child
            if not valid_host(name):
                raise fuse_error(errno.ENOENT)
            return self.table.add_child(parent, name, Role.REMOTE_DIR, url=f"{parent.name}://{name}/")
        if role is not Role.REMOTE_DIR:
            raise fuse_error(errno.ENOTDIR)
        if child is not None and self._fresh(child):
            return child
        if self._known_missing(parent, name):
            raise fuse_error(errno.ENOENT)
        if (
            self._listed(parent)
            or parent.remote_url.split(":", 1)[0] in LISTING_ONLY_SCHEMES
            or await self._stored_fresh(parent)
        ):
            await self.list_dir(parent)
            child = parent.children.get(name)
            if child is None:
                parent.missing[name] = time.monotonic()
                raise fuse_error(errno.ENOENT)
            return child
        return await self._single_flight(("head", parent.inode, name), self._lookup_by_head, parent, name)

    async def _single_flight(self, key: tuple, fn, *args):
        """Run ``fn(*args)`` once for all concurrent callers with the same ``key``;
        they all get its result or its error."""
        flight = self._flights.get(key)
        if flight is not None:
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.result
        flight = self._flights[key] = _Flight()
        try:
            flight.result = await fn(*args)
            return flight.result
        except pyfuse3.FUSEError as exc:
            flight.error = exc
            raise
        except BaseException:
            flight.error = fuse_error(errno.EIO)  # e.g. cancelled: waiters must not inherit that
            raise
        finally:
            del self._flights[key]
            flight.done.set()

    async def _lookup_by_head(self, parent: Node, name: str) -> Node:
        url = parent.remote_url + quote(name, safe="")
        try:
            source = self.sources.for_url(url)
            with trio.fail_after(self.op_timeout):
                # Metadata from the swarm first: a member holding the object makes the origin's HEAD unneeded.
                stat = await self.swarm.stat(DownloadRequest(url=url))
                if stat is None:
                    self.origin_requests += 1
                    stat = await source.stat(url)
        except UsageError:
            raise fuse_error(errno.ENOENT) from None
        except trio.TooSlowError:
            log.warning("event=lookup_timeout url=%s timeout=%gs", url, self.op_timeout)
            raise fuse_error(errno.EIO) from None
        except SourceError as exc:
            if exc.status is None and not isinstance(self.swarm, NoSwarm):
                # The origin is unreachable and no member holds a file here: most likely a directory on the
                # way to files members hold. Assumed for a short while; its listing fails until the origin is back.
                log.info("event=origin_unreachable action=assume_directory url=%s error=%s", url, exc)
                node = self.table.add_child(parent, name, Role.REMOTE_DIR, url=url + "/")
                node.checked_at = time.monotonic() - self.metadata_ttl + self.negative_ttl
                return node
            if exc.status in (404, 410):
                parent.missing[name] = time.monotonic()
                self.table.detach(parent, name)
                raise fuse_error(errno.ENOENT) from None
            if exc.status in (401, 403):
                log.info("event=lookup_denied url=%s error=%s", url, exc)
                raise fuse_error(errno.EACCES) from None
            log.warning("event=lookup_failed url=%s error=%s", url, exc)
            raise fuse_error(errno.EIO) from None
        if stat.url.endswith("/") and not url.endswith("/"):
            return self.table.add_child(parent, name, Role.REMOTE_DIR, url=stat.url)
        if stat.content_length is None:
            log.warning("event=lookup_no_size url=%s", url)
            raise fuse_error(errno.EIO)
        return self.table.add_child(
            parent,
            name,
            Role.FILE,
            url=url,
            size=stat.content_length,
            etag=stat.etag,
            mtime=parse_http_date(stat.last_modified),
        )

    # ------------------------------------------------------------- listing
    async def list_dir(self, node: Node) -> list[Node]:
        """The children of a directory, listing the origin when needed.

        An origin that cannot list (no autoindex, 403) still has the children
        that were looked up by name; the error is logged, not raised.
        """
        if node.role is Role.REMOTE_DIR and not self._listed(node):
            await self._single_flight(("list", node.inode), self._refresh_listing, node)
        return list(node.children.values())

    async def _stored_fresh(self, node: Node) -> bool:
        """Whether an earlier mount left a listing of ``node`` fresh enough to answer lookups from."""
        if self.listings is None or node.listed_at is not None:
            return False
        stored = await trio.to_thread.run_sync(self.listings.get, node.remote_url)
        return stored is not None and stored[0] < self.metadata_ttl

    async def _refresh_listing(self, node: Node) -> None:
        stored = await trio.to_thread.run_sync(self.listings.get, node.remote_url) if self.listings else None
        entries: list[ListEntry] | None
        if stored is not None and stored[0] < self.metadata_ttl:
            entries = stored[1]  # listed by this or an earlier mount moments ago
        else:
            entries = await self._fetch_listing(node, stored[1] if stored is not None else None)
        if entries is not None:
            self._apply_listing(node, await self._with_swarm_validators(entries))

    async def _with_swarm_validators(self, entries: list[ListEntry]) -> list[ListEntry]:
        """Listings rarely carry ETags (nginx's never do); what members hold the swarm can pin, for a whole
        directory in one exchange (StatTasks), so those files keep the kernel's cache across opens. The
        same exchange tells the swarm who holds the small ones (a P2P daemon keeps that as hints)."""
        if isinstance(self.swarm, NoSwarm):
            return entries
        # Every file, ETag or not: the swarm also names who holds the small ones (dffs.daemon.small_tasks).
        wanted = {DownloadRequest(url=e.url).task_id: i for i, e in enumerate(entries) if not e.is_dir}
        if not wanted:
            return entries
        with trio.move_on_after(self.op_timeout):
            known = await self.swarm.stat_many([DownloadRequest(url=entries[i].url) for i in wanted.values()])
            pinned = 0
            entries = list(entries)
            for tid, stat in known.items():
                i = wanted.get(tid)
                if i is not None and stat.etag and not entries[i].etag and stat.content_length == entries[i].size:
                    entries[i] = attrs.evolve(entries[i], etag=stat.etag)
                    pinned += 1
            log.info("event=swarm_listing_metadata files=%d known=%d pinned=%d", len(wanted), len(known), pinned)
        return entries

    async def _fetch_listing(self, node: Node, stale: list[ListEntry] | None) -> list[ListEntry] | None:
        """The origin's listing of ``node`` (kept for the next mount); an older stored one when the origin
        cannot be reached; None when there is none to show."""
        self.origin_requests += 1
        try:
            source = self.sources.for_url(node.remote_url)
            entries = await collect_with_progress(source.list(node.remote_url), self.op_timeout)
        except trio.TooSlowError:
            if stale is not None:
                log.info("event=listing_timeout action=serve_stored url=%s", node.url)
                return stale
            log.warning("event=listing_timeout url=%s", node.url)
            raise fuse_error(errno.EIO) from None
        except DffsError as exc:
            if isinstance(exc, SourceError) and exc.status in (404, 410):
                raise fuse_error(errno.ENOENT) from None
            if stale is not None and isinstance(exc, SourceError) and exc.status is None:
                log.info("event=listing_unavailable action=serve_stored url=%s error=%s", node.url, exc)
                return stale
            log.info("event=listing_unavailable url=%s error=%s", node.url, exc)
            return None
        if self.listings is not None:
            await trio.to_thread.run_sync(self.listings.put, node.remote_url, entries)
        return entries

    def _apply_listing(self, node: Node, entries: list[ListEntry]) -> None:
        seen = set()
        skipped = 0
        for entry in entries:
            # Whatever the listing's parser let through, a name must be one file name and a
            # size a real size: a bad entry is logged and left out, the rest of the directory stays.
            problem = name_problem(entry.name)
            if problem is None and entry.size is not None:
                try:
                    check_size(entry.size)
                except ValueError as exc:
                    problem = str(exc)
            if problem is not None:
                skipped += 1
                if skipped <= 10:
                    log.error(
                        "event=listing_entry_skipped url=%s name=%r reason=%s", node.url, entry.name[:300], problem
                    )
                continue
            if entry.name in seen:
                continue  # a listing that names an entry twice: the first one counts
            if entry.size is None and not entry.is_dir:
                continue  # rounded or missing size: resolved by HEAD when looked up
            seen.add(entry.name)
            mtime = timestamp(entry.mtime) or 0.0
            if entry.is_dir:
                self.table.add_child(node, entry.name, Role.REMOTE_DIR, url=entry.url, mtime=mtime)
            else:
                self.table.add_child(
                    node, entry.name, Role.FILE, url=entry.url, size=entry.size, mtime=mtime, etag=entry.etag
                )
        if skipped > 10:
            log.error("event=listing_entries_skipped url=%s count=%d", node.url, skipped)
        for name in [n for n in node.children if n not in seen]:
            self.table.detach(node, name)
        node.listed_at = time.monotonic()
