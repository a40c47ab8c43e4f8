"""``oci://REGISTRY[:PORT]/REPO[:TAG|@sha256:HEX]`` references."""

from __future__ import annotations

import re

import attrs

from dffs.errors import UsageError

_REFERENCE = re.compile(
    r"^oci://(?P<registry>[A-Za-z0-9.-]+(?::[0-9]{1,5})?)"
    r"/(?P<repository>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@attrs.frozen
class ImageReference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        match = _REFERENCE.match(text)
        if match is None:
            raise UsageError(
                f"bad OCI reference {text!r} (want oci://REGISTRY/REPO:TAG or oci://REGISTRY/REPO@sha256:HEX)"
            )
        tag, digest = match["tag"], match["digest"]
        if tag is None and digest is None:
            tag = "latest"
        return cls(match["registry"], match["repository"], tag, digest)

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        suffix = (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
        return f"oci://{self.registry}/{self.repository}{suffix}"
