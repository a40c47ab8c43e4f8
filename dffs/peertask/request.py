"""What a client asks the task layer for."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from dffs.idgen import task_id


@attrs.frozen
class DownloadRequest:
    """What a client asks for; the same fields make the same task ID on every peer."""

    url: str
    headers: Mapping[str, str] = attrs.field(factory=dict)
    tag: str = ""
    application: str = ""
    piece_length: int | None = None

    @property
    def task_id(self) -> str:
        return task_id(self.url, tag=self.tag, application=self.application, piece_length=self.piece_length)
