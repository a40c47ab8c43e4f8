"""Hostile listings and manifests: each bad entry is a logged error and a skipped entry (a manifest the
user gave is refused with the line named), never a crash; the rest of the directory stays.

Listings come from a real origin (FaultyOrigin serving an autoindex page, or an S3 ListObjectsV2
answer) through the real sources into the mount's namespace; the FUSE layer itself is exercised in
test_evil_origin.py.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
from origins import Behavior

from dffs.bounds import MAX_OBJECT_SIZE, MAX_TIMESTAMP
from dffs.errors import UsageError
from dffs.fs.manifest import parse_manifest_lines
from dffs.fs.namespace import Namespace, parse_http_date
from dffs.fs.nodes import Node, Role, attributes
from dffs.source import SourceRegistry
from dffs.source.http.autoindex import parse_index
from dffs.source.s3 import S3Source, parse_list_page

LONG = "x" * 256
EVIL_NAMES = ["a\nb", "tab\there", "bell\x07", "del\x7f", LONG, ".", ".."]


def autoindex_page(names_and_sizes: list[tuple[str, str]]) -> bytes:
    """An nginx-style autoindex page; names are percent-encoded in hrefs as nginx does."""
    from urllib.parse import quote

    rows = "".join(
        f'<a href="{quote(name)}">{name[:40]}</a>  01-Jan-2024 10:00  {size}\n' for name, size in names_and_sizes
    )
    return f"<html><body><pre>{rows}</pre></body></html>".encode()


async def listed(namespace: Namespace, url: str) -> dict[str, Node]:
    node = namespace.table.add_child(namespace.table.root, "src", Role.REMOTE_DIR, url=url)
    return {n.name: n for n in await namespace.list_dir(node)}


async def test_autoindex_with_evil_entries_lists_the_good_ones(faulty_origin, caplog):
    entries = [("good.bin", "10"), ("big.bin", "99999999999999999999"), ("huge.bin", "1" * 30)]
    entries += [(name, "5") for name in EVIL_NAMES]
    faulty_origin.add("/dir/", autoindex_page(entries))
    sources = SourceRegistry()
    try:
        namespace = Namespace(sources)
        with caplog.at_level(logging.ERROR):
            children = await listed(namespace, faulty_origin.url("/dir/"))
    finally:
        await sources.aclose()
    assert set(children) == {"good.bin"}
    assert children["good.bin"].size == 10
    skipped = [r.getMessage() for r in caplog.records if "listing_entry_skipped" in r.getMessage()]
    assert any("control characters" in m for m in skipped) and any("bytes long" in m for m in skipped)


async def test_autoindex_json_with_evil_entries(faulty_origin):
    items = [
        {"name": "ok", "type": "file", "size": 3, "mtime": "Mon, 01 Jan 2024 10:00:00 GMT"},
        {"name": "neg", "type": "file", "size": -5},
        {"name": "nan", "type": "file", "size": 1.5},
        {"name": "far", "type": "file", "size": 4, "mtime": "Fri, 31 Dec 9999 23:59:59 GMT"},
        {"name": 7, "type": "file", "size": 1},
        {"name": "\ud800", "type": "file", "size": 1},
        {"type": "file"},
        "not an object",
    ]
    body = json.dumps(items).encode()
    faulty_origin.add("/j/", body, behavior=Behavior(replace_headers=(("Content-Type", "application/json"),)))
    sources = SourceRegistry()
    try:
        children = await listed(Namespace(sources), faulty_origin.url("/j/"))
    finally:
        await sources.aclose()
    assert set(children) == {"ok", "far"}  # neg/nan: no sane size (looked up by HEAD instead)
    assert children["far"].mtime == 0.0 and children["ok"].mtime > 0


S3_PAGE = """<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix>d/</Prefix><IsTruncated>false</IsTruncated>
  {contents}
