"""The FUSE keeper's relay bookkeeping (dffs/fs/keeper.py), without a device or sockets."""

from __future__ import annotations

from dffs.fs.keeper import FUSE_INIT, IN_HEADER, INIT_IN, OUT_HEADER, SPLICE, Relay


def request(opcode: int, unique: int, body: bytes = b"") -> bytes:
    return IN_HEADER.pack(IN_HEADER.size + len(body), opcode, unique, 1, 0, 0, 0, 0, 0) + body


def reply(unique: int, body: bytes = b"") -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size + len(body), 0, unique) + body


INIT = request(FUSE_INIT, 1, INIT_IN.pack(7, 38, 131072, SPLICE | 0x1 | (1 << 30)))


def test_init_loses_its_splice_flags_and_is_replayed_to_the_next_daemon():
    relay = Relay()
    forwarded = relay.from_kernel(INIT)
    flags = INIT_IN.unpack_from(forwarded, IN_HEADER.size)[3]
    assert flags & SPLICE == 0 and flags & 0x1 and flags & (1 << 30)
    assert relay.from_daemon(reply(1, b"init-out")) is not None  # the kernel's own INIT reply goes through
    assert relay.connected() == [forwarded]  # a new daemon sees INIT first...
    assert relay.from_daemon(reply(1, b"again")) is None  # ...and its answer goes nowhere
    assert relay.from_daemon(reply(1, b"late")) is not None  # only once


def test_unanswered_requests_are_sent_again_after_a_crash():
    relay = Relay()
    relay.from_kernel(INIT)
    relay.from_daemon(reply(1))
    lookup, read, forget = request(1, 10), request(15, 11), request(2, 12)
    for message in (lookup, read, forget):
        relay.from_kernel(message)
    relay.from_daemon(reply(10))  # the lookup was answered, the read was not; FORGET has no reply
    first = relay.connected()
    assert first[1:] == [read]


def test_an_init_never_answered_is_answered_by_the_next_daemon():
    relay = Relay()
    relay.from_kernel(INIT)
    replay = relay.connected()  # the first daemon died before answering INIT
    assert len(replay) == 1
    assert relay.from_daemon(reply(1)) is not None  # this answer must reach the kernel


def test_notifications_and_short_messages_pass_through():
    relay = Relay()
    notify = OUT_HEADER.pack(OUT_HEADER.size + 8, -1, 0) + b"x" * 8  # unique 0: a notification
    assert relay.from_daemon(notify) == notify
    assert relay.from_kernel(b"xx") == b"xx" and relay.from_daemon(b"yy") == b"yy"
