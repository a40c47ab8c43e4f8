"""An origin that lies in its response heads, against the real HTTP source (FaultyOrigin on sockets).

Every absurd value is that one request's SourceError (or, for dates, an unknown time); redirects
never carry credentials to another origin and never step down from https to http.
"""

from __future__ import annotations

import ssl

import pytest
import trustme
from origins import Behavior, FaultyOrigin

from dffs.bounds import MAX_OBJECT_SIZE
from dffs.errors import SourceChanged, SourceError
from dffs.fs.namespace import parse_http_date
from dffs.source import HttpOptions, HttpSource, Validators

BODY = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
async def source():
    src = HttpSource(HttpOptions(read_timeout=5, attempts=2, backoff_initial=0.01))
    yield src
    await src.aclose()


def lying(origin: FaultyOrigin, path: str, *headers: tuple[str, str | None]) -> str:
    return origin.add(path, BODY, behavior=Behavior(replace_headers=tuple(headers)))


@pytest.mark.parametrize(
    "value",
    ["99999999999999999999", str(MAX_OBJECT_SIZE + 1), "-5", "abc", "1" * 5000, "12, 13"],
    ids=["20-digits", "over-limit", "negative", "non-numeric", "5000-digits", "two-values"],
)
async def test_absurd_content_length_is_this_requests_source_error(source, faulty_origin, value):
    url = lying(faulty_origin, "/bad", ("Content-Length", value))
    good = faulty_origin.add("/good", BODY)
    with pytest.raises(SourceError) as caught:
        await source.stat(url)
    assert "Content-Length" in str(caught.value) or "malformed HTTP response head" in str(caught.value)
    # Not retried as if it were a network failure, and the source goes on serving others.
    assert faulty_origin.count("/bad") == 1
    assert (await source.stat(good)).content_length == len(BODY)


async def test_content_range_total_that_disagrees_is_a_changed_object(source, faulty_origin):
    url = faulty_origin.add("/f", BODY)
    stat = await source.stat(url)
    buf = memoryview(bytearray(100))
    await source.read_range(url, 0, buf, validators=Validators(etag=stat.etag, content_length=len(BODY)))
    assert bytes(buf) == BODY[:100]
    faulty_origin.set_behavior("/f", Behavior(replace_headers=(("Content-Range", f"bytes 0-99/{len(BODY) * 2}"),)))
    with pytest.raises(SourceChanged, match="says the object is"):
        await source.read_range(url, 0, buf, validators=Validators(etag=stat.etag, content_length=len(BODY)))


@pytest.mark.parametrize(
    "content_range",
    ["bytes 0-0/99999999999999999999", "bytes 0-0/-1", "bytes 5-0/10", "bytes 0-99999999999999999999/*", "nonsense"],
)
async def test_stat_by_get_with_absurd_content_range(source, faulty_origin, content_range):
    """An origin that refuses HEAD is asked for byte 0; its Content-Range total is the size."""
    url = faulty_origin.add(
        "/nohead", BODY, behavior=Behavior.no_head().replace(replace_headers=(("Content-Range", content_range),))
    )
    with pytest.raises(SourceError):
        await source.stat(url)


async def test_stat_by_get_whose_range_is_not_byte_zero(source, faulty_origin):
    url = faulty_origin.add(
        "/shifted", BODY, behavior=Behavior.no_head().replace(replace_headers=(("Content-Range", "bytes 1-1/16384"),))
    )
    with pytest.raises(SourceError, match="asked for byte 0"):
        await source.stat(url)


async def test_validators_too_long_to_echo_back(source, faulty_origin):
    url = lying(faulty_origin, "/etag", ("ETag", '"' + "e" * 2000 + '"'))
    with pytest.raises(SourceError, match="validator"):
        await source.stat(url)


async def test_a_10_mb_etag_is_a_head_too_large(source, faulty_origin):
    url = lying(faulty_origin, "/huge-etag", ("ETag", '"' + "e" * (10 << 20) + '"'))
    with pytest.raises(SourceError, match="larger than"):
        await source.stat(url)


