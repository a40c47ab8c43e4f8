"""The evil origin harness: a real daemon with its FUSE mount, and ``dffs get`` through it, reading
from an origin (FaultyOrigin, real sockets) that does every absurd thing in turn — sizes, ranges,
validators, header floods, dates, listings and S3 keys — next to files that are fine.

Every correct file reads right with ordinary tools (stat, cat, ls), every bad one is EIO (or a
one-line CLI error, or a skipped and logged listing entry), a bad manifest is refused at start,
and at the end the daemon is alive, its mount answers and ``/healthy`` says 200.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import urllib.request
from xml.sax.saxutils import escape

import pytest
from cli import run_dffs
from cluster import Daemon
from origins import Behavior, FaultyOrigin

GOOD = {"/good-small.txt": b"hello, world\n" * 100, "/good-two-pieces.bin": bytes(range(256)) * 20_000}
BODY = b"b" * 5000
LONG_NAME = "n" * 256


def lies(*headers: tuple[str, str | None]) -> Behavior:
    return Behavior(replace_headers=tuple(headers))


#: path → behavior; each is EIO through the mount and an error from dffs get.
EVIL = {
    "/evil-huge-length": lies(("Content-Length", "99999999999999999999")),
    "/evil-over-limit-length": lies(("Content-Length", str(1 << 50))),
    "/evil-negative-length": lies(("Content-Length", "-5")),
    "/evil-non-numeric-length": lies(("Content-Length", "lots")),
    "/evil-digits-5000": lies(("Content-Length", "7" * 5000)),
    "/evil-range-total-absurd": Behavior.no_head().replace(
        replace_headers=(("Content-Range", "bytes 0-0/99999999999999999999"),)
    ),
    "/evil-etag-10mb": lies(("ETag", '"' + "e" * (10 << 20) + '"')),
    "/evil-etag-2kb": lies(("ETag", '"' + "e" * 2048 + '"')),
    "/evil-header-flood": Behavior(headers=tuple((f"X-Flood-{i}", "v") for i in range(20_000))),
}
#: HEAD is fine, but every ranged answer names another total: the read fails, the stat does not.
RANGE_LIES = lies(("Content-Range", f"bytes 0-{len(BODY) - 1}/{len(BODY) * 3}"))
#: Absurd dates are unknown times: the files read fine, with mtime 0.
DATES = {"/date-year-99999": "Fri, 31 Dec 99999 23:59:59 GMT", "/date-year-9999": "Fri, 31 Dec 9999 23:59:59 GMT"}
DATES["/date-garbage"] = "not a date at all"

EVIL_NAMES = ["a\nb", "tab\there", "bell\x07", LONG_NAME]


def autoindex(entries: list[tuple[str, str]]) -> bytes:
    from urllib.parse import quote

    rows = "".join(f'<a href="{quote(n)}">{n[:30]}</a>  01-Jan-2024 10:00  {size}\n' for n, size in entries)
    return f"<html><body><pre>{rows}</pre></body></html>".encode()


def s3_listing(keys: list[str]) -> bytes:
    contents = "".join(
        f"<Contents><Key>{escape(k)}</Key><Size>{len(BODY)}</Size>"
        f"<LastModified>2024-01-01T00:00:00.000Z</LastModified></Contents>"
        for k in keys
    )
    prefixes = "<CommonPrefixes><Prefix>d/sub/deeper/</Prefix></CommonPrefixes>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>bucket</Name><Prefix>d/</Prefix>'
        f"<IsTruncated>false</IsTruncated>{contents}{prefixes}</ListBucketResult>"
    ).encode()


@pytest.fixture
def evil_origin():
    origin = FaultyOrigin()
    origin.start()
    try:
        for path, body in GOOD.items():
            origin.add(path, body)
        for path, behavior in EVIL.items():
            origin.add(path, BODY, behavior=behavior)
        origin.add("/lying-ranges", BODY, behavior=RANGE_LIES.replace(methods=("GET",)))
        for path, date in DATES.items():
            origin.add(path, BODY, last_modified=date)
        listing = [("ok.bin", str(len(BODY))), ("big.bin", "99999999999999999999"), ("huge.bin", "9" * 40)]
        origin.add("/dir/", autoindex(listing + [(name, "5") for name in EVIL_NAMES]))
        origin.add("/dir/ok.bin", BODY)
        # An S3 endpoint (unsigned requests): one listing page with hostile keys, and the good object.
        origin.add("/bucket", s3_listing(["d/ok", "d/a/b", "d//x", "d/.", "d/..", "d/nl\nkey", "d/" + LONG_NAME]))
        origin.add("/bucket/d/ok", BODY)
        yield origin
    finally:
        origin.stop()
    assert not origin.errors, origin.errors


def expect_eio(action, path) -> None:
    with pytest.raises(OSError) as caught:
        action(path)
    assert caught.value.errno == errno.EIO, (path, caught.value)


@pytest.mark.slow
def test_the_mount_and_daemon_survive_an_evil_origin(tmp_path, evil_origin, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", evil_origin.base_url)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    manifest = tmp_path / "good.jsonl"
    small = "/good-small.txt"
    entry = {"path": "m/small.txt", "url": evil_origin.url(small), "size": len(GOOD[small])}
    manifest.write_text(json.dumps(entry) + "\n")
    daemon = Daemon(
        tmp_path,
        "evil",
        None,
        mount=True,
        extra=(
            "--metrics-port", "0", "--proxy-port", "-1", "--prefetch", "none", "--manifest", str(manifest),
            "--source", f"web={evil_origin.url('/dir/')}", "--source", "s3data=s3://bucket/d/",
        ),
    )  # fmt: skip
    daemon.start()
    try:
        metrics_port = int(re.search(r"metrics_port=(\d+)", daemon.match.string).group(1))
        base = daemon.mountpoint / "http" / f"127.0.0.1:{evil_origin.port}"

        # Good files read right, with ordinary tools.
        for path, body in GOOD.items():
            assert os.stat(base / path.lstrip("/")).st_size == len(body)
            assert subprocess.run(["cat", str(base / path.lstrip("/"))], capture_output=True).stdout == body

        # Absurd heads: stat and read are EIO, every time, and nothing else breaks.
        for path in EVIL:
            expect_eio(os.stat, base / path.lstrip("/"))
            expect_eio(lambda p: open(p, "rb").read(), base / path.lstrip("/"))
        # Ranged answers about another size: the stat is fine, the read is EIO.
        assert os.stat(base / "lying-ranges").st_size == len(BODY)
        expect_eio(lambda p: open(p, "rb").read(), base / "lying-ranges")
        # Absurd dates: unknown times, the bytes still read.
        for path in DATES:
            st = os.stat(base / path.lstrip("/"))
            assert st.st_size == len(BODY) and st.st_mtime == 0
            assert (base / path.lstrip("/")).read_bytes() == BODY

        # Listings: the bad entries are skipped (and logged), ls works, the good entry reads.
        web = subprocess.run(["ls", "-la", str(daemon.mountpoint / "web")], capture_output=True, text=True)
        assert web.returncode == 0, web.stderr
        assert sorted(os.listdir(daemon.mountpoint / "web")) == ["ok.bin"]
        assert (daemon.mountpoint / "web" / "ok.bin").read_bytes() == BODY
        s3 = subprocess.run(["ls", "-la", str(daemon.mountpoint / "s3data")], capture_output=True, text=True)
        assert s3.returncode == 0, s3.stderr
        assert sorted(os.listdir(daemon.mountpoint / "s3data")) == ["ok"]
        assert (daemon.mountpoint / "s3data" / "ok").read_bytes() == BODY
        assert (daemon.mountpoint / "m" / "small.txt").read_bytes() == GOOD["/good-small.txt"]
        log = daemon.output()
        assert log.count("event=listing_entry_skipped") >= len(EVIL_NAMES)
        assert "event=s3_listing_entry_skipped" in log

        # dffs get through the daemon: one-line errors for the evil, the right bytes for the good.
        for path in ("/evil-huge-length", "/evil-range-total-absurd", "/lying-ranges"):
            got = run_dffs(
                "get", evil_origin.url(path), "-O", str(tmp_path / "out"), "--data-dir", str(daemon.data_dir)
            )
            assert got.returncode == 1, got.stderr
            lines = got.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("dffs: error:") and "Traceback" not in got.stderr
        got = run_dffs(
            "get",
            evil_origin.url("/good-two-pieces.bin"),
            "-O",
            str(tmp_path / "good"),
            "--data-dir",
            str(daemon.data_dir),
        )
        assert got.returncode == 0, got.stderr
        assert (tmp_path / "good").read_bytes() == GOOD["/good-two-pieces.bin"]

        # Nothing crashed: the daemon runs, its mount answers, /healthy says so.
        assert daemon.alive()
        assert "http" in os.listdir(daemon.mountpoint)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthy", timeout=10) as health:
            assert health.status == 200
        assert "fuse_internal_error" not in daemon.output()  # every case was handled where it arose
    finally:
        daemon.stop()


def test_a_hostile_manifest_is_refused_at_start_with_one_line(tmp_path):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(
        '{"path": "ok", "url": "http://h/ok", "size": 1}\n{"path": "x", "url": "http://h/x", "size": NaN}\n'
    )
    got = run_dffs("mount", str(tmp_path / "mnt"), "--data-dir", str(tmp_path / "data"), "--manifest", str(manifest))
    assert got.returncode == 2
    assert got.stderr.strip().splitlines() == [f"dffs: error: {manifest} line 2: not JSON: NaN is not a JSON number"]
