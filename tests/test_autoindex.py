"""Parsing web servers' directory listings (pure)."""

import pytest

from dffs.source.http.autoindex import parse_index

NGINX = """<html>
<head><title>Index of /data/</title></head>
<body>
<h1>Index of /data/</h1><hr><pre><a href="../">../</a>
<a href="images/">images/</a>                                            24-Nov-2026 02:47                   -
<a href="a%20b.bin">a b.bin</a>                                            24-Nov-2026 02:47          1073741824
<a href="very-long-name-that-nginx-truncates-in-the-link-text-0123456789.bin">very-long-name-that-nginx-truncates-in-the-li..&gt;</a> 01-Jan-2026 00:00    5
</pre><hr></body>
</html>"""

APACHE = """<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN"><html><body><h1>Index of /pub</h1>
<table><tr><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th></tr>
<tr><td><a href="/">Parent Directory</a></td><td>&nbsp;</td></tr>
<tr><td><a href="file.iso">file.iso</a></td><td align="right">2026-11-20 10:15  </td><td align="right">1.2G</td></tr>
<tr><td><a href="sub/">sub/</a></td><td align="right">2026-11-21 11:00  </td><td align="right">  - </td></tr>
</table></body></html>"""


def test_nginx_html_listing():
    entries = {e.name: e for e in parse_index("http://h/data/", "text/html", NGINX.encode())}
    assert set(entries) == {"images", "a b.bin", "very-long-name-that-nginx-truncates-in-the-link-text-0123456789.bin"}
    assert entries["images"].is_dir and entries["images"].size is None
    assert entries["images"].url == "http://h/data/images/"
    big = entries["a b.bin"]
    assert (big.is_dir, big.size, big.url) == (False, 1073741824, "http://h/data/a%20b.bin")
    assert big.mtime == 1795488420
    assert entries["very-long-name-that-nginx-truncates-in-the-link-text-0123456789.bin"].size == 5


def test_apache_listing_has_no_exact_sizes():
    entries = {e.name: e for e in parse_index("http://h/pub/", "text/html", APACHE.encode())}
    assert set(entries) == {"file.iso", "sub"}  # sort links and the parent are skipped
    assert entries["file.iso"].size is None  # "1.2G" is not a byte count
    assert entries["file.iso"].mtime is not None
    assert entries["sub"].is_dir


def test_nginx_json_listing():
    body = (
        b'[{"name":"x.bin","type":"file","mtime":"Tue, 24 Nov 2026 02:47:35 GMT","size":42},'
        b'{"name":"d","type":"directory","mtime":"Tue, 24 Nov 2026 02:47:35 GMT"},{"name":".."}]'
    )
    entries = {e.name: e for e in parse_index("http://h/", "application/json", body)}
    assert entries["x.bin"].size == 42 and entries["x.bin"].url == "http://h/x.bin"
    assert entries["d"].is_dir and entries["d"].url == "http://h/d/"
    assert ".." not in entries


@pytest.mark.parametrize(
    "href",
    ["../etc/passwd", "/abs/elsewhere", "http://other/x", "sub/deeper/file", "?C=N;O=D", "..%2Fx"],
)
def test_links_outside_the_directory_are_ignored(href):
    html = f'<pre><a href="{href}">x</a>\n<a href="ok">ok</a></pre>'
    names = [e.name for e in parse_index("http://h/dir/", "text/html", html.encode())]
    assert names == ["ok"]


def test_garbage_is_not_a_listing():
    with pytest.raises(ValueError):
        parse_index("http://h/", "text/html", b"just some text")
    with pytest.raises(ValueError):
        parse_index("http://h/", "application/json", b'{"not": "a list"}')
