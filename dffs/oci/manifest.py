"""Image manifests and indexes (OCI and Docker v2 schema 2), as pure functions."""

from __future__ import annotations

import json
from typing import Any

import attrs

from dffs.errors import SourceError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
#: What we ask the registry for, best first.
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
_INDEX_TYPES = {OCI_INDEX, DOCKER_LIST}
_MANIFEST_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}


@attrs.frozen
class Blob:
    digest: str
    size: int
    media_type: str


@attrs.frozen
class Manifest:
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Everything a pull fetches by digest: the config and every layer."""
        return (self.config, *self.layers)


@attrs.frozen
class Index:
    #: (manifest digest, "os/arch[/variant]")
    manifests: tuple[tuple[str, str], ...]

    def select(self, platform: str) -> str:
        """The digest of the manifest for ``platform`` ("os/arch" or "os/arch/variant")."""
        want = platform.lower()
        for digest, plat in self.manifests:
            if plat == want or (want.count("/") == 1 and plat.rsplit("/", 1)[0] == want and plat.count("/") == 2):
                return digest
        available = ", ".join(p for _, p in self.manifests) or "none"
        raise SourceError(f"image has no manifest for platform {platform} (available: {available})")


def media_type(body: bytes, content_type: str = "") -> str:
    """The document's own mediaType, else the served Content-Type (Docker schema 2 carries both)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    declared = doc.get("mediaType") if isinstance(doc, dict) else None
    return str(declared or content_type.split(";")[0].strip() or OCI_MANIFEST)


def _blob(entry: Any, what: str) -> Blob:
    if not isinstance(entry, dict):
        raise SourceError(f"manifest {what} is not an object")
    digest, size, media_type = entry.get("digest"), entry.get("size"), entry.get("mediaType", "")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
        raise SourceError(f"manifest {what} has a bad digest {digest!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise SourceError(f"manifest {what} has a bad size {size!r}")
    return Blob(digest, size, str(media_type))


def parse(body: bytes, content_type: str = "") -> Manifest | Index:
    """An index (several platforms) or a single-platform manifest; SourceError when malformed."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the interpreter's stack
        raise SourceError("manifest is not JSON") from None
    if not isinstance(doc, dict):
        raise SourceError("manifest is not a JSON object")
    media_type = doc.get("mediaType") or content_type.split(";")[0].strip()
    if media_type in _INDEX_TYPES or ("manifests" in doc and "layers" not in doc):
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise SourceError("image index has no manifests list")
        out = []
        for i, entry in enumerate(entries):
            blob = _blob(entry, f"manifests[{i}]")
            platform = entry.get("platform") or {}
            if not isinstance(platform, dict):
                raise SourceError(f"image index manifests[{i}] has a platform that is not an object")
            parts = [str(platform.get("os", "")), str(platform.get("architecture", ""))]
            if platform.get("variant"):
                parts.append(str(platform["variant"]))
            out.append((blob.digest, "/".join(parts).lower()))
        return Index(tuple(out))
    if media_type in _MANIFEST_TYPES or "layers" in doc:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise SourceError("image manifest has no layers list")
        return Manifest(
            _blob(doc.get("config"), "config"), tuple(_blob(layer, f"layers[{i}]") for i, layer in enumerate(layers))
        )
    raise SourceError(f"unsupported manifest type {media_type or 'unknown'!r} (schema 1 manifests are not supported)")
