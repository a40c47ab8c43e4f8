"""Property/fuzz tests (hypothesis) for every parser that takes bytes from outside, and for the
numeric fields of every RPC request: each input either succeeds or raises the module's own clear
error class — never anything else (an IndexError, an OverflowError, a RecursionError...).

Parsers are pure and called directly. The HTTP source's head handling runs on a trio memory
stream (no socket needed to feed it bytes). RPCs go through the real cores: the scheduler's
``SchedulerCore`` in-process, the daemon's request conversions, and the manager's servicer on a
real SQLite database with a stand-in for grpc's servicer context (the one thing that needs a
server), whose ``abort`` is the clear error there.
"""

from __future__ import annotations

import asyncio
import json
import os
import string

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from protofuzz import messages

from dffs import bounds
from dffs.api import common_pb2, dfdaemon_pb2, manager_pb2, scheduler_pb2
from dffs.errors import DffsError, SourceError, UsageError
from dffs.fs.manifest import parse_manifest_lines
from dffs.oci import auth
from dffs.oci import manifest as oci_manifest
from dffs.oci.reference import ImageReference
from dffs.proxy import protocol as proxy_protocol
from dffs.proxy.config import DEFAULT_P2P_RULES
from dffs.proxy.mirror import Passthrough, Reject, RequestHead, Router, Tunnel, ViaP2P, normalize_upstream
from dffs.proxy.rules import ProxyRules
from dffs.source.http import protocol as http_protocol
from dffs.source.http.autoindex import parse_index
from dffs.source.http.connection import HttpConnection
from dffs.source.s3 import parse_error, parse_list_page
from dffs.upload import protocol as upload_protocol

#: DFFS_FUZZ_SCALE=20 (say) for a deeper hunt than CI's default run of a few seconds per test.
SCALE = int(os.environ.get("DFFS_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=300 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RPC_FUZZ = settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HTTPISH = st.text(alphabet=string.printable + "äß\x00\x7f", max_size=200)
DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=30)


def header_value() -> st.SearchStrategy[str]:
    return st.one_of(
        HTTPISH,
        DIGITS,
        st.sampled_from(["bytes=0-", "bytes=-5", "bytes=5-1", "bytes=99999999999999999999-", "bytes=" + "9" * 5000]),
    )


# ------------------------------------------------------------------------ bounds
@FUZZ
@given(st.text(max_size=40))
def test_bounds_parse_size(text):
    try:
        value = bounds.parse_size(text)
    except ValueError:
        return
    assert 0 <= value <= bounds.MAX_OBJECT_SIZE


@FUZZ
@given(st.one_of(st.floats(allow_nan=True), st.integers(), st.none(), st.text(max_size=3), st.booleans()))
def test_bounds_timestamp(value):
    result = bounds.timestamp(value)
    assert result is None or 0 <= result <= bounds.MAX_TIMESTAMP


@FUZZ
@given(st.one_of(st.text(max_size=300), st.integers(), st.none()))
def test_bounds_name_problem_never_raises(name):
    problem = bounds.name_problem(name)
    assert problem is None or isinstance(problem, str)


# ------------------------------------------------------------ upload protocol
@FUZZ
@given(st.binary(max_size=20), st.one_of(st.binary(max_size=200), HTTPISH))
@example(b"GET", b"/pieces/" + b"a" * 64 + b"/99999999999999999999")
def test_upload_request_line(method, target):
    try:
        request = upload_protocol.parse_request(method, target)
    except upload_protocol.PieceRequestError as exc:
        assert 400 <= exc.status < 600 and upload_protocol.error_body(exc)
        return
    assert 0 <= request.number <= upload_protocol.MAX_PIECE_NUMBER


@FUZZ
@given(st.one_of(st.none(), HTTPISH))
def test_upload_piece_digest_header(value):
    try:
        digest = upload_protocol.parse_piece_digest(value)
    except ValueError:
        return
    assert len(digest) == 32


@FUZZ
@given(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=30)), max_size=6))
def test_upload_has_body(headers):
    assert upload_protocol.has_body(headers) in (True, False)


# ---------------------------------------------------------------- proxy parsers
@FUZZ
@given(st.one_of(st.none(), header_value()), st.integers(0, 2**63))
def test_proxy_range_header(value, size):
    result = proxy_protocol.parse_range(value, size)
    if isinstance(result, proxy_protocol.ByteRange):
        assert 0 <= result.start <= result.end < size


ROUTER = Router(
    ProxyRules.build(DEFAULT_P2P_RULES), normalize_upstream("http://10.0.0.5:5000"), frozenset({"127.0.0.1:4001"})
)


