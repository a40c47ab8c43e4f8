"""The proxy's pure parts, without sockets: rules, routing, Range and header rules."""

from __future__ import annotations

import h11
import pytest

from dffs.errors import UsageError
from dffs.idgen import task_id
from dffs.proxy.config import DEFAULT_P2P_RULES, ProxyConfig
from dffs.proxy.mirror import (
    BLOB_PATH_RE,
    Passthrough,
    Reject,
    RequestHead,
    Router,
    Tunnel,
    ViaP2P,
    normalize_upstream,
)
from dffs.proxy.protocol import UNSATISFIABLE, ByteRange, end_to_end, parse_range
from dffs.proxy.rules import ProxyRules

DIGEST = "sha256:" + "ab" * 32
REGISTRY = "http://10.0.0.5:5000"


def router(upstream: str | None = REGISTRY, **rules) -> Router:
    return Router(
        ProxyRules.build(rules.pop("rules", DEFAULT_P2P_RULES), **rules),
        normalize_upstream(upstream) if upstream else None,
        frozenset({"127.0.0.1:4001", "localhost:4001"}),
    )


def req(method: str, target: str, *headers: tuple[str, str], body: bool = False) -> RequestHead:
    return RequestHead(method, target, (("Host", "127.0.0.1:4001"), *headers), body)


# ----------------------------------------------------------------- rules
def test_rules_match_registry_blobs_only_for_get_and_head():
    rules = ProxyRules.build(DEFAULT_P2P_RULES)
    url = f"{REGISTRY}/v2/library/busybox/blobs/{DIGEST}"
    assert rules.via_p2p("GET", url) and rules.via_p2p("HEAD", url)
    assert rules.via_p2p("GET", url + "?ns=docker.io")  # ns is volatile: dropped before matching
    assert not rules.via_p2p("POST", url)
    assert not rules.via_p2p("GET", f"{REGISTRY}/v2/library/busybox/manifests/latest")
    assert not rules.via_p2p("GET", f"{REGISTRY}/v2/library/busybox/blobs/uploads/")


def test_bypass_list_by_host_pattern():
    rules = ProxyRules.build(DEFAULT_P2P_RULES, bypass=["*.internal", "10.0.0.5"])
    assert not rules.via_p2p("GET", f"http://reg.internal/v2/a/blobs/{DIGEST}")
    assert not rules.via_p2p("GET", f"{REGISTRY}/v2/a/blobs/{DIGEST}")  # port stripped for the match
    assert rules.via_p2p("GET", f"http://10.0.0.6:5000/v2/a/blobs/{DIGEST}")


def test_client_allow_list():
    rules = ProxyRules.build(allow=["10.1.0.0/16", "fd00::/8"])
    assert rules.client_allowed("127.0.0.1") and rules.client_allowed("127.8.9.10") and rules.client_allowed("::1")
    assert rules.client_allowed("::ffff:127.0.0.1")
    assert rules.client_allowed("10.1.200.3") and rules.client_allowed("fd00::5")
    assert not rules.client_allowed("10.2.0.1") and not rules.client_allowed("192.168.1.1")
    assert not rules.client_allowed("not an address")
    assert not ProxyRules.build().client_allowed("10.1.200.3")  # loopback only by default


def test_bad_configuration_is_a_one_line_usage_error():
    with pytest.raises(UsageError, match="bad proxy rule"):
        ProxyRules.build(["("])
    with pytest.raises(UsageError, match="bad proxy allow entry"):
        ProxyRules.build(allow=["10.0.0.0/33"])
    with pytest.raises(UsageError, match="--registry-mirror"):
        normalize_upstream("ftp://x")
    assert normalize_upstream("http://Reg.Example:5000/") == "http://reg.example:5000"


def test_config_accepts_lists_or_comma_separated_strings():
    assert ProxyConfig(rules="a, b", bypass=["x"]).rules == ("a", "b")
    assert ProxyConfig(bypass=["x"]).bypass == ("x",)


# --------------------------------------------------------------- routing
def test_mirror_blob_goes_through_p2p_under_the_upstream_url_without_ns():
    route = router().route(
        req(
            "GET",
            f"/v2/library/busybox/blobs/{DIGEST}?ns=10.0.0.5:5000",
            ("Authorization", "Bearer tok"),
            ("Range", "bytes=0-9"),
        )
    )
    assert isinstance(route, ViaP2P)
    assert route.url == f"{REGISTRY}/v2/library/busybox/blobs/{DIGEST}"
    assert route.digest == DIGEST and route.range == "bytes=0-9" and not route.head
    assert route.headers == (("Authorization", "Bearer tok"),)  # reaches the origin, not the task ID
    assert dict(route.passthrough.headers)["Authorization"] == "Bearer tok"


