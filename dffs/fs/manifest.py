"""Dataset manifests: JSON lines that lay out files without any listing call.

One object per line::

    {"path": "train/0001.tar", "url": "https://…", "size": 1048576, "digest": "sha256:…", "mtime": 1700000000}

``path`` is relative (no ``..``, no empty components, no control characters,
components of at most 255 bytes), ``url`` any URL a Source handles, ``size``
exact bytes (at most 16 TiB), ``digest`` and ``mtime`` optional (``mtime`` a
finite time between 1970 and 2262). NaN and Infinity are not JSON and are
refused. Errors name the line so a bad manifest is fixed in one go, never
half-mounted.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from dffs.bounds import check_size, name_problem, timestamp
from dffs.digest import ExpectedDigest
from dffs.errors import UsageError

#: Longest URL a manifest line may name.
MAX_URL_LENGTH = 8192
#: Longest manifest line read (a line is one small JSON object).
MAX_LINE_LENGTH = 64 * 1024


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


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
            raise ValueError(f"path {path[:300]!r} has an empty, '.' or '..' component")
        problem = name_problem(part)
        if problem is not None:
            raise ValueError(f"path {path[:300]!r} has an invalid component: {problem}")
    return parts


def parse_manifest_lines(lines, source: str = "manifest") -> list[ManifestEntry]:
    entries: list[ManifestEntry] = []
    seen: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        if len(line) > MAX_LINE_LENGTH:
            raise UsageError(f"{where}: longer than {MAX_LINE_LENGTH} characters")
        try:
            item = json.loads(line, parse_constant=_no_constants)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not JSON: {exc.msg}") from None
        except RecursionError:
            raise UsageError(f"{where}: not JSON: nested too deeply") from None
        except ValueError as exc:  # NaN, Infinity
            raise UsageError(f"{where}: not JSON: {exc}") from None
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
        if len(url) > MAX_URL_LENGTH:
            raise UsageError(f"{where}: 'url' is longer than {MAX_URL_LENGTH} characters")
        size = item.get("size")
        try:
            size = check_size(size)
        except ValueError as exc:
            raise UsageError(f"{where}: 'size' must be a non-negative integer ({exc})") from None
        digest = item.get("digest")
        if digest is not None:
            if not isinstance(digest, str):
                raise UsageError(f"{where}: 'digest' must be a string ALGO:HEX")
            try:
                digest = str(ExpectedDigest.parse(digest))
            except UsageError as exc:
                raise UsageError(f"{where}: {exc}") from None
        mtime = item.get("mtime")
        if mtime is not None and timestamp(mtime) is None:
            raise UsageError(f"{where}: 'mtime' must be a time in seconds since the epoch (1970 to 2262)")
        if parts in seen:
            raise UsageError(f"{where}: path {item['path'][:300]!r} repeats line {seen[parts]}")
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