async def test_thousands_of_headers(source, faulty_origin):
    few = faulty_origin.add("/many", BODY, behavior=Behavior(headers=tuple((f"X-H{i}", "v") for i in range(2000))))
    assert (await source.stat(few)).content_length == len(BODY)
    lots = faulty_origin.add("/lots", BODY, behavior=Behavior(headers=tuple((f"X-H{i}", "v") for i in range(20000))))
    with pytest.raises(SourceError, match="larger than"):
        await source.stat(lots)


@pytest.mark.parametrize(
    "value",
    ["Fri, 31 Dec 99999 23:59:59 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "garbage", "Thu, 01 Jan 1970 00:00:00 +9999"],
)
async def test_absurd_last_modified_is_an_unknown_time(source, faulty_origin, value):
    url = faulty_origin.add("/dated", BODY, last_modified=value)
    stat = await source.stat(url)
    assert stat.last_modified == value  # kept as the validator the origin gave
    assert parse_http_date(stat.last_modified) == 0.0  # but not believed as a time


# --------------------------------------------------------------- redirects
async def test_redirect_to_another_origin_drops_credentials(source, faulty_origin):
    other = FaultyOrigin()
    other.start()
    try:
        target = other.add("/there", BODY)
        url = faulty_origin.add("/here", b"", behavior=Behavior.redirect(target))
        headers = {"Authorization": "Bearer secret", "Cookie": "s=1", "X-Trace": "keep"}
        stat = await source.stat(url, headers=headers)
        assert stat.url == target
        seen = other.requests("/there")[0].headers
        assert "authorization" not in seen and "cookie" not in seen and seen["x-trace"] == "keep"
        buf = memoryview(bytearray(10))
        await source.read_range(url, 0, buf, headers=headers)
        assert all("authorization" not in r.headers for r in other.requests("/there"))
    finally:
        other.stop()
    assert not other.errors


async def test_redirect_on_the_same_origin_keeps_credentials(source, faulty_origin):
    faulty_origin.add("/there", BODY)
    url = faulty_origin.add("/here", b"", behavior=Behavior.redirect("/there"))
    await source.stat(url, headers={"Authorization": "Bearer secret"})
    assert faulty_origin.requests("/there")[0].headers["authorization"] == "Bearer secret"


async def test_peer_task_pieces_after_a_cross_origin_redirect_carry_no_credentials(tmp_path, faulty_origin):
    """The task reads pieces straight from where the origin redirected: without the credentials."""
    from dffs.peertask import DownloadRequest, TaskManager
    from dffs.source import SourceRegistry
    from dffs.storage import StorageManager

    other = FaultyOrigin()
    other.start()
    storage = StorageManager(tmp_path / "data")
    sources = SourceRegistry()
    try:
        target = other.add("/blob", BODY)
        url = faulty_origin.add("/blob", b"", behavior=Behavior.redirect(target))
        async with TaskManager(storage, sources) as tasks:
            task = await tasks.open(DownloadRequest(url=url, headers={"Authorization": "Bearer secret"}))
            await task.fetch_all()
        gets = other.requests("/blob", "GET")
        assert gets and all("authorization" not in r.headers for r in other.requests("/blob"))
    finally:
        storage.close()
        await sources.aclose()
        other.stop()


async def test_https_to_http_redirect_is_refused(tmp_path, faulty_origin):
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    secure = FaultyOrigin(ssl_context=server_ctx)
    secure.start()
    src = HttpSource(HttpOptions(ca_file=str(ca_file), attempts=1))
    try:
        plain = faulty_origin.add("/plain", BODY)
        url = secure.add("/up", b"", behavior=Behavior.redirect(plain))
        with pytest.raises(SourceError, match="https to plain http"):
            await src.stat(url, headers={"Authorization": "Bearer secret"})
        assert faulty_origin.count("/plain") == 0
    finally:
        await src.aclose()
        secure.stop()
