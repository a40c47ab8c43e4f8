"""A small blocking client of containerd's own gRPC API (what ``dffs image pull`` needs).

Every call carries the ``containerd-namespace`` header, and the pull's lease
(``containerd-lease``) so that containerd's garbage collector keeps what the
pull wrote until the image record names it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

import grpc

from dffs.api import (
    containerd_content_pb2,
    containerd_content_pb2_grpc,
    containerd_diff_pb2,
    containerd_diff_pb2_grpc,
    containerd_images_pb2,
    containerd_images_pb2_grpc,
    containerd_leases_pb2,
    containerd_leases_pb2_grpc,
    containerd_snapshots_pb2,
    containerd_snapshots_pb2_grpc,
    containerd_types_pb2,
)
from dffs.errors import DffsError

CHUNK = 1 << 20


class ContainerdError(DffsError):
    """containerd refused or failed a call; the message names the call and containerd's answer."""


class Containerd:
    def __init__(self, address: str, namespace: str = "default", *, timeout: float = 60.0):
        self.address = address
        self.namespace = namespace
        self.timeout = timeout
        self.lease: str | None = None
        self.channel = grpc.insecure_channel(f"unix:{address}")
        self.content = containerd_content_pb2_grpc.ContentStub(self.channel)
        self.images = containerd_images_pb2_grpc.ImagesStub(self.channel)
        self.leases = containerd_leases_pb2_grpc.LeasesStub(self.channel)
        self.snapshots = containerd_snapshots_pb2_grpc.SnapshotsStub(self.channel)
        self.diff = containerd_diff_pb2_grpc.DiffStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def metadata(self) -> list[tuple[str, str]]:
        md = [("containerd-namespace", self.namespace)]
        if self.lease:
            md.append(("containerd-lease", self.lease))
        return md

    def call(self, what: str, method, request, *, ok: tuple[grpc.StatusCode, ...] = ()):
        """One unary call; returns the response, or the status code when it is one of ``ok``."""
        try:
            return method(request, metadata=self.metadata(), timeout=self.timeout)
        except grpc.RpcError as exc:
            if exc.code() in ok:
                return exc.code()
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise ContainerdError(f"containerd at {self.address} is not answering ({what})") from None
            raise ContainerdError(f"containerd {what}: {exc.code().name}: {exc.details()}") from None

    # ------------------------------------------------------------ leases
    def begin_lease(self, expire_seconds: int = 3600) -> None:
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + expire_seconds))
        request = containerd_leases_pb2.CreateRequest(
            id=f"dffs-pull-{time.time_ns()}", labels={"containerd.io/gc.expire": expires}
        )
        self.lease = self.call("Leases.Create", self.leases.Create, request).lease.id

    def end_lease(self) -> None:
        if self.lease:
            lease, self.lease = self.lease, None
            self.call("Leases.Delete", self.leases.Delete, containerd_leases_pb2.DeleteRequest(id=lease))

    # ----------------------------------------------------------- content
    def has_content(self, digest: str) -> bool:
        answer = self.call(
            "Content.Info", self.content.Info, containerd_content_pb2.InfoRequest(digest=digest),
            ok=(grpc.StatusCode.NOT_FOUND,),
        )  # fmt: skip
        return not isinstance(answer, grpc.StatusCode)

    def write_content(self, digest: str, size: int, chunks: Iterator[bytes], labels: Mapping[str, str]) -> None:
        """Store a blob (streamed) under ``digest``; containerd checks size and digest at commit."""
        ref = f"dffs-{digest}"

        def requests() -> Iterator[containerd_content_pb2.WriteContentRequest]:
            # Data rides on WRITE messages and the last chunk on the COMMIT itself.
            offset = 0
            pending: bytes | None = None
            for chunk in chunks:
                if pending is not None:
                    yield containerd_content_pb2.WriteContentRequest(
                        action=containerd_content_pb2.WRITE, ref=ref, total=size, expected=digest, offset=offset,
                        data=pending,
                    )  # fmt: skip
                    offset += len(pending)
                pending = chunk
            yield containerd_content_pb2.WriteContentRequest(
                action=containerd_content_pb2.COMMIT, ref=ref, total=size, expected=digest, offset=offset,
                data=pending or b"", labels=dict(labels),
            )  # fmt: skip

        try:
            for _ in self.content.Write(requests(), metadata=self.metadata(), timeout=max(self.timeout, 600)):
                pass
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                self.update_content_labels(digest, labels)
                return
            raise ContainerdError(f"containerd Content.Write {digest}: {exc.code().name}: {exc.details()}") from None

    def update_content_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        info = containerd_content_pb2.Info(digest=digest, labels=dict(labels))
        request = containerd_content_pb2.UpdateRequest(info=info)
        request.update_mask.paths.extend(f"labels.{k}" for k in labels)
        self.call("Content.Update", self.content.Update, request)

    # ------------------------------------------------------------ images
    def put_image(self, name: str, target: containerd_types_pb2.Descriptor, labels: Mapping[str, str]) -> None:
        image = containerd_images_pb2.Image(name=name, target=target, labels=dict(labels))
        answer = self.call(
            "Images.Create", self.images.Create, containerd_images_pb2.CreateImageRequest(image=image),
            ok=(grpc.StatusCode.ALREADY_EXISTS,),
        )  # fmt: skip
        if answer == grpc.StatusCode.ALREADY_EXISTS:
            request = containerd_images_pb2.UpdateImageRequest(image=image)
            request.update_mask.paths.extend(["target", "labels"])
            self.call("Images.Update", self.images.Update, request)

    # --------------------------------------------------------- snapshots
    def snapshot_exists(self, snapshotter: str, key: str) -> bool:
        request = containerd_snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=key)
        answer = self.call("Snapshots.Stat", self.snapshots.Stat, request, ok=(grpc.StatusCode.NOT_FOUND,))
        return not isinstance(answer, grpc.StatusCode)

    def prepare(
        self, snapshotter: str, key: str, parent: str, labels: Mapping[str, str]
    ) -> list[containerd_types_pb2.Mount] | None:
        """The mounts to unpack into, or None when the snapshotter mounted the layer itself (remote)."""
        request = containerd_snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels)
        )
        answer = self.call("Snapshots.Prepare", self.snapshots.Prepare, request, ok=(grpc.StatusCode.ALREADY_EXISTS,))
        if answer == grpc.StatusCode.ALREADY_EXISTS:
            return None
        return list(answer.mounts)

    def commit(self, snapshotter: str, name: str, key: str, labels: Mapping[str, str]) -> None:
        request = containerd_snapshots_pb2.CommitSnapshotRequest(
            snapshotter=snapshotter, name=name, key=key, labels=dict(labels)
        )
        self.call("Snapshots.Commit", self.snapshots.Commit, request)

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        request = containerd_snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key)
        self.call("Snapshots.Remove", self.snapshots.Remove, request, ok=(grpc.StatusCode.NOT_FOUND,))

    def apply(self, descriptor: containerd_types_pb2.Descriptor, mounts: list[containerd_types_pb2.Mount]) -> None:
        request = containerd_diff_pb2.ApplyRequest(diff=descriptor, mounts=mounts)
        try:
            self.diff.Apply(request, metadata=self.metadata(), timeout=max(self.timeout, 600))
        except grpc.RpcError as exc:
            raise ContainerdError(
                f"containerd Diff.Apply {descriptor.digest}: {exc.code().name}: {exc.details()}"
            ) from None
