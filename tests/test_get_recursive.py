"""`dffs get --recursive`: a whole directory tree as one unit, from real nginx autoindex listings,
moto's S3 server and a manifest; the walk's guards against lying listings on FaultyOrigin."""

from __future__ import annotations

import json

import pytest
import trio
from cli import assert_one_line_error, run_dffs, sha256_file
from origins import Behavior, FaultyOrigin

from dffs.errors import SourceError, UsageError
from dffs.source import SourceRegistry
from dffs.source.tree import component, is_tree_url, walk

KiB = 1024


@pytest.fixture
def tree(tmp_path, make_file):
    """A small dataset: files at three depths, sizes from 0 to a few pieces' worth of small files."""
    root = tmp_path / "www" / "ds"
    digests = {}
    layout = {
        "a.bin": 112 * KiB,
        "b.bin": 16 * KiB,
        "empty.bin": 0,
        "train/x0.bin": 100 * KiB,
        "train/x1.bin": 5 * KiB + 3,
        "train/deep/y.bin": 300 * KiB,
        "val/z.bin": 1,
    }
    for seed, (path, size) in enumerate(layout.items()):
        digests[path] = make_file(root / path, size, seed=seed)
    (root / "emptydir").mkdir()
    return tmp_path / "www", digests


def local_digests(out):
    return {str(p.relative_to(out)): sha256_file(p) for p in out.rglob("*") if p.is_file()}


