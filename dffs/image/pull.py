"""``dffs image pull REF --containerd SOCK``: an image into containerd, its layers lazily where they can be.

The same steps as containerd's own pull-and-unpack, done through its gRPC API
so that every layer's Prepare carries the labels a lazy mount needs (plain
``ctr images pull --snapshotter`` sends none):

1. resolve the reference at the registry (index → platform manifest → config);
2. under a lease, store the index, manifest and config in containerd's
   content store (with containerd's GC labels);
3. for each layer, in order: nothing if its chain is already there; else
   Prepare with the layer's labels — ALREADY_EXISTS means the dffs
   snapshotter mounted it lazily; mounts mean it could not (zstd, an error):
   then the blob goes into the content store, containerd's differ unpacks
   it into the mounts, and the snapshot is committed under the chain ID;
4. the image record, and the config's label that ties the snapshot chain to
   the image (so removing the image frees its layers).
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import attrs

from dffs.api import containerd_types_pb2
from dffs.errors import SourceError
from dffs.image import plan, swarm
from dffs.image.containerd import CHUNK, Containerd
from dffs.image.swarm import DaemonLink
from dffs.oci import manifest as oci_manifest
from dffs.oci.reference import ImageReference
from dffs.oci.registry import RegistryClient, ResolvedImage

log = logging.getLogger(__name__)


@attrs.frozen
class PullResult:
    name: str
    manifest_digest: str
    lazy: tuple[str, ...]
    unpacked: tuple[str, ...]
    present: tuple[str, ...]
    seconds: float
    #: Seconds spent resolving the image, storing its documents, and preparing its layers.
    phases: dict[str, float] = attrs.field(factory=dict)


def parse_ref(text: str) -> ImageReference:
    """containerd-style ``HOST[:PORT]/REPO[:TAG|@DIGEST]``."""
    return ImageReference.parse(text if text.startswith("oci://") else f"oci://{text}")


def _blob_chunks(image: ResolvedImage, blob: oci_manifest.Blob, timeout: float) -> Iterator[bytes]:
    request = urllib.request.Request(image.blob_url(blob), headers=dict(image.headers))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            while chunk := response.read(CHUNK):
                yield chunk
    except (urllib.error.URLError, OSError) as exc:
        raise SourceError(f"{image.reference}: layer {blob.digest}: {exc}") from None


def _resolve(
    registry: RegistryClient, ref: ImageReference, platform: str, link: DaemonLink | None
) -> tuple[ResolvedImage, bytes]:
    """The image's documents from the registry (then shared with the swarm), or from the swarm
    when the registry cannot be reached (the layers come from the swarm anyway)."""
    url = swarm.url_for(str(ref), platform)
    try:
        image = registry.resolve(ref, platform=platform)
        config = registry.fetch_blob(image, image.blobs[0])
    except SourceError as exc:
        if exc.status in (401, 403, 404) or link is None or not link.available():
            raise
        shared = link.fetch(url)
        decoded = swarm.decode(shared) if shared else None
        if decoded is None:
            raise
        documents, config = decoded
        log.warning("event=registry_unreachable action=documents_from_swarm ref=%s error=%s", ref, exc)
        parsed = oci_manifest.parse(documents[-1][2], documents[-1][0])
        if not isinstance(parsed, oci_manifest.Manifest):
            raise
        base = f"{'http' if registry.plain_http else 'https'}://{ref.registry}"
        image = ResolvedImage(ref, base, documents[-1][1], parsed.blobs, {}, documents)
        return image, config
    if link is not None and link.available():
        link.publish(url, swarm.encode(image.documents, config))
    return image, config


def pull(
    ref_text: str,
    address: str,
    *,
    namespace: str = "default",
    plain_http: bool = False,
    platform: str = "",
    snapshotter: str = "dffs",
    timeout: float = 60.0,
    daemon_socket: Path | None = None,
) -> PullResult:
    started = time.monotonic()
    ref = parse_ref(ref_text)
    name = ref_text.removeprefix("oci://")
    registry = RegistryClient(timeout=timeout, plain_http=plain_http)
    link = DaemonLink(daemon_socket, timeout) if daemon_socket is not None else None
    phases: dict[str, float] = {}
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name] = now - mark
        mark = now

    image, config_body = _resolve(registry, ref, platform, link)
    phase("resolve")
    manifest_type, manifest_digest, manifest_body = image.documents[-1]
    config_blob = image.blobs[0]
    steps = plan.layer_steps(manifest_body, config_body)
    layer_blobs = {b.digest: b for b in image.blobs[1:]}
    ctd = Containerd(address, namespace, timeout=timeout)
    lazy, unpacked, present = [], [], []
    try:
        ctd.begin_lease()
        try:
            ctd.write_content(config_blob.digest, config_blob.size, iter([config_body]), {})
            ctd.write_content(
                manifest_digest, len(manifest_body), iter([manifest_body]), plan.manifest_gc_labels(manifest_body)
            )
            target = containerd_types_pb2.Descriptor(
                media_type=manifest_type, digest=manifest_digest, size=len(manifest_body)
            )
            if len(image.documents) > 1:
                index_type, index_digest, index_body = image.documents[0]
                ctd.write_content(index_digest, len(index_body), iter([index_body]), plan.index_gc_labels(index_body))
                target = containerd_types_pb2.Descriptor(
                    media_type=index_type, digest=index_digest, size=len(index_body)
                )
            phase("documents")
            for step in steps:
                if ctd.snapshot_exists(snapshotter, step.chain_id):
                    present.append(step.digest)
                    continue
                blob = layer_blobs[step.digest]
                key = f"extract-{time.time_ns()}-{os.urandom(3).hex()} {step.chain_id}"
                labels = step.prepare_labels(name, image.blob_url(blob), manifest_digest)
                mounts = ctd.prepare(snapshotter, key, step.parent_chain_id, labels)
                if mounts is None:
                    lazy.append(step.digest)
                    log.info("event=layer_lazy digest=%s chain=%s", step.digest, step.chain_id)
                    continue
                try:
                    if not ctd.has_content(step.digest):
                        ctd.write_content(step.digest, step.size, _blob_chunks(image, blob, timeout), {})
                    descriptor = containerd_types_pb2.Descriptor(
                        media_type=step.media_type, digest=step.digest, size=step.size
                    )
                    ctd.apply(descriptor, mounts)
                    ctd.commit(snapshotter, step.chain_id, key, {plan.TARGET_LABEL: step.chain_id})
                except BaseException:
                    ctd.remove_snapshot(snapshotter, key)
                    raise
                unpacked.append(step.digest)
                log.info("event=layer_unpacked digest=%s chain=%s", step.digest, step.chain_id)
            phase("layers")
            if steps:
                ctd.update_content_labels(config_blob.digest, plan.config_gc_labels(snapshotter, steps[-1].chain_id))
            ctd.put_image(name, target, {})
            phase("image")
        finally:
            ctd.end_lease()
    finally:
        ctd.close()
    return PullResult(
        name, manifest_digest, tuple(lazy), tuple(unpacked), tuple(present), time.monotonic() - started, phases
    )
