import hashlib

import pytest

from dffs.digest import ExpectedDigest, format_piece_digest, piece_digest
from dffs.errors import UsageError


def test_parse_valid_digests():
    hexd = hashlib.sha256(b"x").hexdigest()
    d = ExpectedDigest.parse(f"sha256:{hexd.upper()}")
    assert (d.algorithm, d.hexdigest) == ("sha256", hexd)
    h = d.new_hasher()
    h.update(b"x")
    assert h.hexdigest() == hexd
    assert ExpectedDigest.parse("md5:" + "0" * 32).algorithm == "md5"
    assert ExpectedDigest.parse("blake3:" + "a" * 64).algorithm == "blake3"


@pytest.mark.parametrize(
    "text, message",
    [
        ("sha256", "expected ALGO:HEX"),
        ("sha256:xyz", "expected ALGO:HEX"),
        ("sha256:abcd", "needs 64 hex digits"),
        ("crc99:abcd", "unknown algorithm"),
        ("", "expected ALGO:HEX"),
    ],
)
def test_parse_rejects_bad_digests(text, message):
    with pytest.raises(UsageError, match=message):
        ExpectedDigest.parse(text)


def test_piece_digest_is_blake3():
    raw = piece_digest(memoryview(b"abc"))
    assert len(raw) == 32
    assert format_piece_digest(raw).startswith("blake3:")