def test_recursive_get_of_an_autoindex_tree(tree, tmp_path, nginx_origin):
    www, digests = tree
    origin = nginx_origin(www)
    out = tmp_path / "out"
    result = run_dffs(
        "get", "--recursive", origin.url("/ds/"), "-O", str(out), "--data-dir", str(tmp_path / "data"), timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not a tty: no progress bar
    assert local_digests(out) == digests
    origin.sync_log()
    # Each listing once; each file's bytes once.
    listings = [r for r in origin.requests() if r.path.endswith("/")]
    assert sorted(r.path for r in listings) == ["/ds/", "/ds/emptydir/", "/ds/train/", "/ds/train/deep/", "/ds/val/"]
    for path in digests:
        assert origin.body_bytes(f"/ds/{path}", "GET") == (www / "ds" / path).stat().st_size

    # Again into another directory with the same data dir: every byte from the cache.
    origin.clear_log()
    again = tmp_path / "again"
    result = run_dffs(
        "get", "-r", origin.url("/ds/"), "-O", str(again), "--data-dir", str(tmp_path / "data"), timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert local_digests(again) == digests
    origin.sync_log()
    assert sum(r.body_bytes for r in origin.requests() if not r.path.endswith("/")) == 0


def test_recursive_get_of_an_s3_prefix(s3, tmp_path):
    """moto's S3 server stands in for S3 (no real S3 here); real botocore signing, real ListObjectsV2 pages."""
    client = s3.client()
    client.create_bucket(Bucket="dataset-bucket")
    want = {}
    for i in range(25):
        key = f"train/{i % 3}/s{i:03d}.bin"
        body = bytes([i]) * (i * 97)
        client.put_object(Bucket="dataset-bucket", Key=key, Body=body)
        want[key.removeprefix("train/")] = body
    client.put_object(Bucket="dataset-bucket", Key="other/not-this.bin", Body=b"no")
    out = tmp_path / "out"
    result = run_dffs(
        "get", "-r", "s3://dataset-bucket/train/", "-O", str(out), "--data-dir", str(tmp_path / "data"), timeout=120
    )
    assert result.returncode == 0, result.stderr
    got = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == want


def test_recursive_get_from_a_manifest_checks_digests(tree, tmp_path, nginx_origin):
    www, digests = tree
    origin = nginx_origin(www)
    manifest = tmp_path / "ds.jsonl"
    lines = [
        {
            "path": f"set/{p}",
            "url": origin.url(f"/ds/{p}"),
            "size": (www / "ds" / p).stat().st_size,
            "digest": f"sha256:{d}",
        }
        for p, d in digests.items()
    ]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    result = run_dffs("get", "-r", "--manifest", str(manifest), "-O", str(out), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert local_digests(out) == {f"set/{p}": d for p, d in digests.items()}
    origin.sync_log()
    assert not [r for r in origin.requests() if r.path.endswith("/")]  # no listing at all

    # A wrong digest fails that file, the rest still arrive, and the command names the failure.
    lines[0]["digest"] = "sha256:" + "0" * 64
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out2 = tmp_path / "out2"
    result = run_dffs("get", "-r", "--manifest", str(manifest), "-O", str(out2), "--data-dir", str(tmp_path / "d2"))
    assert_one_line_error(result, 1, f"1 of {len(lines)} files failed")
    assert len(local_digests(out2)) == len(lines) - 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("http://127.0.0.1:9/file.bin",), "directory url"),
        (("--manifest", "m.jsonl", "http://127.0.0.1:9/d/"), "either a directory url or --manifest"),
        (("http://127.0.0.1:9/d/", "--digest", "sha256:" + "0" * 64), "--digest names one file"),
    ],
)
def test_recursive_usage_errors(tmp_path, args, message):
    result = run_dffs("get", "-r", *args, "-O", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data"))
    assert_one_line_error(result, 2, message)


def test_recursive_get_of_a_missing_directory_fails_in_one_line(tmp_path, nginx_origin):
    (tmp_path / "www").mkdir()
    origin = nginx_origin(tmp_path / "www")
    result = run_dffs("get", "-r", origin.url("/nothing/"), "-O", str(tmp_path / "out"), "--data-dir", str(tmp_path))
    assert_one_line_error(result, 1, "404")


# ---- the walk itself, on an origin that serves whatever listing the test gives it ---------------------


def test_names_that_cannot_be_a_path_component():
    assert component("a.bin") == "a.bin" and component("sub/") == "sub"
    for bad in ("", ".", "..", "../x", "a/b", "x\x00y", "n" * 256):
        assert component(bad) is None, bad
    assert is_tree_url("http://h/d/") and is_tree_url("s3://bucket") and is_tree_url("s3://bucket/p/")
    assert not is_tree_url("http://h/d") and not is_tree_url("s3://bucket/key")


def _html_listing(*hrefs):
    return ("<html><body>" + "".join(f'<a href="{h}">{h}</a>\n' for h in hrefs) + "</body></html>").encode()


async def _walk(url, **kw):
    sources = SourceRegistry()
    try:
        return [f async for f in walk(sources.for_url(url), url, **kw)]
    finally:
        await sources.aclose()


def test_walk_skips_lying_entries_and_never_leaves_the_root():
    """HTML listings served by FaultyOrigin: parent links, repeated names, a directory redirected
    outside the root whose own sub-directories are therefore not entered, and one redirected back
    to the root (listed once, so the walk ends)."""
    with FaultyOrigin() as origin:
        origin.add("/d/", _html_listing("../", "ok.bin", "ok.bin", "%2e%2e/", "sub/", "out/", "loop/"))
        origin.add("/d/sub/", _html_listing("f"))
        origin.add("/d/out/", b"", behavior=Behavior.redirect("/elsewhere/"))
        origin.add("/elsewhere/", _html_listing("x", "deeper/"))
        origin.add("/d/loop/", b"", behavior=Behavior.redirect("/d/"))
        files = trio.run(_walk, origin.url("/d/"))
    assert sorted(f.path for f in files) == ["loop/ok.bin", "ok.bin", "out/x", "sub/f"]
    assert {f.path: f.url for f in files}["out/x"] == origin.url("/elsewhere/x")


def test_walk_bounds_depth_and_entries():
    with FaultyOrigin() as origin:
        origin.add("/d/", _html_listing("s/"))
        origin.add("/d/s/", _html_listing("s/"))
        origin.add("/d/s/s/", _html_listing("f"))
        assert [f.path for f in trio.run(_walk, origin.url("/d/"))] == ["s/s/f"]
        with pytest.raises(SourceError, match="deeper than 1"):
            trio.run(lambda: _walk(origin.url("/d/"), max_depth=1))
        with pytest.raises(SourceError, match="more than 2 entries"):
            trio.run(lambda: _walk(origin.url("/d/"), max_entries=2))
        with pytest.raises(UsageError, match="directory URL"):
            trio.run(_walk, origin.url("/d"))