@FUZZ
@given(
    st.sampled_from(["GET", "HEAD", "CONNECT", "POST", "PUT", "DELETE", "get", ""]),
    st.one_of(
        HTTPISH,
        st.builds(lambda rest: "/v2/" + rest, HTTPISH),
        st.builds(lambda rest: "http://" + rest, HTTPISH),
        st.builds(lambda h, p: f"{h}:{p}", HTTPISH, st.integers(-5, 10**6)),
    ),
    st.lists(
        st.tuples(st.sampled_from(["Host", "Range", "Connection", "Authorization", "X"]), header_value()), max_size=4
    ),
    st.booleans(),
)
def test_proxy_router_routes_every_request_head(method, target, headers, has_body):
    route = ROUTER.route(RequestHead(method, target, tuple(headers), has_body))
    assert isinstance(route, (Reject, Tunnel, Passthrough, ViaP2P))
    if isinstance(route, Reject):
        assert 400 <= route.status < 600
    if isinstance(route, Tunnel):
        assert 0 < route.port < 65536


@FUZZ
@given(st.lists(st.tuples(HTTPISH, HTTPISH), max_size=6))
def test_proxy_hop_by_hop_headers(headers):
    kept = proxy_protocol.end_to_end(headers)
    assert all(name.lower() not in proxy_protocol.HOP_BY_HOP for name, _ in kept)


# ---------------------------------------------------------- HTTP source heads
@FUZZ
@given(header_value())
@example("bytes 0-1/" + "9" * 5000)
def test_http_content_range(value):
    try:
        start, end, total = http_protocol.parse_content_range(value)
    except ValueError:
        return
    assert 0 <= start <= end < bounds.MAX_OBJECT_SIZE and (total is None or end < total)


@FUZZ
@given(HTTPISH, st.one_of(st.none(), HTTPISH))
def test_http_redirect_location(base_path, location):
    try:
        target = http_protocol.redirect_url("https://h/" + base_path, location)
    except ValueError:
        return
    assert not target.lower().startswith("http:")


@FUZZ
@given(HTTPISH)
def test_http_parse_target(url):
    for candidate in (url, "http://" + url, "https://h" + url):
        try:
            target = http_protocol.parse_target(candidate)
        except UsageError:
            continue
        assert 0 <= target.port <= 65535 and target.path


@FUZZ
@given(HTTPISH, HTTPISH, st.dictionaries(HTTPISH, HTTPISH, max_size=4))
def test_http_forwarded_headers(a, b, headers):
    kept = http_protocol.forwarded_headers("http://" + a, "http://" + b, headers)
    assert set(kept) <= set(headers)


def response_bytes() -> st.SearchStrategy[bytes]:
    """Mostly-plausible response heads with hostile lines, or plain garbage."""
    line = st.one_of(
        st.sampled_from(
            [
                b"Content-Length: 99999999999999999999",
                b"Content-Length: -1",
                b"Content-Length: 5",
                b"Content-Length: 5, 6",
                b"Transfer-Encoding: chunked",
                b"Connection: close",
                b"ETag: " + b"e" * 2000,
                b"Last-Modified: Fri, 31 Dec 99999 23:59:59 GMT",
                b"Content-Range: bytes 0-0/" + b"9" * 40,
                b": no name",
                b"X: \x00\x7f",
            ]
        ),
        st.binary(max_size=40).filter(lambda b: b"\r\n" not in b),
    )
    status = st.sampled_from(
        [
            b"HTTP/1.1 200 OK",
            b"HTTP/1.1 206 Partial",
            b"HTTP/1.0 304 x",
            b"HTTP/1.1 100 Continue",
            b"HTTP/9 2",
            b"garbage",
        ]
    )
    head = st.builds(
        lambda s, ls, body: s + b"\r\n" + b"".join(x + b"\r\n" for x in ls) + b"\r\n" + body,
        status,
        st.lists(line, max_size=6),
        st.binary(max_size=40),
    )
    return st.one_of(head, st.binary(max_size=200))


@RPC_FUZZ
@given(response_bytes(), st.sampled_from(["GET", "HEAD"]))
def test_http_connection_reads_any_response(data, method):
    """The source's response handling on a real trio stream: a head and its body, or a SourceError."""

    async def exchange() -> None:
        client, server = trio.testing.memory_stream_pair()
        target = http_protocol.parse_target("http://origin.test/x")
        conn = HttpConnection(target, client, read_timeout=5)

        async def origin() -> None:
            await server.receive_some(65536)
            await server.send_all(data)
            await server.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(origin)
            try:
                head = await conn.request(method, target, [])
                buffer = memoryview(bytearray(4096))
                for _ in range(1000):
                    if not await conn.readinto(buffer):
                        break
                assert head.content_length is None or 0 <= head.content_length <= bounds.MAX_OBJECT_SIZE
            except SourceError:
                pass
            finally:
                await conn.aclose()

    trio.run(exchange)


