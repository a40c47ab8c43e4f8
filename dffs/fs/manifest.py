"""Dataset manifests: JSON lines that lay out files without any listing call.

One object per line::

    {"path": "train/0001.tar", "url": "https://…", "size": 1048576, "digest": "sha256:…", "mtime": 1700000000}

``path`` is relative (no ``..``, no empty components), ``url`` any URL a Source
handles, ``size`` exact bytes, ``digest`` and ``mtime`` optional. Errors name the
line so a bad manifest is fixed in one go, never half-mounted.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from dffs.digest import ExpectedDigest
from dffs.errors import UsageError


@attrs.frozen
class ManifestEntry:
    parts: tuple[str, ...]
    url: str
    size: int
    digest: str | None = None
    mtime: float | None = None

    @property
    def path(self) -> str:
        return "/".join(self.parts)


def split_path(path: object) -> tuple[str, ...]:
    """Validated path components of ``path`` (anything a manifest line holds); ValueError with the reason otherwise."""
    if not isinstance(path, str) or not path:
        raise ValueError("path must be a non-empty string")
    parts = tuple(path.strip("/").split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise ValueError(f"path {path!r} has an empty, '.' or '..' component")
        if "\x00" in part or len(part.encode()) > 255:
            raise ValueError(f"path {path!r} has an invalid component")
    return parts


def parse_manifest_lines(lines, source: str = "manifest") -> list[ManifestEntry]:
    entries: list[ManifestEntry] = []
    seen: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not JSON: {exc.msg}") from None
        if not isinstance(item, dict):
            raise UsageError(f"{where}: expected a JSON object")
        unknown = set(item) - {"path", "url", "size", "digest", "mtime"}
        if unknown:
            raise UsageError(f"{where}: unknown field(s) {sorted(unknown)}")
        try:
            parts = split_path(item.get("path"))
        except ValueError as exc:
            raise UsageError(f"{where}: {exc}") from None
        url = item.get("url")
        if not isinstance(url, str) or "://" not in url:
            raise UsageError(f"{where}: 'url' must be an absolute URL")
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise UsageError(f"{where}: 'size' must be a non-negative integer")
        digest = item.get("digest")
        if digest is not None:
            try:
                digest = str(ExpectedDigest.parse(digest))
            except UsageError as exc:
                raise UsageError(f"{where}: {exc}") from None
        mtime = item.get("mtime")
        if mtime is not None and (not isinstance(mtime, (int, float)) or isinstance(mtime, bool)):
            raise UsageError(f"{where}: 'mtime' must be a number (seconds since the epoch)")
        if parts in seen:
            raise UsageError(f"{where}: path {item['path']!r} repeats line {seen[parts]}")
        seen[parts] = number
        entries.append(ManifestEntry(parts, url, size, digest, mtime))
    # A path cannot be both a file and a directory.
    files = {e.parts for e in entries}
    for entry in entries:
        for depth in range(1, len(entry.parts)):
            if entry.parts[:depth] in files:
                raise UsageError(
                    f"{source} line {seen[entry.parts]}: {entry.path!r} is inside "
                    f"{'/'.join(entry.parts[:depth])!r}, which line {seen[entry.parts[:depth]]} makes a file"
                )
    return entries


def load_manifest(path: Path | str) -> list[ManifestEntry]:
    try:
        with open(path, encoding="utf-8") as f:
            return parse_manifest_lines(f, source=str(path))
    except OSError as exc:
        raise UsageError(f"cannot read manifest {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"manifest {path} is not UTF-8 text") from None
