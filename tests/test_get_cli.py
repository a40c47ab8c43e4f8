"""`dffs get` end to end: a real CLI process against real HTTP origins."""

from __future__ import annotations

import collections
import hashlib

import pytest
from cli import assert_no_output_left, assert_one_line_error, run_dffs, sha256_file
from origins import Behavior

MiB = 1024 * 1024
PIECE = 4 * MiB


@pytest.fixture
def served(tmp_path, nginx_origin, make_file):
    """nginx serving a 40 MiB file (10 pieces) at /data.bin."""
    root = tmp_path / "www"
    root.mkdir()
    digest = make_file(root / "data.bin", 40 * MiB + 123, seed=7)
    origin = nginx_origin(root)
    return origin, root, digest


def get(url, out, data_dir, *extra, **kw):
    return run_dffs("get", url, "-O", str(out), "--data-dir", str(data_dir), *extra, **kw)


def test_get_downloads_exact_bytes_quietly(served, tmp_path):
    origin, _, digest = served
    out = tmp_path / "out.bin"
    result = get(origin.url("/data.bin"), out, tmp_path / "data")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not a tty: no progress bar, no chatter
    assert sha256_file(out) == digest
    origin.sync_log()
    gets = origin.requests("/data.bin", "GET")
    assert len(gets) == 11  # one ranged GET per piece
    assert all(g.status == 206 for g in gets)
    assert origin.body_bytes("/data.bin") == 40 * MiB + 123


def test_second_get_is_served_from_local_storage(served, tmp_path):
    origin, _, digest = served
    data = tmp_path / "data"
    assert get(origin.url("/data.bin"), tmp_path / "a", data).returncode == 0
    origin.sync_log()
    origin.clear_log()
    result = get(origin.url("/data.bin"), tmp_path / "b", data)
    assert result.returncode == 0, result.stderr
    assert sha256_file(tmp_path / "b") == digest
    origin.sync_log()
    requests = origin.requests()
    assert [r.method for r in requests] == ["HEAD"]  # a revalidation, no body
    assert requests[0].status == 304 and requests[0].if_none_match
    assert origin.body_bytes() == 0


def test_changed_origin_object_is_fetched_again(served, tmp_path, make_file):
    origin, root, _ = served
    data = tmp_path / "data"
    assert get(origin.url("/data.bin"), tmp_path / "a", data).returncode == 0
    new_digest = make_file(root / "data.bin", 5 * MiB, seed=8)
    result = get(origin.url("/data.bin"), tmp_path / "b", data)
    assert result.returncode == 0, result.stderr
    assert sha256_file(tmp_path / "b") == new_digest
    assert sha256_file(tmp_path / "a") != new_digest  # the first output kept its bytes


def test_digest_verified(served, tmp_path):
    origin, _, digest = served
    out = tmp_path / "out.bin"
    result = get(origin.url("/data.bin"), out, tmp_path / "data", "--digest", f"sha256:{digest}")
    assert result.returncode == 0, result.stderr
    assert sha256_file(out) == digest


def test_digest_mismatch_fails_and_keeps_nothing(served, tmp_path):
    origin, _, digest = served
    out = tmp_path / "out.bin"
    data = tmp_path / "data"
    wrong = hashlib.sha256(b"something else").hexdigest()
    result = get(origin.url("/data.bin"), out, data, "--digest", f"sha256:{wrong}")
    assert_one_line_error(result, 1, "digest mismatch")
    assert_no_output_left(out)
    assert list((data / "tasks").glob("*/*")) == []  # no piece of it stays cached
    # and the right digest then works from scratch
    assert get(origin.url("/data.bin"), out, data, "--digest", f"sha256:{digest}").returncode == 0


def test_dfget_alias(served, tmp_path):
    origin, _, digest = served
    out = tmp_path / "out.bin"
    result = run_dffs(origin.url("/data.bin"), "-O", str(out), "--data-dir", str(tmp_path / "d"), entry="dfget")
    assert result.returncode == 0, result.stderr
    assert sha256_file(out) == digest