# ------------------------------------------------------------------ listings
@FUZZ
@given(st.one_of(st.none(), st.sampled_from(["text/html", "application/json"])), st.binary(max_size=600))
@example("application/json", b"[" * 100000)
@example("application/json", b'[{"name": "\\ud800", "size": 1}]')
def test_autoindex_pages(content_type, body):
    try:
        entries = parse_index("http://h/d/", content_type, body)
    except ValueError:
        return
    for entry in entries:
        assert entry.size is None or 0 <= entry.size <= bounds.MAX_OBJECT_SIZE
        assert entry.mtime is None or 0 <= entry.mtime <= bounds.MAX_TIMESTAMP


def nginx_rows() -> st.SearchStrategy[bytes]:
    row = st.builds(
        lambda name, date, size: f'<a href="{name}">{name}</a> {date} {size}\n',
        HTTPISH,
        st.sampled_from(["01-Jan-2024 10:00", "31-Feb-2024 10:00", "01-Jan-9999 23:59", "99-Xyz-0000 99:99"]),
        st.one_of(DIGITS, st.just("-")),
    )
    return st.builds(lambda rows: ("<pre>" + "".join(rows) + "</pre>").encode(), st.lists(row, max_size=5))


@FUZZ
@given(nginx_rows())
def test_autoindex_html_rows(body):
    try:
        entries = parse_index("http://h/d/", "text/html", body)
    except ValueError:  # no link at all: not a listing
        return
    for entry in entries:
        assert entry.size is None or 0 <= entry.size <= bounds.MAX_OBJECT_SIZE


def s3_pages() -> st.SearchStrategy[bytes]:
    from xml.sax.saxutils import escape

    xml_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)
    contents = st.builds(
        lambda k, s, t, e: (
            f"<Contents><Key>{escape(k)}</Key><Size>{escape(s)}</Size>"
            f"<LastModified>{escape(t)}</LastModified><ETag>{escape(e)}</ETag></Contents>"
        ),
        st.builds(lambda rest: "p/" + rest, xml_text),
        st.one_of(DIGITS, xml_text),
        st.one_of(xml_text, st.sampled_from(["2024-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00"])),
        xml_text,
    )
    prefixes = st.builds(lambda p: f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>", xml_text)
    truncated = st.sampled_from(
        [
            "",
            "<IsTruncated>true</IsTruncated>",
            "<IsTruncated>true</IsTruncated><NextContinuationToken>t</NextContinuationToken>",
        ]
    )
    return st.builds(
        lambda items, tail: ("<ListBucketResult>" + "".join(items) + tail + "</ListBucketResult>").encode(),
        st.lists(st.one_of(contents, prefixes), max_size=5),
        truncated,
    )


@FUZZ
@given(st.one_of(s3_pages(), st.binary(max_size=300)))
def test_s3_list_pages(body):
    try:
        page = parse_list_page(body, "b", "p/")
    except ValueError:
        return
    for entry in page.entries:
        assert "/" not in entry.name and entry.name
        assert entry.size is None or 0 <= entry.size <= bounds.MAX_OBJECT_SIZE


@FUZZ
@given(st.binary(max_size=300))
@example(b"<Error>" * 50000)
def test_s3_error_documents(body):
    document = parse_error(body)
    assert document is None or document.code


# ------------------------------------------------------------------ manifests
def manifest_lines() -> st.SearchStrategy[str]:
    value = st.one_of(
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        HTTPISH,
        st.none(),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
    )
    item = st.fixed_dictionaries(
        {},
        optional={
            "path": st.one_of(HTTPISH, value),
            "url": st.one_of(st.just("http://h/x"), value),
            "size": value,
            "digest": st.one_of(st.just("sha256:" + "a" * 64), value),
            "mtime": value,
        },
    )
    return st.one_of(item.map(lambda d: json.dumps(d, allow_nan=True)), HTTPISH)


@FUZZ
@given(st.lists(manifest_lines(), max_size=5))
def test_dataset_manifests(lines):
    try:
        entries = parse_manifest_lines(lines)
    except UsageError:
        return
    for entry in entries:
        assert 0 <= entry.size <= bounds.MAX_OBJECT_SIZE
        assert entry.mtime is None or bounds.timestamp(entry.mtime) is not None
        assert all(bounds.name_problem(part) is None for part in entry.parts)


# ------------------------------------------------------------------------ OCI
def oci_documents() -> st.SearchStrategy[bytes]:
    scalar = st.one_of(st.integers(), st.floats(allow_nan=True), HTTPISH, st.none(), st.booleans())
    json_values = st.recursive(
        scalar,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(HTTPISH, inner, max_size=3)),
        max_leaves=12,
    )
    blob = st.fixed_dictionaries(
        {},
        optional={
            "digest": st.one_of(st.just("sha256:" + "a" * 64), st.just("sha256:" + "Z" * 64), scalar),
            "size": scalar,
            "mediaType": scalar,
            "platform": json_values,
        },
    )
    doc = st.fixed_dictionaries(
        {},
        optional={
            "mediaType": st.sampled_from([oci_manifest.OCI_INDEX, oci_manifest.OCI_MANIFEST, "x"]),
            "manifests": st.one_of(st.lists(blob, max_size=3), json_values),
            "layers": st.one_of(st.lists(blob, max_size=3), json_values),
            "config": st.one_of(blob, json_values),
        },
    )
    return st.one_of(doc.map(lambda d: json.dumps(d).encode()), st.binary(max_size=100))


