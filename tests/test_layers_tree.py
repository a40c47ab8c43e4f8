"""Layer trees and plain tar layers: the tree read through dffs.layers equals what
tarfile extracts (with containerd's overlay whiteout conversion), for layers built
offline with tarfile; tar semantics (replacement, whiteouts, hard links) and bad tars."""

from __future__ import annotations

import io
import tarfile

import pytest
from layer_builds import assert_same_tree, every_kind_tar, extracted_tree, sha256, tree_through_layer

from dffs.layers import Kind, LayerFormatError, NotLazy, open_layer
from dffs.layers.tree import OPAQUE_XATTR, Entry, Format, LayerIndex, TreeBuilder, scan_tar

TAR = "application/vnd.oci.image.layer.v1.tar"


def make_tar(*members: tuple) -> bytes:
    """members: (name, type, data, fields) tuples."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, data, fields in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            for key, value in fields.items():
                setattr(info, key, value)
            archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return out.getvalue()


def reg(name, data=b"x", **fields):
    return (name, tarfile.REGTYPE, data, fields)


def directory(name, **fields):
    return (name, tarfile.DIRTYPE, b"", fields)


def link(name, target, **fields):
    return (name, tarfile.LNKTYPE, b"", dict(fields, linkname=target))


class BlobFetch:
    """The blob in memory, read by range; counts what was asked for."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.requested = 0

    async def __call__(self, offset: int, length: int) -> bytes:
        self.requested += length
        return self.blob[offset : offset + length]


async def test_tar_layer_tree_equals_tarfile_extraction(tmp_path):
    tar = every_kind_tar()
    fetch = BlobFetch(tar)
    layer = await open_layer(TAR, {}, fetch, len(tar), digest=sha256(tar))
    # The headers alone came over the fetch: a scan of a 3 MiB layer is not a download of it.
    assert fetch.requested < len(tar) // 2
    assert layer.format is Format.TAR
    assert_same_tree(extracted_tree(tar, tmp_path), await tree_through_layer(layer))
    # and the shared index opens the same layer without touching the headers again
    again = BlobFetch(tar)
    reopened = await open_layer(TAR, {}, again, len(tar), layer.index_bytes(), digest=sha256(tar))
    assert reopened.index == layer.index and again.requested == 0


async def test_whiteouts_and_opaque_dirs_are_presented_for_overlayfs():
    tar = every_kind_tar(big=10)
    index = scan_tar(io.BytesIO(tar))
    removed = index.lookup("var/lib/removed")
    assert (removed.kind, removed.devmajor, removed.devminor, removed.mode) == (Kind.CHAR, 0, 0, 0)
    assert index.lookup("var/lib/.wh.removed") is None
    assert index.lookup("var/cache").xattr(OPAQUE_XATTR) == b"y"
    assert [e.name for e in index.children("var/cache")] == ["fresh"]
    assert index.lookup("var/lib").implied and index.lookup("var").implied
    assert not any(".wh." in e.path for e in index)


async def test_hard_links_share_their_target_and_count():
    index = scan_tar(io.BytesIO(every_kind_tar(big=10)))
    busybox, ls, cat = (index.lookup(p) for p in ("bin/busybox", "bin/ls", "bin/cat"))
    assert ls.kind is Kind.HARDLINK and cat.kind is Kind.HARDLINK
    assert index.resolve(cat) is busybox and index.resolve(ls) is busybox  # a link to a link resolves fully
    assert index.nlink(busybox) == index.nlink(cat) == 3
    assert index.nlink(index.root) == 2 + sum(1 for e in index.children("") if e.kind is Kind.DIR)


def test_later_members_replace_earlier_ones_like_an_unpack():
    tar = make_tar(
        reg("a/file", b"old"),
        directory("a", mode=0o700, pax_headers={"SCHILY.xattr.user.k": "1"}),
        directory("a", mode=0o750),  # dir over dir: children and xattrs stay
        reg("b/inner", b"gone"),
        reg("b", b"a file now"),  # file over dir: the subtree goes
        reg("c", b"first"),
        reg("c", b"second"),
    )
    index = scan_tar(io.BytesIO(tar))
    assert index.lookup("a").mode == 0o750 and index.lookup("a").xattr(b"user.k") == b"1"
    assert index.lookup("a/file") is not None
    assert index.lookup("b").kind is Kind.REG and index.lookup("b/inner") is None
    c = index.lookup("c")
    assert tar[c.offset : c.offset + c.size] == b"second"


