"""The snapshotter's rules (dffs/snapshotter/core.py, filters.py, store.py) without gRPC or mounts."""

from __future__ import annotations

import itertools

import pytest

from dffs.snapshotter import filters
from dffs.snapshotter.core import (
    REMOTE_LABEL,
    TARGET_LABEL,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Snapshots,
)
from dffs.snapshotter.store import MetaStore


@pytest.fixture
def snaps(tmp_path):
    clock = itertools.count(1000)
    store = MetaStore(tmp_path / "meta.db")
    yield Snapshots(store, clock=lambda: float(next(clock)))
    store.close()


def test_prepare_commit_and_a_chain(snaps):
    snaps.create("default", "a", "", "active", {"x": "1"})
    snaps.commit("default", "layer1", "a", {"y": "2"}, (10, 2))
    snaps.create("default", "b", "layer1", "active", {})
    snaps.commit("default", "layer2", "b", {}, (0, 0))
    top = snaps.create("default", "c", "layer2", "active", {})
    assert [r.key for r in snaps.chain(top)] == ["layer2", "layer1"]
    info = snaps.stat("default", "layer1")
    assert (info.kind, info.parent, dict(info.labels)) == ("committed", "", {"y": "2"})  # commit labels replace
    assert snaps.stat("default", "layer2").parent == "layer1"
    assert snaps.usage_row("default", "layer1").size == 10


def test_the_error_codes_containerd_expects(snaps):
    snaps.create("default", "a", "", "active", {})
    with pytest.raises(AlreadyExists):
        snaps.create("default", "a", "", "active", {})
    with pytest.raises(NotFound):
        snaps.create("default", "b", "missing", "active", {})
    with pytest.raises(InvalidArgument):  # a parent must be committed
        snaps.create("default", "b", "a", "active", {})
    with pytest.raises(NotFound):
        snaps.stat("default", "nope")
    snaps.commit("default", "c", "a", {}, (0, 0))
    with pytest.raises(FailedPrecondition):  # only active snapshots commit
        snaps.commit("default", "d", "c", {}, (0, 0))
    with pytest.raises(FailedPrecondition):  # committed snapshots have no mounts
        snaps.for_mounts("default", "c")
    snaps.create("default", "e", "c", "view", {})
    with pytest.raises(FailedPrecondition):  # children first
        snaps.remove("default", "c")
    snaps.create("default", "f", "", "active", {})
    with pytest.raises(AlreadyExists):  # names and keys share one space
        snaps.commit("default", "e", "f", {}, (0, 0))
    with pytest.raises(InvalidArgument):
        snaps.create("default", "", "", "active", {})
    with pytest.raises(InvalidArgument):
        snaps.create("default", "big", "", "active", {"k": "v" * 5000})
    snaps.remove("default", "e")
    snaps.remove("default", "c")
    with pytest.raises(NotFound):
        snaps.remove("default", "c")


def test_namespaces_are_separate(snaps):
    snaps.create("ns1", "a", "", "active", {})
    snaps.create("ns2", "a", "", "active", {})  # no clash
    with pytest.raises(NotFound):
        snaps.stat("ns3", "a")
    assert [i.name for i in snaps.list("ns1", [])] == ["a"]


def test_update_changes_labels_only(snaps):
    snaps.create("default", "a", "", "active", {"keep": "1", "drop": "2"})
    info = snaps.update("default", "a", {"new": "3", "drop": ""}, ["labels.new", "labels.drop"])
    assert dict(info.labels) == {"keep": "1", "new": "3"}
    info = snaps.update("default", "a", {"only": "x"}, ["labels"])
    assert dict(info.labels) == {"only": "x"}
    info = snaps.update("default", "a", {"all": "y"}, [])
    assert dict(info.labels) == {"all": "y"}
    with pytest.raises(InvalidArgument):
        snaps.update("default", "a", {}, ["parent"])
    with pytest.raises(NotFound):
        snaps.update("default", "zz", {}, [])


def test_the_remote_snapshot_lookup_containerd_makes(snaps):
    snaps.create("default", "k1", "", "active", {})
    snaps.commit("default", "base", "k1", {}, (0, 0))
    row = snaps.commit_remote("default", "remote-x", "base", {TARGET_LABEL: "sha256:chain"}, {"digest": "d"}, (5, 1))
    assert row.remote == {"digest": "d"}
    assert snaps.find_remote("default", "sha256:chain", "base").id == row.id
    assert snaps.find_remote("default", "sha256:chain", "") is None  # another parent: another chain
    assert snaps.find_remote("other", "sha256:chain", "base") is None
    # containerd's own List filter after ALREADY_EXISTS
    found = snaps.list("default", [f'labels."{TARGET_LABEL}"==sha256:chain,parent==base'])
    assert [(i.name, i.kind) for i in found] == [("remote-x", "committed")]
    assert REMOTE_LABEL in found[0].labels


def test_metadata_survives_a_reopen(tmp_path):
    store = MetaStore(tmp_path / "meta.db")
    Snapshots(store).create("default", "a", "", "active", {"l": "v"})
    store.close()
    store = MetaStore(tmp_path / "meta.db")
    try:
        assert dict(Snapshots(store).stat("default", "a").labels) == {"l": "v"}
    finally:
        store.close()


def test_a_failed_call_changes_nothing(snaps):
    snaps.create("default", "a", "", "active", {})
    with pytest.raises(AlreadyExists):
        snaps.commit("default", "a", "a", {}, (0, 0))
    assert snaps.stat("default", "a").kind == "active"


@pytest.mark.parametrize(
    "text, fields, expected",
    [
        (
            'labels."containerd.io/snapshot.ref"==sha256:abc',
            {"labels": {"containerd.io/snapshot.ref": "sha256:abc"}},
            True,
        ),
        ("kind==committed", {"kind": "active"}, False),
        ("kind!=committed", {"kind": "active"}, True),
        ('name~="^default/[0-9]+/"', {"name": "default/3/x"}, True),
        ("name~=/^x/", {"name": "default/3/x"}, False),
        ("labels.a", {"labels": {"a": "1"}}, True),
        ("labels.a", {"labels": {}}, False),
        ('parent=="default/1/a b",kind==view', {"parent": "default/1/a b", "kind": "view"}, True),
        ('parent=="default/1/a b",kind==view', {"parent": "default/1/a b", "kind": "active"}, False),
    ],
)
def test_filters(text, fields, expected):
    lookup = filters.snapshot_field(
        fields.get("name", ""), fields.get("parent", ""), fields.get("kind", ""), fields.get("labels", {})
    )
    assert filters.matches_any([filters.parse(text)], lookup) is expected


@pytest.mark.parametrize("text", ['labels."unterminated', "name==", "name==a b", "==x", "name~=/(/"])
def test_bad_filters_are_errors(snaps, text):
    with pytest.raises(InvalidArgument):
        snaps.list("default", [text])