@FUZZ
@given(oci_documents(), st.sampled_from(["", oci_manifest.OCI_INDEX, oci_manifest.DOCKER_MANIFEST]), HTTPISH)
@example(b"[" * 100000, "", "linux/amd64")
@example(b'{"manifests": [{"digest": "sha256:' + b"a" * 64 + b'", "size": 0, "platform": 1}]}', "", "")
def test_oci_manifests_and_indexes(body, content_type, platform):
    try:
        parsed = oci_manifest.parse(body, content_type)
        if isinstance(parsed, oci_manifest.Index):
            digest = parsed.select(platform)
            assert digest.startswith("sha256:")
        else:
            assert all(b.digest.startswith("sha256:") and b.size >= 0 for b in parsed.blobs)
    except SourceError:
        return


@FUZZ
@given(st.one_of(HTTPISH, st.builds(lambda p: "Bearer " + p, HTTPISH)), HTTPISH)
def test_oci_auth_challenges(header, repository):
    scheme, params = auth.parse_challenge(header)
    assert isinstance(scheme, str) and isinstance(params, dict)
    try:
        url = auth.token_request_url(params, repository)
    except SourceError:
        return
    assert url.startswith(("http://", "https://"))


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=100),
        st.builds(
            lambda v: json.dumps(v).encode(),
            st.dictionaries(HTTPISH, st.one_of(HTTPISH, st.integers(), st.none()), max_size=3),
        ),
    )
)
@example(b"[" * 100000)
def test_oci_token_responses(body):
    try:
        token = auth.parse_token_response(body)
    except SourceError:
        return
    assert isinstance(token, str) and token


@FUZZ
@given(st.one_of(HTTPISH, st.builds(lambda r: "oci://" + r, HTTPISH)))
def test_oci_references(text):
    try:
        ref = ImageReference.parse(text)
    except UsageError:
        return
    assert ref.registry and ref.repository


# --------------------------------------------------------------- RPC: scheduler
def scheduler_core():
    from dffs.scheduler.core import SchedulerCore
    from dffs.scheduler.testing import FakeClock

    return SchedulerCore(clock=FakeClock(), wall_clock=lambda: 1_700_000_000.0)


def valid_host(host_id: str = "h1") -> scheduler_pb2.AnnounceHostRequest:
    return scheduler_pb2.AnnounceHostRequest(
        host=common_pb2.Host(id=host_id, ip="10.0.0.1", port=4000, download_port=4001, hostname=host_id)
    )


def valid_register() -> scheduler_pb2.AnnouncePeerRequest:
    return scheduler_pb2.AnnouncePeerRequest(
        host_id="h1",
        task_id="t1",
        peer_id="p1",
        register_peer_request=scheduler_pb2.RegisterPeerRequest(download=common_pb2.Download(url="http://o/x")),
    )


def run_scheduler_calls(calls) -> None:
    """Each call on one core: a result or a SchedulerError, never anything else."""
    from dffs.scheduler.errors import SchedulerError

    core = scheduler_core()
    core.announce_host(valid_host())
    session = core.register(valid_register())
    for name, message in calls:
        try:
            if name == "announce_host":
                core.announce_host(message)
            elif name == "register":
                core.register(message)
            elif name == "handle":
                message.host_id, message.task_id, message.peer_id = "h1", "t1", "p1"
                if core.handle(session, message):
                    core.schedule(session)
            else:
                getattr(core, name)(message)
        except SchedulerError:
            pass
    core.gc()