def test_one_task_id_per_blob_whatever_the_path_to_it():
    mirror = router().route(req("GET", f"/v2/a/b/blobs/{DIGEST}?ns=10.0.0.5:5000"))
    plain = router().route(req("GET", f"/v2/a/b/blobs/{DIGEST}"))
    forward = router().route(req("GET", f"{REGISTRY}/v2/a/b/blobs/{DIGEST}?ns=10.0.0.5%3A5000"))
    ids = {task_id(r.url) for r in (mirror, plain, forward)}
    assert len(ids) == 1


def test_mirror_ns_names_the_upstream():
    r = router()
    assert (
        r.route(req("GET", "/v2/x/manifests/v1?ns=docker.io")).url == "https://registry-1.docker.io/v2/x/manifests/v1"
    )
    assert r.route(req("GET", "/v2/x/manifests/v1?ns=ghcr.io")).url == "https://ghcr.io/v2/x/manifests/v1"
    assert r.route(req("GET", "/v2/?ns=10.0.0.5:5000")).url == f"{REGISTRY}/v2/"
    assert isinstance(r.route(req("GET", "/v2/?ns=a/b")), Reject)
    assert r.route(req("GET", "/v2/?ns=127.0.0.1:4001")).status == 508  # never to ourselves
    missing = router(upstream=None).route(req("GET", "/v2/x/manifests/v1"))
    assert isinstance(missing, Reject) and missing.status == 404 and "--registry-mirror" in missing.message