</ListBucketResult>"""


def s3_contents(key: str, size: str = "5", modified: str = "2024-01-01T00:00:00.000Z") -> str:
    from xml.sax.saxutils import escape

    return f"<Contents><Key>{escape(key)}</Key><Size>{size}</Size><LastModified>{modified}</LastModified></Contents>"


def s3_prefix(prefix: str) -> str:
    from xml.sax.saxutils import escape

    return f"<CommonPrefixes><Prefix>{escape(prefix)}</Prefix></CommonPrefixes>"


def test_s3_page_skips_keys_that_are_not_direct_children_and_bad_sizes():
    contents = "".join(
        [
            s3_contents("d/ok"),
            s3_contents("d/a/b"),  # below a sub-prefix
            s3_contents("d//x"),  # an empty component
            s3_contents("d/neg", size="-1"),
            s3_contents("d/big", size="99999999999999999999"),
            s3_contents("d/under", size="1_0"),
            s3_contents("d/far", modified="9999-12-31T23:59:59Z"),
            s3_prefix("d/sub/"),
            s3_prefix("d/sub/deeper/"),
            s3_prefix("elsewhere/"),
            s3_prefix("d//"),
        ]
    )
    page = parse_list_page(S3_PAGE.format(contents=contents).encode(), "b", "d/")
    names = {e.name: e for e in page.entries}
    assert set(names) == {"ok", "far", "sub"}
    assert names["far"].mtime is None
    skipped = dict(page.skipped)
    assert {"d/a/b", "d//x", "d/neg", "d/big", "d/under", "d/sub/deeper/", "elsewhere/"} <= set(skipped)


async def test_s3_listing_with_evil_keys_through_the_namespace(faulty_origin, monkeypatch, caplog):
    """FaultyOrigin stands in for an S3 endpoint (unsigned requests): the listing is its answer."""
    # XML 1.0 cannot carry most C0 controls even escaped (S3 would URL-encode such keys): the rest it can.
    evil = [name for name in EVIL_NAMES if name != "bell\x07"]
    contents = "".join(s3_contents(f"d/{name}") for name in ["ok", "", *evil])
    faulty_origin.add("/b", S3_PAGE.format(contents=contents).encode())
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    sources = SourceRegistry()
    sources._by_scheme["s3"] = S3Source(
        http=sources._by_scheme["http"], endpoint_url=faulty_origin.base_url, unsigned=True
    )
    try:
        with caplog.at_level(logging.ERROR):
            children = await listed(Namespace(sources), "s3://b/d/")
    finally:
        await sources.aclose()
    assert set(children) == {"ok"}
    assert sum("listing_entry_skipped" in r.getMessage() for r in caplog.records) == len(evil)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"path": "a", "url": "http://h/a", "size": NaN}', "NaN"),
        ('{"path": "a", "url": "http://h/a", "size": 1, "mtime": Infinity}', "Infinity"),
        ('{"path": "a", "url": "http://h/a", "size": 1, "mtime": -Infinity}', "Infinity"),
        ('{"path": "a", "url": "http://h/a", "size": -1}', "size"),
        ('{"path": "a", "url": "http://h/a", "size": 1e400}', "size"),
        ('{"path": "a", "url": "http://h/a", "size": 99999999999999999999}', "size"),
        ('{"path": "a", "url": "http://h/a", "size": 1, "mtime": 1e300}', "mtime"),
        ('{"path": 5, "url": "http://h/a", "size": 1}', "path"),
        ('{"path": ["a"], "url": "http://h/a", "size": 1}', "path"),
        ('{"path": "a\\u0000b", "url": "http://h/a", "size": 1}', "control"),
        ('{"path": "a\\nb", "url": "http://h/a", "size": 1}', "control"),
        ('{"path": "' + LONG + '", "url": "http://h/a", "size": 1}', "bytes long"),
        ('{"path": "a/../b", "url": "http://h/a", "size": 1}', "'..'"),
        ('{"path": "a", "url": "http://h/a", "size": 1, "digest": 7}', "digest"),
        ("[" * 30000 + "]" * 30000, "nested too deeply"),
        ('{"path": "a", "url": "http://h/' + "x" * 9000 + '", "size": 1}', "url"),
    ],
)
def test_manifest_with_absurd_values_is_refused_naming_the_line(line, message):
    good = '{"path": "ok", "url": "http://h/ok", "size": 1}'
    with pytest.raises(UsageError, match="line 2") as caught:
        parse_manifest_lines([good, line])
    assert message in str(caught.value)


def test_manifest_duplicate_paths_are_refused():
    line = '{"path": "a", "url": "http://h/a", "size": 1}'
    with pytest.raises(UsageError, match="repeats line 1"):
        parse_manifest_lines([line, line])


@pytest.mark.parametrize(
    "size, mtime",
    [(10**30, 0.0), (-5, 0.0), (1, float("nan")), (1, float("inf")), (1, 1e30), (1, -1e30), (1, 2.5e11)],
)
def test_node_attributes_never_overflow(size, mtime):
    """The last line of defence: whatever a node says, pyfuse3 gets values it can encode."""
    node = Node(5, "f", Role.FILE, size=size, mtime=mtime)
    attr = attributes(node, entry_timeout=1, attr_timeout=1)
    assert 0 <= attr.st_size <= MAX_OBJECT_SIZE
    assert 0 <= attr.st_mtime_ns <= MAX_TIMESTAMP * 10**9
    assert not math.isnan(attr.st_mtime_ns)


@pytest.mark.parametrize(
    "value",
    [
        "Fri, 31 Dec 99999 23:59:59 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "garbage",
        "Thu, 01 Jan 1970 00:00:00 +9999",
        "",
    ],
)
def test_absurd_http_dates_are_unknown_times(value):
    assert parse_http_date(value) == 0.0


def test_html_index_with_impossible_dates():
    page = b'<pre><a href="x">x</a>  31-Feb-2024 10:00  5\n<a href="y">y</a>  01-Jan-9999 10:00  5\n</pre>'
    entries = {e.name: e for e in parse_index("http://h/d/", "text/html", page)}
    assert entries["x"].mtime is None and entries["x"].size == 5
    assert entries["y"].mtime is None
