"""The pure HTTP rules: targets, Content-Range, keep-alive, redirects."""

import pytest

from dffs.errors import UsageError
from dffs.source.http.protocol import (
    keep_alive,
    parse_content_range,
    parse_target,
    range_header,
    redirect_url,
)


def test_parse_target():
    t = parse_target("http://Example.com:8080/a/b?x=1")
    assert (t.scheme, t.host, t.port, t.path) == ("http", "example.com", 8080, "/a/b?x=1")
    assert t.host_header == "example.com:8080"
    assert parse_target("https://h").path == "/"
    assert parse_target("https://h/").host_header == "h"
    assert parse_target("http://[::1]:81/x").host_header == "[::1]:81"


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://h/x", "unsupported URL scheme"),
        ("http:///x", "no host"),
        ("http://h:99999/x", "malformed URL"),
        ("http://h/a b", "whitespace"),
        ("http://h/a\r\nX: y", "control"),
    ],
)
def test_parse_target_rejects(url, message):
    with pytest.raises(UsageError, match=message):
        parse_target(url)


def test_content_range():
    assert parse_content_range("bytes 0-99/1000") == (0, 99, 1000)
    assert parse_content_range("bytes 5-5/*") == (5, 5, None)
    for bad in ("bytes 10-5/100", "bytes 0-100/100", "items 0-1/2", "", "bytes */100"):
        with pytest.raises(ValueError):
            parse_content_range(bad)


def test_range_header():
    assert range_header(0, 10) == "bytes=0-9"
    assert range_header(100, None) == "bytes=100-"


def test_keep_alive():
    assert keep_alive(b"1.1", None)
    assert not keep_alive(b"1.1", "close")
    assert not keep_alive(b"1.0", None)
    assert keep_alive(b"1.0", "Keep-Alive")


def test_redirect_url():
    assert redirect_url("http://h/a/b", "/c") == "http://h/c"
    assert redirect_url("http://h/a/b", "c") == "http://h/a/c"
    assert redirect_url("http://h/a", "https://o/x") == "https://o/x"
    with pytest.raises(ValueError):
        redirect_url("http://h/a", None)
