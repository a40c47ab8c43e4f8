"""The layers' inode tree (dffs/fs/layertree.py): pure, from entries like dffs.layers' Entry."""

from __future__ import annotations

import os
import stat

import attrs
import pytest

from dffs.fs.layertree import LAYER_INODE_BASE, SLOT_SIZE, LayerTree


@attrs.frozen
class E:  # the fields of dffs.layers' Entry that the tree reads
    path: str
    kind: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: float = 0.0
    link_target: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict = attrs.Factory(dict)


def test_a_layer_with_every_kind():
    tree = LayerTree()
    top = tree.add_layer(
        "abc",
        [
            E("./", "dir", 0o755),
            E("bin/busybox", "reg", 0o755, size=100, uid=1, gid=2, mtime=5.0),  # bin/ only implied
            E("bin/sh", "symlink", 0o777, link_target="busybox"),
            E("bin/ash", "hardlink", link_target="bin/busybox"),
            E("etc", "dir", 0o700, xattrs={"trusted.overlay.opaque": "y"}),  # an opaque directory
            E("etc/gone", "char", 0o000),  # a whiteout
            E("etc/tagged", "reg", xattrs=((b"user.a", b"1"), (b"security.capability", b"\x01"))),
            E("dev/null", "char", 0o666, devmajor=1, devminor=3),
            E("run/fifo", "fifo", 0o600),
        ],
        layer=None,
        digest="sha256:abc",
    )
    assert top.inode > LAYER_INODE_BASE and tree.root.children["abc"] is top
    busybox = top.children["bin"].children["busybox"]
    assert (busybox.size, busybox.uid, busybox.gid, busybox.st_mode) == (100, 1, 2, stat.S_IFREG | 0o755)
    assert top.children["bin"].children["ash"] is busybox and busybox.nlink == 2  # one inode, two names
    assert top.children["bin"].children["sh"].link_target == "busybox"
    assert top.children["etc"].xattrs == {"trusted.overlay.opaque": b"y"}
    assert top.children["etc"].mode == 0o700
    assert top.children["etc"].children["tagged"].xattrs == {"user.a": b"1", "security.capability": b"\x01"}
    gone = top.children["etc"].children["gone"]
    assert stat.S_ISCHR(gone.st_mode) and gone.rdev == 0
    assert top.children["dev"].children["null"].rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(top.children["run"].children["fifo"].st_mode)
    assert top.nlink == 2 + 4  # bin, etc, dev, run
    assert tree.get(busybox.inode) is busybox


def test_a_directory_implied_then_described_keeps_its_children():
    tree = LayerTree()
    top = tree.add_layer("l", [E("a/b", "reg"), E("a", "dir", 0o711, uid=7)], layer=None)
    a = top.children["a"]
    assert (a.mode, a.uid, list(a.children)) == (0o711, 7, ["b"])


def test_removing_a_layer_forgets_its_inodes():
    tree = LayerTree()
    top = tree.add_layer("l", [E("f", "reg")], layer=None)
    inode = top.children["f"].inode
    assert tree.remove_layer("l") and tree.get(inode) is None and "l" not in tree
    assert not tree.remove_layer("l")


@pytest.mark.parametrize(
    "entries",
    [
        [E("../escape", "reg")],
        [E("f", "reg"), E("f/g", "reg")],
        [E("l", "hardlink", link_target="missing")],
        [E("x", "socket")],
    ],
)
def test_bad_layers_are_refused(entries):
    tree = LayerTree()
    with pytest.raises(ValueError):
        tree.add_layer("bad", entries, layer=None)
    assert "bad" not in tree
    assert tree.get(LAYER_INODE_BASE + SLOT_SIZE) is None  # nothing half-made stays in the inode table
    assert tree.free_slot() == 1


def test_inode_numbers_depend_on_the_slot_and_the_entries_only():
    entries = [E("a/b", "reg"), E("c", "symlink", link_target="a/b")]
    first, second = LayerTree(), LayerTree()
    first.add_layer("other", [E("x", "reg")], layer=None, slot=1)
    first.add_layer("l", entries, layer=None, slot=7)
    second.add_layer("l", entries, layer=None, slot=7)  # after a restart: alone, mounted first
    assert first.root.children["l"].children["a"].children["b"].inode == (
        second.root.children["l"].children["a"].children["b"].inode
    )
    assert first.root.children["l"].inode == LAYER_INODE_BASE + 7 * SLOT_SIZE
    with pytest.raises(ValueError):
        first.add_layer("again", entries, layer=None, slot=7)