def test_members_that_cannot_be_lazy_or_are_malformed():
    cases = [
        (make_tar(link("x", "lower-layer-file")), NotLazy, "not in this layer"),
        (make_tar(reg("t", b"1"), link("l", "t"), reg("t", b"2")), NotLazy, "replaced later"),
        (make_tar(reg("../escape")), LayerFormatError, "leaves the layer root"),
        (make_tar(reg("f"), reg("f/inside")), LayerFormatError, "which is a reg"),
        (make_tar(reg(".wh.")), LayerFormatError, "names no file"),
        (make_tar(directory("d"), link("h", "d")), LayerFormatError, "directory"),
        (make_tar(("s", tarfile.SYMTYPE, b"", {"linkname": "elsewhere"}), reg("s/x")), NotLazy, "through link"),
    ]
    for tar, error, words in cases:
        with pytest.raises(error, match=words):
            scan_tar(io.BytesIO(tar))


def test_aufs_metadata_is_dropped_and_root_member_sets_root():
    index = scan_tar(io.BytesIO(make_tar(directory("./", mode=0o711), reg(".wh..wh.plnk/123.4"), reg("keep"))))
    assert index.root.mode == 0o711 and not index.root.implied
    assert [e.path for e in index] == ["", "keep"]


def test_truncated_and_garbage_tars_are_format_errors():
    tar = make_tar(reg("a", b"x" * 5000), reg("b", b"y" * 10))
    for broken in (tar[:700], tar[:5000], b"\x01" * 1024, tar[:512] + b"\xff" * 3000):
        with pytest.raises(LayerFormatError):
            scan_tar(io.BytesIO(broken))
    assert len(scan_tar(io.BytesIO(b""))) == 1  # an empty stream is an empty layer
    assert len(scan_tar(io.BytesIO(b"\0" * 1024))) == 1


def test_sparse_members_are_not_lazy():
    info = tarfile.TarInfo("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    raw = info.tobuf(format=tarfile.GNU_FORMAT)
    with pytest.raises((NotLazy, LayerFormatError)):
        scan_tar(io.BytesIO(raw + b"\0" * 1024))


async def test_reads_of_non_files_and_past_the_end():
    tar = every_kind_tar(big=10)
    layer = await open_layer(TAR, {}, BlobFetch(tar), len(tar))
    with pytest.raises(Exception, match="is a dir"):
        await layer.read(layer.index.lookup("etc"), 0, 10)
    passwd = layer.index.lookup("etc/passwd")
    assert await layer.read(passwd, 5, 4) == b"x:0:"
    assert await layer.read(passwd, passwd.size + 100, 4) == b""


async def test_a_truncated_tar_blob_fails_the_read_clearly():
    tar = every_kind_tar(big=1 << 20)
    layer = await open_layer(TAR, {}, BlobFetch(tar), len(tar))
    big = layer.index.lookup("usr/lib/big.bin")
    short = BlobFetch(tar[: big.offset + 100])
    cut = await open_layer(TAR, {}, short, len(tar), layer.index_bytes())
    with pytest.raises(LayerFormatError, match="truncated"):
        await cut.read(big, 0, 4096)


def test_index_validation_refuses_inconsistent_trees():
    root = Entry("", Kind.DIR, mode=0o755)
    bad = [
        [Entry("a", Kind.REG)],  # no root
        [root, Entry("a/b", Kind.REG)],  # no parent
        [root, Entry("a", Kind.REG), Entry("a/b", Kind.REG)],  # parent is a file
        [root, Entry("a", Kind.HARDLINK, link_target="nowhere")],
        [root, Entry("a/../b", Kind.REG)],
        [root, Entry("a", Kind.REG, size=10, offset=95)],  # past the tar's end (100)
        [root, Entry("a", Kind.DIR, size=3)],
        [root, Entry("a", Kind.SYMLINK)],
        [root, Entry("a", Kind.REG, mode=0o170000)],
        [root, Entry("a", Kind.REG, xattrs=((b"b", b""), (b"a", b"")))],
    ]
    for entries in bad:
        with pytest.raises(LayerFormatError):
            LayerIndex(entries, format=Format.TAR, tar_size=100)


def test_builder_makes_implied_parents_once():
    builder = TreeBuilder()
    builder.add("x/y/z", Kind.REG, size=0)
    builder.add("x/y/w", Kind.REG, size=0)
    index = builder.finish(format=Format.TAR)
    assert [e.path for e in index] == ["", "x", "x/y", "x/y/w", "x/y/z"]
    assert all(index.lookup(p).implied for p in ("x", "x/y"))
