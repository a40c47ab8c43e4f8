"""FUSE forget: the node table follows the kernel's lookup counts, so it shrinks, and an inode the
kernel still knows keeps its number. The table alone (pure), then a real mount read with os.stat."""

from __future__ import annotations

import os
import time

import pytest
from mounts import MountProcess

from dffs.fs.nodes import InodeTable, Role


def remote_tree(table: InodeTable):
    scheme = table.add_child(table.root, "http", Role.SCHEME, static=True)
    host = table.add_child(scheme, "h", Role.REMOTE_DIR, url="http://h/")
    return scheme, host


def test_forgotten_nodes_leave_the_table_and_known_ones_keep_their_inode():
    table = InodeTable()
    scheme, host = remote_tree(table)
    table.remember(host)
    files = [table.add_child(host, f"f{i}", Role.FILE, url=f"http://h/f{i}", size=1) for i in range(100)]
    for node in files:
        table.remember(node)
    before = len(table)
    for node in files[1:]:
        table.forget(node.inode, 1)
    assert len(table) == before - 99
    assert table.get(files[0].inode) is files[0] and host.children == {"f0": files[0]}
    # Looked up again by name: the same node, the same inode.
    assert table.add_child(host, "f0", Role.FILE, url="http://h/f0", size=1) is files[0]
    table.forget(files[0].inode, 1)
    table.forget(host.inode, 1)
    assert len(table) == 2 and scheme.children == {}  # root and the static scheme directory stay


def test_a_parent_stays_while_the_kernel_knows_a_child():
    table = InodeTable()
    _, host = remote_tree(table)
    sub = table.add_child(host, "sub", Role.REMOTE_DIR, url="http://h/sub/")
    leaf = table.add_child(sub, "leaf", Role.FILE, url="http://h/sub/leaf")
    for node in (host, sub, leaf):
        table.remember(node)
    table.forget(sub.inode, 1)
    table.forget(host.inode, 1)
    assert table.get(sub.inode) is sub and table.get(host.inode) is host
    table.forget(leaf.inode, 1)
    assert table.get(leaf.inode) is None and table.get(sub.inode) is None and table.get(host.inode) is None


def test_listed_siblings_the_kernel_never_saw_do_not_pin_their_directory():
    table = InodeTable()
    _, host = remote_tree(table)
    table.remember(host)
    listed = [table.add_child(host, f"e{i}", Role.FILE, url=f"http://h/e{i}") for i in range(50)]
    table.remember(listed[0])
    table.forget(listed[0].inode, 1)
    assert table.get(host.inode) is host  # the kernel still knows the directory
    table.forget(host.inode, 1)
    assert all(table.get(n.inode) is None for n in listed) and table.get(host.inode) is None


def test_detached_nodes_stay_until_forgotten():
    table = InodeTable()
    _, host = remote_tree(table)
    known = table.add_child(host, "k", Role.FILE, url="http://h/k")
    unknown = table.add_child(host, "u", Role.FILE, url="http://h/u")
    table.remember(host)
    table.remember(known)
    table.detach(host, "k")
    table.detach(host, "u")
    assert table.get(known.inode) is known and table.get(unknown.inode) is None
    replacement = table.add_child(host, "k", Role.REMOTE_DIR, url="http://h/k/")
    assert replacement.inode != known.inode  # a new object, a new number; the old one lives on
    table.forget(known.inode, 1)
    assert table.get(known.inode) is None and table.get(replacement.inode) is replacement


def test_static_and_named_source_nodes_are_never_dropped():
    table = InodeTable()
    named = table.add_child(table.root, "data", Role.REMOTE_DIR, url="http://h/")
    static = table.add_child(table.root, "m", Role.STATIC_DIR, static=True)
    entry = table.add_child(static, "file", Role.FILE, url="http://h/file", static=True)
    for node in (named, static, entry):
        table.remember(node)
        table.forget(node.inode, 1)
    assert table.get(named.inode) is named and table.get(static.inode) is static and table.get(entry.inode) is entry


def test_forget_of_unknown_or_root_inodes_is_harmless():
    table = InodeTable()
    table.forget(1, 5)
    table.forget(12345, 1)
    assert len(table) == 1


@pytest.mark.slow
def test_the_mounts_node_table_shrinks_when_the_kernel_forgets(tmp_path, faulty_origin):
    for i in range(300):
        faulty_origin.add(f"/f{i}", b"x" * (i + 1))
    mount = MountProcess(tmp_path / "mnt", tmp_path / "data", "--prefetch", "none").start()
    try:
        base = mount.mountpoint / "http" / f"127.0.0.1:{faulty_origin.port}"
        for i in range(300):
            assert os.stat(base / f"f{i}").st_size == i + 1
        assert os.statvfs(mount.mountpoint).f_files > 300  # f_files is the table's size
        held = os.open(base / "f7", os.O_RDONLY)
        try:
            inode = os.fstat(held).st_ino
            deadline = time.monotonic() + 60
            while os.statvfs(mount.mountpoint).f_files > 50:
                # Drop dentries and inodes (all filesystems): the kernel sends FORGET for ours.
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("2")
                assert time.monotonic() < deadline, f"table still {os.statvfs(mount.mountpoint).f_files} nodes"
                time.sleep(0.2)
            assert os.stat(base / "f7").st_ino == inode  # known to the kernel all along: same number
            assert os.read(held, 100) == b"x" * 8
        finally:
            os.close(held)
        assert os.stat(base / "f3").st_size == 4  # forgotten names are looked up again as usual
        assert mount.alive()
    finally:
        mount.stop()
