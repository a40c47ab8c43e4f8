"""What the daemon's servicers make of a request's fields before anything runs (no sockets needed)."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2

from dffs.api import common_pb2
from dffs.daemon.service import download_expectations, download_request
from dffs.errors import UsageError


@pytest.mark.parametrize("seconds", [-5, 2**62, 10**12])
def test_a_negative_or_absurd_download_timeout_is_a_usage_error(seconds):
    """Found by tests/test_fuzz.py: a negative timeout reached trio.fail_after (ValueError), a huge
    one timedelta (OverflowError)."""
    download = common_pb2.Download(url="http://h/x", timeout=duration_pb2.Duration(seconds=seconds))
    with pytest.raises(UsageError, match="timeout"):
        download_expectations(download)


def test_download_expectations():
    download = common_pb2.Download(url="http://h/x", timeout=duration_pb2.Duration(seconds=90, nanos=500_000_000))
    assert download_expectations(download) == (90.5, None)
    assert download_expectations(common_pb2.Download(url="http://h/x")) == (0.0, None)


@pytest.mark.parametrize("piece_length", [0, 1, 2**40])
def test_an_absurd_explicit_piece_length_is_a_usage_error(piece_length):
    with pytest.raises(UsageError, match="piece length"):
        download_request(common_pb2.Download(url="http://h/x", piece_length=piece_length), from_member=False)
