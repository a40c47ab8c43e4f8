"""containerd's filter language, as far as snapshot listings use it (pure).

containerd sends ``List`` filters such as
``labels."containerd.io/snapshot.ref"==sha256:…,parent==default/3/…``: a
filter is a comma-separated conjunction of ``FIELD OP VALUE`` (or a bare
``FIELD``, meaning "present and non-empty"), and a request's filters are
ORed. FIELD is dot-separated, each part bare or double-quoted; OP is ``==``,
``!=`` or ``~=`` (regular expression); VALUE is bare, double-quoted or
``/regex/``. Parsing is strict: a malformed filter is an error the caller
turns into INVALID_ARGUMENT rather than a silent "matches everything".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import attrs

_BARE = re.compile(r"[A-Za-z0-9_.:/@+\-]+")
_FIELD_PART = re.compile(r"[A-Za-z0-9_\-]+")


class FilterError(ValueError):
    """A filter that does not parse."""


@attrs.frozen
class Condition:
    path: tuple[str, ...]
    op: str  # "==", "!=", "~=" or "" (present)
    value: str = ""

    def matches(self, lookup: Callable[[tuple[str, ...]], str | None]) -> bool:
        actual = lookup(self.path)
        if self.op == "":
            return bool(actual)
        if self.op == "==":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        return actual is not None and re.search(self.value, actual) is not None


#: One filter: every condition must hold.
Filter = tuple[Condition, ...]


class _Scanner:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, what: str) -> FilterError:
        return FilterError(f"bad filter {self.text!r} at {self.pos}: {what}")

    def peek(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def done(self) -> bool:
        return self.pos >= len(self.text)

    def quoted(self) -> str:
        assert self.text[self.pos] == '"'
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            if char == '"':
                self.pos += 1
                return "".join(out)
            out.append(char)
            self.pos += 1
        raise self.error("unterminated quote")

    def field_part(self) -> str:
        if self.peek('"'):
            return self.quoted()
        match = _FIELD_PART.match(self.text, self.pos)
        if match is None:
            raise self.error("expected a field name")
        self.pos = match.end()
        return match.group()

    def value(self) -> str:
        if self.peek('"'):
            return self.quoted()
        if self.peek("/"):
            end = self.text.find("/", self.pos + 1)
            if end < 0:
                raise self.error("unterminated /regex/")
            value = self.text[self.pos + 1 : end]
            self.pos = end + 1
            return value
        match = _BARE.match(self.text, self.pos)
        if match is None:
            raise self.error("expected a value")
        self.pos = match.end()
        return match.group()


def parse(text: str) -> Filter:
    """One filter string into its conditions."""
    scanner = _Scanner(text.strip())
    conditions = []
    while True:
        path = [scanner.field_part()]
        while scanner.peek("."):
            scanner.pos += 1
            path.append(scanner.field_part())
        op = next((o for o in ("==", "!=", "~=") if scanner.peek(o)), "")
        value = ""
        if op:
            scanner.pos += 2
            value = scanner.value()
            if op == "~=":
                try:
                    re.compile(value)
                except re.error as exc:
                    raise scanner.error(f"bad regular expression: {exc}") from None
        conditions.append(Condition(tuple(path), op, value))
        if scanner.done():
            return tuple(conditions)
        if not scanner.peek(","):
            raise scanner.error("expected ',' or the end")
        scanner.pos += 1


def parse_all(texts: Sequence[str]) -> list[Filter]:
    return [parse(t) for t in texts if t.strip()]


def snapshot_field(name: str, parent: str, kind: str, labels: Mapping[str, str]):
    """The field lookup for one snapshot: name, parent, kind, labels.KEY."""

    def lookup(path: tuple[str, ...]) -> str | None:
        if path == ("name",):
            return name
        if path == ("parent",):
            return parent
        if path == ("kind",):
            return kind
        if path[0] == "labels" and len(path) >= 2:
            return labels.get(".".join(path[1:]))
        return None

    return lookup


def matches_any(filters: Sequence[Filter], lookup: Callable[[tuple[str, ...]], str | None]) -> bool:
    """No filters: everything; else any filter whose every condition holds."""
    if not filters:
        return True
    return any(all(c.matches(lookup) for c in f) for f in filters)
