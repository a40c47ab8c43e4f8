"""Directory listings served by web servers: nginx autoindex (HTML or JSON) and Apache.

Pure parsing, no I/O. nginx's HTML listing gives exact sizes (the default
``autoindex_exact_size on``) and minute-resolution times; its JSON format
(``autoindex_format json``) gives both exactly. Apache's fancy index shows
rounded sizes ("1.2M"), which are reported as unknown so the caller asks the
server (HEAD) rather than trust them.
"""

from __future__ import annotations

import json
import re
import time
from calendar import timegm
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from urllib.parse import quote, unquote, urljoin, urlsplit

import attrs

from dffs.bounds import check_size, timestamp


@attrs.frozen
class IndexEntry:
    name: str
    url: str
    is_dir: bool
    size: int | None
    mtime: float | None


_NGINX_LINE = re.compile(r"^\s*(\d{2}-[A-Za-z]{3}-\d{4} \d{2}:\d{2})\s+(-|\d{1,20})\s*$")
_APACHE_DATE = re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2})")


class _LinkCollector(HTMLParser):
    """Collects (href, text after the link up to the next tag or link)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[list[str]] = []
        self._in_a = False

    def handle_starttag(self, tag, attributes):
        if tag == "a":
            href = dict(attributes).get("href")
            if href is not None:
                self.links.append([href, ""])
                self._in_a = True

    def handle_endtag(self, tag):
        if tag == "a":
            self._in_a = False

    def handle_data(self, data):
        if self.links and not self._in_a:
            self.links[-1][1] += data


def _entry_name(base_url: str, href: str) -> tuple[str, str, bool] | None:
    """(name, absolute url, is_dir) for a link that names a direct child of base_url."""
    if href.startswith(("?", "#")) or href in ("../", "..", "./", "/"):
        return None
    absolute = urljoin(base_url, href)
    base_path = urlsplit(base_url).path
    if not base_path.endswith("/"):
        base_path += "/"
    parts = urlsplit(absolute)
    if parts.query or parts.fragment or urlsplit(base_url).netloc != parts.netloc:
        return None
    if not parts.path.startswith(base_path):
        return None
    rest = parts.path[len(base_path) :]
    is_dir = rest.endswith("/")
    rest = rest.rstrip("/")
    if not rest or "/" in rest:
        return None
    name = unquote(rest)
    if name in (".", "..") or "/" in name or "\x00" in name:
        return None
    return name, absolute, is_dir


def _time(text: str, layout: str) -> float | None:
    """A listing's time, or None when it is not a real date (``31-Feb-2024``) or out of range."""
    try:
        return timestamp(timegm(time.strptime(text, layout)))
    except (ValueError, OverflowError):
        return None


def _size(value: object) -> int | None:
    """A listed size, or None (unknown: the mount asks the server) when it is not a sane one."""
    try:
        return check_size(value)
    except ValueError:
        return None


def parse_html_index(base_url: str, html: str) -> list[IndexEntry]:
    collector = _LinkCollector()
    collector.feed(html)
    entries: dict[str, IndexEntry] = {}
    for href, trailing in collector.links:
        named = _entry_name(base_url, href)
        if named is None:
            continue
        name, url, is_dir = named
        size = mtime = None
        first_line = trailing.split("\n", 1)[0]
        match = _NGINX_LINE.match(first_line)
        if match:
            mtime = _time(match.group(1), "%d-%b-%Y %H:%M")
            size = None if match.group(2) == "-" else _size(int(match.group(2)))
        else:
            date = _APACHE_DATE.search(trailing)
            if date:
                mtime = _time(date.group(1), "%Y-%m-%d %H:%M")
        entries.setdefault(name, IndexEntry(name, url, is_dir, None if is_dir else size, mtime))
    return list(entries.values())


def parse_json_index(base_url: str, text: str) -> list[IndexEntry]:
    """nginx ``autoindex_format json``: ``[{"name", "type", "mtime", "size"}]``."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError("JSON listing is nested too deeply") from None
    if not isinstance(data, list):
        raise ValueError("JSON listing is not a list")
    entries = []
    base = base_url if base_url.endswith("/") else base_url + "/"
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue  # one bad entry costs itself, not the listing
        name = item["name"]
        if name in (".", "..") or "/" in name or "\x00" in name or not name:
            continue
        try:
            quoted = quote(name)
        except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: no URL names it
            continue
        is_dir = item.get("type") == "directory"
        mtime = None
        if isinstance(item.get("mtime"), str):
            try:
                mtime = timestamp(parsedate_to_datetime(item["mtime"]).timestamp())
            except (TypeError, ValueError, OverflowError, IndexError):
                mtime = None
        size = _size(item.get("size")) if not is_dir else None
        entries.append(IndexEntry(name, urljoin(base, quoted + ("/" if is_dir else "")), is_dir, size, mtime))
    return entries


def parse_index(base_url: str, content_type: str | None, body: bytes) -> list[IndexEntry]:
    """Entries of a listing page; ValueError if it is not one we understand."""
    text = body.decode("utf-8", "replace")
    if content_type and "json" in content_type.lower():
        return parse_json_index(base_url, text)
    if "<a" not in text.lower():
        raise ValueError("not a directory listing")
    return parse_html_index(base_url, text)