def test_corrupted_cache_piece_is_refetched(served, tmp_path):
    origin, _, digest = served
    data = tmp_path / "data"
    assert get(origin.url("/data.bin"), tmp_path / "a", data).returncode == 0
    (tmp_path / "a").unlink()  # drop the hard link so the cache file is the only copy
    content = next((data / "tasks").glob("*/*/content"))
    with open(content, "r+b") as f:
        f.seek(5 * MiB + 17)
        byte = f.read(1)
        f.seek(5 * MiB + 17)
        f.write(bytes([byte[0] ^ 0xFF]))
    origin.sync_log()
    origin.clear_log()
    result = get(origin.url("/data.bin"), tmp_path / "b", data)
    assert result.returncode == 0, result.stderr
    assert sha256_file(tmp_path / "b") == digest
    origin.sync_log()
    gets = origin.requests(method="GET")
    assert [g.range for g in gets] == [f"bytes={4 * MiB}-{8 * MiB - 1}"]  # just the bad piece


def test_empty_file_and_file_url(tmp_path, nginx_origin):
    root = tmp_path / "www"
    root.mkdir()
    (root / "empty").write_bytes(b"")
    origin = nginx_origin(root)
    out = tmp_path / "out"
    assert get(origin.url("/empty"), out, tmp_path / "d").returncode == 0
    assert out.read_bytes() == b""
    src = tmp_path / "local.bin"
    src.write_bytes(b"hello file source" * 1000)
    assert get(f"file://{src}", tmp_path / "copy", tmp_path / "d").returncode == 0
    assert (tmp_path / "copy").read_bytes() == src.read_bytes()


# ------------------------------------------------------------ origin faults
BODY = bytes(range(256)) * (40 * 1024)  # 10 MiB: 3 pieces


def fast_config(tmp_path, read_timeout=1.0, attempts=2):
    path = tmp_path / "dffs.toml"
    path.write_text(f"read_timeout = {read_timeout}\nconnect_timeout = 2\nattempts = {attempts}\n")
    return ["--config", str(path)]


