"""The P2P piece data plane: piece bytes between peers over HTTP/1.1, never in protobuf.

``protocol`` holds the pure wire rules (URLs, request validation, headers),
``server`` the upload server (h11 heads, ``os.sendfile`` bodies), ``client``
the downloader (``recv_into`` into the caller's buffer, digest checks).
"""

from dffs.upload.client import (
    ParentBusy,
    ParentUnreachable,
    PeerError,
    PeerProtocolError,
    PieceClient,
    PieceDigestMismatch,
    PieceNotAvailable,
)
from dffs.upload.protocol import (
    HEADER_PIECE_DIGEST,
    HEADER_PIECE_LENGTH,
    HEADER_TASK_LENGTH,
    PieceRequest,
    PieceRequestError,
    parse_piece_digest,
    parse_request,
    piece_url,
)
from dffs.upload.server import PieceUploadServer, TokenBucket, UploadStats

__all__ = [
    "HEADER_PIECE_DIGEST",
    "HEADER_PIECE_LENGTH",
    "HEADER_TASK_LENGTH",
    "ParentBusy",
    "ParentUnreachable",
    "PeerError",
    "PeerProtocolError",
    "PieceClient",
    "PieceDigestMismatch",
    "PieceNotAvailable",
    "PieceRequest",
    "PieceRequestError",
    "PieceUploadServer",
    "TokenBucket",
    "UploadStats",
    "parse_piece_digest",
    "parse_request",
    "piece_url",
]