SCHEDULER_CALLS = st.one_of(
    st.tuples(st.just("announce_host"), messages(scheduler_pb2.AnnounceHostRequest)),
    st.tuples(st.just("register"), messages(scheduler_pb2.AnnouncePeerRequest)),
    st.tuples(st.just("handle"), messages(scheduler_pb2.AnnouncePeerRequest)),
    st.tuples(st.just("stat_task"), messages(scheduler_pb2.StatTaskRequest)),
    st.tuples(st.just("delete_task"), messages(scheduler_pb2.DeleteTaskRequest)),
    st.tuples(st.just("delete_pieces"), messages(scheduler_pb2.DeletePiecesRequest)),
    st.tuples(st.just("stat_peer"), messages(scheduler_pb2.StatPeerRequest)),
    st.tuples(st.just("delete_peer"), messages(scheduler_pb2.DeletePeerRequest)),
    st.tuples(st.just("delete_host"), messages(scheduler_pb2.DeleteHostRequest)),
)


@RPC_FUZZ
@given(st.lists(SCHEDULER_CALLS, min_size=1, max_size=6))
def test_scheduler_core_takes_any_request(calls):
    run_scheduler_calls(calls)


# ------------------------------------------------------------------ RPC: daemon
@RPC_FUZZ
@given(messages(common_pb2.Download), st.booleans())
def test_daemon_download_requests(download, from_member):
    from dffs.daemon.service import download_request

    try:
        request = download_request(download, from_member=from_member)
        assert len(request.task_id) == 64
    except DffsError:
        return


@RPC_FUZZ
@given(messages(dfdaemon_pb2.DownloadTaskRequest))
def test_daemon_download_task_timeouts_and_digests(request):
    from dffs.daemon.service import download_expectations

    try:
        timeout, expected = download_expectations(request.download)
    except DffsError:
        return
    assert timeout >= 0


@RPC_FUZZ
@given(messages(dfdaemon_pb2.SyncPiecesRequest))
def test_daemon_sync_pieces_task_ids(request):
    from dffs.daemon.service import _task_id

    try:
        assert len(_task_id(request.task_id)) == 64
    except UsageError:
        return


# ----------------------------------------------------------------- RPC: manager
class Aborted(Exception):
    """What grpc.aio's context.abort raises on a real server: the call ends with that status."""


class Context:
    """Stand-in for grpc.aio.ServicerContext (its abort is all the servicer uses here)."""

    async def abort(self, code, details):
        raise Aborted(code, details)


@pytest.fixture(scope="module")
def manager_service(tmp_path_factory):
    from dffs.manager import db
    from dffs.manager.jobs import JobStore
    from dffs.manager.service import ManagerService
    from dffs.manager.store import Store

    engine = db.create_engine(f"sqlite:///{tmp_path_factory.mktemp('manager')}/m.db")
    db.migrate(engine)
    yield ManagerService(Store(engine), JobStore(engine))
    engine.dispose()


MANAGER_CALLS = st.one_of(
    st.tuples(st.just("ListSchedulers"), messages(manager_pb2.ListSchedulersRequest)),
    st.tuples(st.just("GetScheduler"), messages(manager_pb2.GetSchedulerRequest)),
    st.tuples(st.just("UpdateScheduler"), messages(manager_pb2.UpdateSchedulerRequest)),
    st.tuples(st.just("ListSeedPeers"), messages(manager_pb2.ListSeedPeersRequest)),
    st.tuples(st.just("UpdateSeedPeer"), messages(manager_pb2.UpdateSeedPeerRequest)),
    st.tuples(st.just("DeleteSeedPeer"), messages(manager_pb2.DeleteSeedPeerRequest)),
    st.tuples(st.just("GetClusterConfig"), messages(manager_pb2.GetClusterConfigRequest)),
    st.tuples(st.just("CreateJob"), messages(manager_pb2.CreateJobRequest)),
    st.tuples(st.just("GetJob"), messages(manager_pb2.GetJobRequest)),
    st.tuples(st.just("ListJobs"), messages(manager_pb2.ListJobsRequest)),
)


@RPC_FUZZ
@given(call=MANAGER_CALLS)
@example(call=("GetJob", manager_pb2.GetJobRequest(id=2**64 - 1)))
@example(call=("ListJobs", manager_pb2.ListJobsRequest(state=-1)))
def test_manager_service_takes_any_request(manager_service, call):
    name, request = call

    async def invoke():
        try:
            await getattr(manager_service, name)(request, Context())
        except Aborted:
            pass

    asyncio.run(invoke())