@pytest.mark.parametrize(
    "behavior, message",
    [
        (Behavior.status(404), "404"),
        (Behavior.status(500), "500"),
        (Behavior.status(403), "403"),
        (Behavior.reset(), "connection"),
        (Behavior.reset(after=1000), "connection"),
        (Behavior.truncate(), "body bytes still to come"),
        (Behavior.bad_content_range(), "Content-Range"),
        (Behavior.stall(after=100), "no data from the origin"),
    ],
    ids=["404", "500", "403", "reset", "reset-mid-body", "truncated", "bad-content-range", "stall"],
)
def test_origin_fault_is_one_line_exit_1_and_no_output(tmp_path, faulty_origin, behavior, message):
    url = faulty_origin.add("/f.bin", BODY)
    faulty_origin.set_behavior("/f.bin", behavior)
    out = tmp_path / "out.bin"
    result = get(url, out, tmp_path / "d", *fast_config(tmp_path, attempts=2), timeout=60)  # the timeout: a hang
    assert_one_line_error(result, 1, message)
    assert_no_output_left(out)
    # Bounded retries: no request (the HEAD, or any piece's GETs, a resumed one included) more than twice.
    tries = collections.Counter(
        (r.method, None if r.range is None else int(r.range.removeprefix("bytes=").split("-")[0]) // PIECE)
        for r in faulty_origin.requests("/f.bin")
    )
    assert tries and max(tries.values()) <= 2, tries


def test_download_deadline(tmp_path, faulty_origin):
    url = faulty_origin.add("/f.bin", BODY, behavior=Behavior.slow(64 * 1024))
    out = tmp_path / "out.bin"
    result = get(url, out, tmp_path / "d", "--timeout", "1.5")
    assert_one_line_error(result, 1, "did not finish within 1.5s")
    assert_no_output_left(out)


def test_connection_refused(tmp_path):
    from origins import free_port

    out = tmp_path / "out.bin"
    result = get(f"http://127.0.0.1:{free_port()}/x", out, tmp_path / "d", *fast_config(tmp_path))
    assert_one_line_error(result, 1, "cannot connect")
    assert_no_output_left(out)


@pytest.mark.parametrize(
    "behavior",
    [
        Behavior.status(503, times=2),
        Behavior.reset(after=5000, times=2),
        Behavior.truncate(times=1),
        Behavior.no_range_support(),
        Behavior.ignore_range(),
        Behavior.no_head(),
        Behavior.redirect("/real.bin", 302),
        Behavior.redirect("/real.bin", 307, absolute=True),
    ],
    ids=[
        "503-then-ok",
        "reset-then-ok",
        "truncated-then-ok",
        "no-ranges",
        "ignores-range",
        "no-head",
        "redirect",
        "redirect-abs",
    ],
)
def test_origin_quirks_and_transient_faults_still_succeed(tmp_path, faulty_origin, behavior):
    faulty_origin.add("/real.bin", BODY)
    url = faulty_origin.add("/f.bin", BODY, behavior=behavior)
    out = tmp_path / "out.bin"
    result = get(url, out, tmp_path / "d", *fast_config(tmp_path, attempts=4))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == BODY


def test_resumed_piece_asks_only_for_missing_bytes(tmp_path, faulty_origin):
    url = faulty_origin.add("/f.bin", BODY, behavior=Behavior.reset(after=1 * MiB, times=1).replace(methods=("GET",)))
    out = tmp_path / "out.bin"
    result = get(url, out, tmp_path / "d", "--concurrency", "1", *fast_config(tmp_path))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == BODY
    ranges = faulty_origin.ranges("/f.bin")
    assert ranges[0] == f"bytes=0-{4 * MiB - 1}"
    # the retry continues where the reset left off (at or after 1 MiB), not from 0
    resumed_from = int(ranges[1].split("=")[1].split("-")[0])
    assert 1 * MiB <= resumed_from < 4 * MiB


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "args, message",
    [
        (["get", "not a url", "-O", "{out}"], "malformed URL"),
        (["get", "http//x/y", "-O", "{out}"], "malformed URL"),
        (["get", "http://", "-O", "{out}"], "no host"),
        (["get", "http://h:badport/x", "-O", "{out}"], "malformed URL"),
        (["get", "ftp://h/x", "-O", "{out}"], "unsupported URL scheme"),
        (["get", "http://h/x", "-O", "{out}", "--digest", "sha256:123"], "needs 64 hex digits"),
        (["get", "http://h/x", "-O", "{out}", "--digest", "nope"], "expected ALGO:HEX"),
        (["get", "http://h/x", "-O", "/nonexistent-dir/sub/out"], "not a directory"),
        (["get", "http://h/x", "-O", "{tmp}"], "is a directory"),
        (["get", "http://h/x", "-O", "{out}", "--header", "NoColon"], "bad --header"),
        (["get", "http://h/x", "-O", "{out}", "--timeout", "soon"], "invalid float"),
        (["get", "http://h/x"], "required"),
        (["get", "http://h/x", "-O", "{out}", "--config", "{tmp}/missing.toml"], "cannot read config"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_a_usage_error(tmp_path, args, message):
    out = tmp_path / "out.bin"
    args = [a.format(out=out, tmp=tmp_path) for a in args]
    result = run_dffs(*args, "--data-dir", str(tmp_path / "d")) if args[0] == "get" else run_dffs(*args)
    assert_one_line_error(result, 2, message)
    assert not out.exists()


def test_bad_config_key_is_named(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("concurency = 3\n")
    result = run_dffs("get", "http://h/x", "-O", str(tmp_path / "o"), "--config", str(cfg))
    assert_one_line_error(result, 2, "unknown config key 'concurency'")
