"""https origins: TLS with a test CA (trustme), through the source, `dffs get` and the mount."""

from __future__ import annotations

import ssl

import pytest
import trustme
from cli import assert_one_line_error, run_dffs
from mounts import MountProcess
from origins import FaultyOrigin

from dffs.errors import SourceError
from dffs.source import HttpOptions, HttpSource

BODY = bytes(range(256)) * 20_000  # ~5 MB: two pieces


@pytest.fixture
def tls(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    origin = FaultyOrigin(ssl_context=server_ctx)
    origin.start()
    try:
        yield origin, ca_file
    finally:
        origin.stop()


async def test_https_stat_and_ranges(tls):
    origin, ca_file = tls
    url = origin.add("/secure.bin", BODY)
    assert url.startswith("https://")
    src = HttpSource(HttpOptions(ca_file=str(ca_file)))
    try:
        stat = await src.stat(url)
        assert stat.content_length == len(BODY)
        buf = memoryview(bytearray(1000))
        await src.read_range(url, len(BODY) - 1000, buf)
        assert bytes(buf) == BODY[-1000:]
    finally:
        await src.aclose()


async def test_untrusted_certificate_is_refused(tls):
    origin, _ = tls
    url = origin.add("/secure.bin", BODY)
    src = HttpSource(HttpOptions(attempts=1))
    try:
        with pytest.raises(SourceError, match="TLS|certificate"):
            await src.stat(url)
    finally:
        await src.aclose()


def test_dffs_get_over_https(tls, tmp_path):
    origin, ca_file = tls
    url = origin.add("/secure.bin", BODY)
    out = tmp_path / "out.bin"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'ca_file = "{ca_file}"\n')
    result = run_dffs("get", url, "-O", str(out), "--data-dir", str(tmp_path / "d"), "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == BODY
    refused = run_dffs("get", url, "-O", str(tmp_path / "o2"), "--data-dir", str(tmp_path / "d2"))
    assert_one_line_error(refused, 1, "certificate")


def test_mount_reads_https_by_path(tls, tmp_path):
    origin, ca_file = tls
    origin.add("/secure.bin", BODY)
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'ca_file = "{ca_file}"\n')
    m = MountProcess(tmp_path / "mnt", tmp_path / "data", "--config", str(cfg))
    try:
        m.start()
        assert (m.mountpoint / "https" / f"127.0.0.1:{origin.port}" / "secure.bin").read_bytes() == BODY
    finally:
        m.stop()
