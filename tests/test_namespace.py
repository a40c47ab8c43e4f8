"""The mount's namespace against a real origin, without FUSE: caching and single flight."""

from __future__ import annotations

import errno

import pyfuse3
import pytest
import trio

from dffs.errors import UsageError
from dffs.fs.manifest import parse_manifest_lines
from dffs.fs.namespace import Namespace, valid_host
from dffs.fs.nodes import Role
from dffs.source import SourceRegistry


@pytest.fixture
async def sources():
    registry = SourceRegistry()
    yield registry
    await registry.aclose()


def host_dir(ns, origin):
    http = ns.table.root.children["http"]
    return http, f"127.0.0.1:{origin.port}"


async def test_concurrent_lookups_share_one_head(tmp_path, nginx_origin, sources):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "f.bin").write_bytes(b"x" * 1000)
    origin = nginx_origin(tmp_path / "www")
    ns = Namespace(sources)
    http, host = host_dir(ns, origin)
    hostnode = await ns.lookup(http, host)
    results = []

    async def look():
        results.append(await ns.lookup(hostnode, "f.bin"))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(look)
    assert len({n.inode for n in results}) == 1 and results[0].size == 1000
    await origin.async_sync_log()
    assert [r.method for r in origin.requests()] == ["HEAD"]

    missing = []

    async def miss():
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ns.lookup(hostnode, "nope.bin")
        missing.append(info.value.errno)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(miss)
    assert missing == [errno.ENOENT] * 5
    await origin.async_sync_log()
    assert len(origin.requests(path="/nope.bin")) == 1  # one HEAD, then the negative cache


async def test_concurrent_listings_share_one_get(tmp_path, nginx_origin, sources):
    (tmp_path / "www" / "d").mkdir(parents=True)
    for i in range(50):
        (tmp_path / "www" / "d" / f"{i}.txt").write_text(str(i))
    origin = nginx_origin(tmp_path / "www")
    ns = Namespace(sources)
    http, host = host_dir(ns, origin)
    d = await ns.lookup(await ns.lookup(http, host), "d")
    assert d.role is Role.REMOTE_DIR
    counts = []

    async def listing():
        counts.append(len(await ns.list_dir(d)))

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(listing)
    assert counts == [50] * 6
    await origin.async_sync_log()
    assert len(origin.requests(method="GET")) == 1


def test_host_names():
    assert valid_host("example.com") and valid_host("127.0.0.1:8080") and valid_host("[::1]:80")
    assert not valid_host("bad host") and not valid_host("h:99999") and not valid_host("-x.com")
    assert not valid_host("a/b") and not valid_host("")


def test_manifest_collisions_are_usage_errors():
    entries = parse_manifest_lines(['{"path": "https", "url": "http://h/a", "size": 1}'])
    with pytest.raises(UsageError, match="collides"):
        Namespace(SourceRegistry(), manifest=entries)
    with pytest.raises(UsageError, match="taken"):
        Namespace(SourceRegistry(), named_sources={"http": "http://h/"})
