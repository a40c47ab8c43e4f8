"""What a scheduler says about the holders of small tasks is bounded like any candidate parent
(dffs.daemon.holders, pure: no sockets)."""

from __future__ import annotations

import trio

from dffs.api import common_pb2, scheduler_pb2
from dffs.daemon.holders import MAX_HOLDERS, Hint, HolderHints, parse_holders

DIGEST = "blake3:" + "ab" * 32


def peer(peer_id="p1", host_id="h1", ip="10.0.0.1", port=4000, download_port=4001):
    return common_pb2.Peer(id=peer_id, host=common_pb2.Host(id=host_id, ip=ip, port=port, download_port=download_port))


def task(**fields):
    values = dict(id="t", content_length=100_000, piece_count=1, has_available_peer=True)
    values.update(fields)
    return common_pb2.Task(**values)


def test_a_sound_entry_is_a_hint_and_every_bad_part_is_left_out():
    entry = scheduler_pb2.TaskHolders(
        task_id="t",
        piece_digest=DIGEST,
        peers=[
            peer(),
            peer("mine", host_id="me"),  # this host
            peer("bad-ip", ip="not-an-address"),
            peer("bad-port", download_port=0),
            peer("", host_id="h9"),  # no id
            peer("p2", host_id="h2", ip="10.0.0.2"),
        ],
    )
    hint = parse_holders(entry, task(), "me", now=5.0)
    assert hint is not None
    assert [h.id for h in hint.holders] == ["p1", "p2"]
    assert (hint.piece_digest, hint.content_length, hint.learned_at) == (DIGEST, 100_000, 5.0)
    assert (hint.holders[1].ip, hint.holders[1].download_port) == ("10.0.0.2", 4001)


def test_no_hint_without_a_usable_digest_size_or_holder():
    good = scheduler_pb2.TaskHolders(task_id="t", piece_digest=DIGEST, peers=[peer()])
    assert parse_holders(good, None, "me", 0.0) is None  # a task the answer did not describe
    assert parse_holders(good, task(piece_count=2), "me", 0.0) is None  # not one piece
    assert parse_holders(good, common_pb2.Task(id="t", piece_count=1), "me", 0.0) is None  # no size
    for digest in ("", "sha256:" + "ab" * 32, "blake3:xyz", DIGEST + "00"):
        bad = scheduler_pb2.TaskHolders(task_id="t", piece_digest=digest, peers=[peer()])
        assert parse_holders(bad, task(), "me", 0.0) is None, digest
    only_me = scheduler_pb2.TaskHolders(task_id="t", piece_digest=DIGEST, peers=[peer(host_id="me")])
    assert parse_holders(only_me, task(), "me", 0.0) is None
    many = scheduler_pb2.TaskHolders(
        task_id="t", piece_digest=DIGEST, peers=[peer(f"p{i}", f"h{i}") for i in range(50)]
    )
    assert len(parse_holders(many, task(), "me", 0.0).holders) == MAX_HOLDERS


def test_hints_expire_are_taken_once_and_are_bounded():
    async def main():
        hints = HolderHints(ttl=10.0, limit=3)
        now = trio.current_time()
        hint = Hint((), DIGEST, 1, now)
        for name in "abcd":
            hints.put(name, hint)
        assert len(hints) == 3 and hints.take("a") is None  # the oldest went first
        assert hints.take("b") is hint and hints.take("b") is None  # a task is opened once
        hints.put("old", Hint((), DIGEST, 1, now - 11.0))
        assert hints.take("old") is None

    trio.run(main)
