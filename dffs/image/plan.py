"""What ``dffs image pull`` asks of containerd, computed from the image's documents (pure).

Per layer: its chain ID (what containerd names the committed snapshot, from the
config's ``rootfs.diff_ids``), the parent chain, and the labels a lazy mount
needs; per document: the garbage-collection labels that keep containerd from
collecting what the image still uses (``containerd.io/gc.ref.*``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import attrs

from dffs.errors import SourceError
from dffs.snapshotter import labels as snap_labels

TARGET_LABEL = "containerd.io/snapshot.ref"
#: Layers that only containerd can unpack (no lazy reader): dffs still pulls them, unpacked.
NOT_LAZY_MEDIA_TYPES = ("zstd",)


@attrs.frozen
class LayerStep:
    index: int
    digest: str
    size: int
    media_type: str
    diff_id: str
    chain_id: str
    parent_chain_id: str
    annotations: dict[str, str]

    def prepare_labels(self, image_ref: str, blob_url: str, manifest_digest: str) -> dict[str, str]:
        labels = {
            TARGET_LABEL: self.chain_id,
            snap_labels.IMAGE_REF: image_ref,
            snap_labels.BLOB_URL: blob_url,
            snap_labels.LAYER_DIGEST: self.digest,
            snap_labels.LAYER_SIZE: str(self.size),
            snap_labels.LAYER_MEDIA_TYPE: self.media_type,
            snap_labels.MANIFEST_DIGEST: manifest_digest,
        }
        toc = self.annotations.get(snap_labels.TOC_DIGEST)
        if toc:
            labels[snap_labels.TOC_DIGEST] = toc
        return labels


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI chain IDs: ChainID(n) = sha256(ChainID(n-1) + " " + DiffID(n))."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def _json(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise SourceError(f"{what} is not JSON") from None
    if not isinstance(doc, dict):
        raise SourceError(f"{what} is not a JSON object")
    return doc


def layer_steps(manifest_body: bytes, config_body: bytes) -> list[LayerStep]:
    manifest = _json(manifest_body, "image manifest")
    config = _json(config_body, "image config")
    layers = manifest.get("layers")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids")
    if not isinstance(layers, list) or not isinstance(diff_ids, list) or len(layers) != len(diff_ids):
        raise SourceError("image config's rootfs.diff_ids do not match the manifest's layers")
    if not all(isinstance(d, str) and d.startswith("sha256:") and len(d) == 71 for d in diff_ids):
        raise SourceError("image config has a malformed diff ID")
    chains = chain_ids(diff_ids)
    steps = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise SourceError(f"manifest layers[{i}] is not an object")
        annotations = layer.get("annotations") or {}
        steps.append(
            LayerStep(
                index=i,
                digest=str(layer.get("digest", "")),
                size=int(layer.get("size", 0)),
                media_type=str(layer.get("mediaType", "")),
                diff_id=diff_ids[i],
                chain_id=chains[i],
                parent_chain_id=chains[i - 1] if i else "",
                annotations={str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {},
            )
        )
    return steps


def manifest_gc_labels(manifest_body: bytes) -> dict[str, str]:
    """The manifest references its config and layers (containerd's GC follows them)."""
    manifest = _json(manifest_body, "image manifest")
    labels = {"containerd.io/gc.ref.content.config": str((manifest.get("config") or {}).get("digest", ""))}
    for i, layer in enumerate(manifest.get("layers") or []):
        labels[f"containerd.io/gc.ref.content.l.{i}"] = str(layer.get("digest", ""))
    return labels


def index_gc_labels(index_body: bytes) -> dict[str, str]:
    index = _json(index_body, "image index")
    return {
        f"containerd.io/gc.ref.content.m.{i}": str(entry.get("digest", ""))
        for i, entry in enumerate(index.get("manifests") or [])
        if isinstance(entry, dict)
    }


def config_gc_labels(snapshotter: str, top_chain_id: str) -> dict[str, str]:
    """The config keeps the image's snapshot chain (so removing the image frees its layers)."""
    return {f"containerd.io/gc.ref.snapshot.{snapshotter}": top_chain_id}