def test_mirror_passes_manifests_tags_and_version_check_through():
    r = router()
    for path in ("/v2/", "/v2/x/manifests/latest", f"/v2/x/manifests/{DIGEST}", "/v2/x/tags/list?n=10", "/v2/_catalog"):
        route = r.route(
            req(
                "GET",
                path,
                ("Authorization", "Basic abc"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"),
                ("Proxy-Authorization", "secret"),
            )
        )
        assert isinstance(route, Passthrough), path
        names = [k.lower() for k, _ in route.headers]
        assert "authorization" in names
        assert not {"host", "connection", "x-hop", "proxy-authorization"} & set(names)
    assert r.route(req("GET", "/v2/x/tags/list?n=10&ns=10.0.0.5:5000")).url == f"{REGISTRY}/v2/x/tags/list?n=10"


def test_mirror_refuses_writes_traversal_and_bodies():
    r = router()
    assert r.route(req("POST", "/v2/x/blobs/uploads/")).status == 405
    assert r.route(req("PUT", "/v2/x/manifests/v1")).status == 405
    for path in (
        "/v2/../../etc/passwd",
        "/v2/a/../b/blobs/" + DIGEST,
        "/v2/a/%2e%2e/blobs/" + DIGEST,
        "/v2/a/%2E%2E%2Fb/manifests/x",
        "/v2//etc/passwd",
        "/v2/a\\..\\b",
    ):
        route = r.route(req("GET", path))
        assert isinstance(route, Reject) and route.status == 400, (path, route)
    assert r.route(req("GET", "/etc/passwd")).status == 404
    assert r.route(req("GET", f"/v2/x/blobs/{DIGEST}", body=True)).status == 400


def test_blob_path_grammar():
    assert BLOB_PATH_RE.match(f"/v2/library/busybox/blobs/{DIGEST}")
    assert BLOB_PATH_RE.match(f"/v2/a-b/c__d/e.f/blobs/sha512:{'0' * 128}")
    for bad in (
        f"/v2/../blobs/{DIGEST}",
        f"/v2/A/blobs/{DIGEST}",
        f"/v2/a//b/blobs/{DIGEST}",
        "/v2/a/blobs/sha256:abc",
        f"/v2/a/blobs/{DIGEST}/x",
        f"/v2/a%2f/blobs/{DIGEST}",
    ):
        assert not BLOB_PATH_RE.match(bad), bad


def test_forward_proxy_routes_by_rules():
    r = router()
    page = r.route(req("GET", "http://example.com/index.html", ("Accept", "*/*")))
    assert isinstance(page, Passthrough) and page.url == "http://example.com/index.html"
    blob = r.route(req("HEAD", f"http://reg.example:5000/v2/a/blobs/{DIGEST}"))
    assert isinstance(blob, ViaP2P) and blob.head and blob.digest == DIGEST
    post = r.route(req("POST", f"http://reg.example:5000/v2/a/blobs/{DIGEST}", body=True))
    assert isinstance(post, Passthrough)
    custom = router(rules=[r"\.iso$"]).route(req("GET", "http://mirror.example/debian.iso"))
    assert isinstance(custom, ViaP2P) and custom.digest is None


def test_forward_proxy_rejects_bad_targets():
    r = router()
    for target, status in [
        ("ftp://example.com/x", 400),
        ("gopher://x/", 400),
        ("http:///nohost", 400),
        ("http://example.com:99999/", 400),
        ("http://user@example.com/", 400),
        ("http://example.com/a/../../etc/passwd", 400),
        ("example.com/x", 400),
        ("*", 400),
    ]:
        route = r.route(req("GET", target))
        assert isinstance(route, Reject) and route.status == status, (target, route)


def test_absolute_form_naming_the_proxy_is_served_as_mirror_mode():
    route = router().route(req("GET", f"http://127.0.0.1:4001/v2/a/blobs/{DIGEST}"))
    assert isinstance(route, ViaP2P) and route.url == f"{REGISTRY}/v2/a/blobs/{DIGEST}"


def test_connect():
    r = router()
    assert r.route(req("CONNECT", "example.com:443")) == Tunnel("example.com", 443)
    assert r.route(req("CONNECT", "[::1]:8443")) == Tunnel("::1", 8443)
    for bad in ("example.com", "example.com:0", "example.com:70000", "a b:443", "http://x:443"):
        assert isinstance(r.route(req("CONNECT", bad)), Reject), bad
    assert r.route(req("CONNECT", "127.0.0.1:4001")).status == 508


def test_request_head_from_h11():
    event = h11.Request(method="GET", target="/v2/", headers=[("Host", "x"), ("Content-Length", "0")])
    head = RequestHead.from_h11(event)
    assert head.method == "GET" and head.target == "/v2/" and not head.has_body
    event = h11.Request(method="post", target="/", headers=[("Host", "x"), ("Transfer-Encoding", "chunked")])
    assert RequestHead.from_h11(event).has_body


# ------------------------------------------------------------ Range rules
@pytest.mark.parametrize(
    "value,size,expected",
    [
        (None, 100, None),
        ("bytes=0-9", 100, ByteRange(0, 9, 100)),
        ("bytes=90-", 100, ByteRange(90, 99, 100)),
        ("bytes=-10", 100, ByteRange(90, 99, 100)),
        ("bytes=-1000", 100, ByteRange(0, 99, 100)),
        ("bytes=99-99", 100, ByteRange(99, 99, 100)),
        ("bytes=50-5000", 100, ByteRange(50, 99, 100)),
        ("BYTES = 1 - 2", 100, ByteRange(1, 2, 100)),
        ("bytes=100-", 100, UNSATISFIABLE),
        ("bytes=100-200", 100, UNSATISFIABLE),
        ("bytes=-0", 100, UNSATISFIABLE),
        ("bytes=0-0", 0, UNSATISFIABLE),
        ("bytes=-5", 0, UNSATISFIABLE),
        ("bytes=9-1", 100, None),  # invalid: ignored
        ("bytes=0-1,5-6", 100, None),  # several ranges: whole object
        ("items=0-1", 100, None),
        ("bytes=-", 100, None),
        ("bytes=a-b", 100, None),
    ],
)
def test_parse_range(value, size, expected):
    assert parse_range(value, size) == expected


def test_byte_range_content_range():
    assert ByteRange(90, 99, 100).content_range() == "bytes 90-99/100"
    assert ByteRange(90, 99, 100).length == 10


def test_end_to_end_headers():
    headers = [
        ("Connection", "close, X-Private"),
        ("X-Private", "1"),
        ("Keep-Alive", "5"),
        ("TE", "trailers"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "x"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("WWW-Authenticate", 'Bearer realm="r",service="s"'),
    ]
    assert end_to_end(headers) == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("WWW-Authenticate", 'Bearer realm="r",service="s"'),
    ]
