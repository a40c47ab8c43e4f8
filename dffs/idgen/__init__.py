"""Task identity and piece arithmetic: the rules every peer must agree on."""

from dffs.idgen.hostid import host_id
from dffs.idgen.pieces import (
    DEFAULT_PIECE_LENGTH,
    MAX_PIECE_LENGTH,
    MIN_PIECE_LENGTH,
    PieceSpan,
    piece_count,
    piece_length_for,
    piece_span,
    pieces_for_range,
)
from dffs.idgen.taskid import DEFAULT_FILTERED_QUERY_PARAMS, TASK_ID_PATTERN, is_task_id, normalize_url, task_id

__all__ = [
    "DEFAULT_FILTERED_QUERY_PARAMS",
    "DEFAULT_PIECE_LENGTH",
    "MAX_PIECE_LENGTH",
    "MIN_PIECE_LENGTH",
    "TASK_ID_PATTERN",
    "PieceSpan",
    "host_id",
    "is_task_id",
    "normalize_url",
    "piece_count",
    "piece_length_for",
    "piece_span",
    "pieces_for_range",
    "task_id",
]
