"""Task metadata: what a task is, stored next to its content as JSON."""

from __future__ import annotations

import json
import time

import attrs

from dffs.idgen import piece_count

FORMAT_VERSION = 1


@attrs.frozen
class TaskMeta:
    """Everything about a task except which pieces are present (see the journal)."""

    task_id: str
    url: str
    content_length: int
    piece_length: int
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    tag: str = ""
    application: str = ""
    created_at: float = attrs.field(factory=time.time)
    #: Seeded from a local file (``dffs ctl import``): no origin to revalidate against.
    imported: bool = False

    @property
    def piece_count(self) -> int:
        return piece_count(self.content_length, self.piece_length)

    def same_content_as(self, content_length: int | None, etag: str | None, last_modified: str | None) -> bool:
        """Whether an origin's answer describes the bytes this task holds.

        A strong ETag decides; without one, size and Last-Modified must match.
        Weak ETags (``W/``) are not byte-exact promises and are ignored.
        """
        if content_length is not None and content_length != self.content_length:
            return False
        if etag and self.etag and not etag.startswith("W/"):
            return etag == self.etag
        if last_modified and self.last_modified:
            return last_modified == self.last_modified
        # No validator to compare: we cannot promise the bytes are the same.
        return False

    def to_json(self) -> str:
        data = attrs.asdict(self)
        data["version"] = FORMAT_VERSION
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TaskMeta:
        data = json.loads(text)
        if data.pop("version", None) != FORMAT_VERSION:
            raise ValueError("unsupported task metadata version")
        meta = cls(**data)
        if meta.content_length < 0 or meta.piece_length <= 0:
            raise ValueError("task metadata has a negative length")
        return meta
