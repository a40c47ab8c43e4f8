"""What a client asks the task layer for."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from dffs.errors import UsageError
from dffs.idgen import task_id

#: Bounds of a piece length a client names (``dffs ctl import --piece-length``).
MIN_EXPLICIT_PIECE_LENGTH = 1024
MAX_EXPLICIT_PIECE_LENGTH = 64 * 1024 * 1024


@attrs.frozen
class DownloadRequest:
    """What a client asks for; the same fields make the same task ID on every peer."""

    url: str
    headers: Mapping[str, str] = attrs.field(factory=dict)
    tag: str = ""
    application: str = ""
    piece_length: int | None = attrs.field(default=None)
    #: What a listing or manifest already said of the object (not part of its identity): with a size, a
    #: small object needs no HEAD before its one GET (see TaskManager.open).
    size: int | None = attrs.field(default=None, eq=False)
    etag: str | None = attrs.field(default=None, eq=False)

    @piece_length.validator
    def _check_piece_length(self, attribute: attrs.Attribute, value: int | None) -> None:
        # Buffers are one piece long: an explicit length is bounded before anything is allocated.
        if value is not None and not MIN_EXPLICIT_PIECE_LENGTH <= value <= MAX_EXPLICIT_PIECE_LENGTH:
            raise UsageError(
                f"piece length {value} is not between {MIN_EXPLICIT_PIECE_LENGTH} and {MAX_EXPLICIT_PIECE_LENGTH}"
            )

    @property
    def task_id(self) -> str:
        return task_id(self.url, tag=self.tag, application=self.application, piece_length=self.piece_length)
