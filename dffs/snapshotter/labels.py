"""The snapshot labels that say which layer a Prepare is for (pure).

containerd passes a snapshotter only labels named ``containerd.io/snapshot.ref``
or ``containerd.io/snapshot/*``. Three label sets name a layer:

* dffs's own, set by ``dffs image pull`` (``containerd.io/snapshot/dffs.*``):
  the blob URL, digest, size, media type, the manifest digest and the
  eStargz TOC digest when the layer has one;
* CRI's (``containerd.io/snapshot/cri.*``, with ``disable_snapshot_annotations
  = false``): image reference and layer digest;
* stargz-snapshotter's ``ctr-remote images rpull``
  (``containerd.io/snapshot/remote/stargz.*``): the same two, plus the size.

From CRI's and stargz's the blob URL is derived from the reference
(``REGISTRY/REPO`` → ``SCHEME://REGISTRY/v2/REPO/blobs/DIGEST``, the URL the
registry mirror and preheat also use, so the task is shared with them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

PREFIX = "containerd.io/snapshot/dffs."
BLOB_URL = PREFIX + "blob-url"
LAYER_DIGEST = PREFIX + "layer-digest"
LAYER_SIZE = PREFIX + "layer-size"
LAYER_MEDIA_TYPE = PREFIX + "layer-media-type"
MANIFEST_DIGEST = PREFIX + "manifest-digest"
IMAGE_REF = PREFIX + "image-ref"
TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"

CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
CRI_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"
CRI_MANIFEST_DIGEST = "containerd.io/snapshot/cri.manifest-digest"
STARGZ_REF = "containerd.io/snapshot/remote/stargz.reference"
STARGZ_DIGEST = "containerd.io/snapshot/remote/stargz.digest"
STARGZ_SIZE = "containerd.io/snapshot/remote/stargz.size"

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REF = re.compile(r"^(?P<registry>[A-Za-z0-9.-]+(?::[0-9]{1,5})?)/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)(?:[:@].*)?$")


@attrs.frozen
class LayerSource:
    """Where a lazily served layer's bytes are: what the snapshotter stores with the snapshot."""

    digest: str
    #: Blob URL; ``{scheme}`` stands for a scheme still to be found (https, else http).
    url: str
    size: int | None = None
    media_type: str = ""
    toc_digest: str = ""
    manifest_digest: str = ""

    def to_json(self) -> dict:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> LayerSource:
        return cls(**{f.name: data[f.name] for f in attrs.fields(cls) if f.name in data})


def _size(text: str | None) -> int | None:
    if text is None or not text.isdigit():
        return None
    return int(text)


def blob_url_for(ref: str, digest: str, scheme: str = "{scheme}") -> str | None:
    """``REGISTRY/REPO[:TAG|@DIGEST]`` → the blob's URL, or None for a reference without a registry."""
    match = _REF.match(ref)
    if match is None or "." not in match["registry"] and ":" not in match["registry"]:
        return None  # "library/busybox": no registry host to build a URL on
    return f"{scheme}://{match['registry']}/v2/{match['repo']}/blobs/{digest}"


def layer_source(labels: Mapping[str, str]) -> LayerSource | None:
    """The layer these labels name, or None when they name none (then the layer is unpacked)."""
    digest = labels.get(LAYER_DIGEST) or labels.get(CRI_LAYER_DIGEST) or labels.get(STARGZ_DIGEST) or ""
    if not _DIGEST.match(digest):
        return None
    url = labels.get(BLOB_URL, "")
    if not url.startswith(("http://", "https://")) or not url.endswith("/blobs/" + digest):
        ref = labels.get(IMAGE_REF) or labels.get(CRI_IMAGE_REF) or labels.get(STARGZ_REF) or ""
        url = blob_url_for(ref, digest) or ""
        if not url:
            return None
    return LayerSource(
        digest=digest,
        url=url,
        size=_size(labels.get(LAYER_SIZE) or labels.get(STARGZ_SIZE)),
        media_type=labels.get(LAYER_MEDIA_TYPE, ""),
        toc_digest=labels.get(TOC_DIGEST, ""),
        manifest_digest=labels.get(MANIFEST_DIGEST) or labels.get(CRI_MANIFEST_DIGEST) or "",
    )
