"""The session core, sans-I/O: Hello, versions, keepalive, hostile bytes."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgate.errors import RemoteProtocolError
from p2pgate.net.frames import (
    PROTOCOL_VERSION,
    ClosedEvent,
    DataReceived,
    HelloReceived,
    PathRecovered,
    PathSuspect,
    PeerHello,
    SessionCore,
)


def pair(now=0.0, b_versions=None, **kw):
    a = SessionCore(PeerHello("A", "phone"), now, **kw)
    hello_b = PeerHello("B", "desk", tuple(b_versions)) if b_versions else PeerHello("B", "desk")
    b = SessionCore(hello_b, now, **kw)
    return a, b


def pump(a, b, now):
    for _ in range(10):
        x, y = a.data_to_send(), b.data_to_send()
        if not x and not y:
            return
        if x:
            b.receive(x, now)
        if y:
            a.receive(y, now)


def events(core):
    out = []
    while (e := core.next_event()) is not None:
        out.append(e)
    return out


def test_hello_then_data_both_ways():
    a, b = pair()
    pump(a, b, 0.0)
    assert events(a) == [HelloReceived(PeerHello("B", "desk"), PROTOCOL_VERSION)]
    assert [type(e) for e in events(b)] == [HelloReceived]
    a.send(b"one", 1.0)
    pump(a, b, 1.0)
    assert events(b) == [DataReceived(b"one")]


def test_version_negotiation_newer_peer_agrees_on_ours():
    a, b = pair(b_versions=[PROTOCOL_VERSION + 1, PROTOCOL_VERSION])
    pump(a, b, 0.0)
    assert events(a)[0].version == PROTOCOL_VERSION
    a2, b2 = pair(b_versions=[PROTOCOL_VERSION - 1])
    pump(a2, b2, 0.0)
    assert events(a2)[0].version == PROTOCOL_VERSION - 1


def test_version_negotiation_refuses_too_old_with_a_clear_reason():
    a, b = pair(b_versions=[PROTOCOL_VERSION - 2])
    pump(a, b, 0.0)
    [closed] = events(a)
    assert isinstance(closed, ClosedEvent)
    assert "no common protocol version" in closed.reason
    assert f"peer speaks [{PROTOCOL_VERSION - 2}]" in closed.reason
    assert any(isinstance(e, ClosedEvent) and "no common protocol version" in e.reason
               for e in events(b))


def test_an_idle_session_pings_every_keepalive_and_measures_rtt():
    a, b = pair(keepalive=30)
    pump(a, b, 0.0)
    events(a), events(b)
    assert a.get_timer() == 30
    a.handle_timer(30.0)          # a pings
    b.receive(a.data_to_send(), 30.0)
    a.receive(b.data_to_send(), 30.25)  # b's pong
    assert a.rtt == 0.25 and a.srtt == 0.25
    assert not events(a) and a.get_timer() == 60.0


def test_idle_peers_exchange_one_ping_per_interval_between_them():
    a, b = pair()  # defaults
    pump(a, b, 0.0)
    pings = 0
    for t in range(1, 3601):
        for me in (a, b):
            if (me.get_timer() or 1e9) <= t:
                me.handle_timer(float(t))
                pings += me.data_to_send().count(b"\x00\x00\x00\x01\x03")
                # the peer answers at once
                (b if me is a else a).receive(_ping(), float(t))
                me.receive((b if me is a else a).data_to_send(), float(t))
    assert pings == 3600 // 30  # a PONG counts as traffic: the peer does not ping too


def _ping():
    return b"\x00\x00\x00\x01\x03"


def test_a_write_is_followed_by_a_ping_and_silence_makes_the_path_suspect_in_1_s():
    a, b = pair()
    pump(a, b, 0.0)
    events(a)
    a.send(b"note", 100.0)
    out = a.data_to_send()
    assert out.endswith(_ping())  # the DATA frame, then a PING
    assert a.get_timer() == pytest.approx(101.0, abs=1e-3)  # max(1 s, 4 x srtt) + 9 bytes
    a.handle_timer(100.999)
    assert not events(a)
    a.handle_timer(101.001)
    [suspect] = events(a)
    assert isinstance(suspect, PathSuspect) and a.suspect
    # nothing more to send: the next check is the dead time
    assert a.get_timer() == pytest.approx(120.0, abs=1e-3)
    b.receive(out, 101.5)
    a.receive(b.data_to_send(), 101.5)  # the PONG, late
    assert events(a) == [PathRecovered()] and not a.suspect


def test_an_unanswered_ping_ends_the_session_after_dead_after():
    a, b = pair()
    pump(a, b, 0.0)
    events(a)
    a.send(b"x", 5.0)
    a.handle_timer(6.0)
    a.handle_timer(24.9)
    assert [type(e) for e in events(a)] == [PathSuspect]
    a.handle_timer(25.0)
    [closed] = events(a)
    assert closed.reason == "peer stopped answering (no answer for 20 s)"
    assert a.state == "closed"


def test_suspect_allowance_grows_with_rtt_and_with_the_bytes_ahead_of_the_ping():
    a, b = pair()
    pump(a, b, 0.0)
    a.srtt = 0.5
    a.send(b"z" * 1_000_000, 1.0)  # a big sync message: 8 s at the floor rate
    assert a.suspect_after() == pytest.approx(2.0 + 8.0, abs=0.01)
    assert a.get_timer() == pytest.approx(11.0, abs=0.01)


def test_data_sent_while_a_ping_is_out_is_acknowledged_by_the_next_ping():
    a, b = pair()
    pump(a, b, 0.0)
    a.send(b"one", 1.0)
    first = a.data_to_send()
    a.send(b"two", 1.1)  # no second PING while one is outstanding
    second = a.data_to_send()
    assert not second.endswith(_ping())
    b.receive(first + second, 1.2)
    a.receive(b.data_to_send(), 1.2)  # the PONG of the first
    assert a.data_to_send() == _ping()  # "two" came after it: ping again
    b.receive(_ping(), 1.3)
    a.receive(b.data_to_send(), 1.3)
    assert a.data_to_send() == b""  # all acknowledged: quiet until the idle ping


def test_both_ends_derive_one_session_id_and_a_hello_names_the_one_it_replaces():
    a = SessionCore(PeerHello("A", "phone", nonce=b"a" * 16), 0.0)
    b = SessionCore(PeerHello("B", "desk", nonce=b"b" * 16, replaces=b"r" * 16), 0.0)
    pump(a, b, 0.0)
    [hello] = events(a)
    assert hello.hello.replaces == b"r" * 16
    assert a.session_id == b.session_id and len(a.session_id) == 16
    old = SessionCore(PeerHello("C", "old"), 0.0)  # a peer without nonces: no ID
    c = SessionCore(PeerHello("A", "phone", nonce=b"c" * 16), 0.0)
    pump(c, old, 0.0)
    assert c.session_id == b""


def test_oversized_frame_closes_with_reason():
    a, b = pair(max_frame=200)
    pump(a, b, 0.0)
    events(b)
    a.max_frame = 10_000
    a.send(b"z" * 500, 1.0)
    b.receive(a.data_to_send(), 1.0)
    [closed] = events(b)
    assert "frame of 501 bytes (limit 200)" in closed.reason


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8), st.booleans())
def test_any_bytes_either_parse_or_close_the_session(chunks, after_hello):
    a, b = pair()
    if after_hello:
        pump(a, b, 0.0)
        events(b)
    for chunk in chunks:
        b.receive(chunk, 1.0)  # never raises
    for e in events(b):
        assert isinstance(e, HelloReceived | DataReceived | ClosedEvent)


@pytest.mark.parametrize("payload", [b"[" * 5000 + b"]" * 5000, b'{"device": "x", "name": "y",'
                                     b' "versions": [1e400]}', b'[1]', b'{"device": 1, "name": 2,'
                                     b' "versions": [1], "caps": 5}'])
def test_a_hostile_hello_payload_is_a_protocol_error_only(payload):
    with pytest.raises(RemoteProtocolError):
        PeerHello.decode(payload)


def test_the_node_config_defaults_are_the_session_defaults():
    from p2pgate.config import NodeConfig
    from p2pgate.net.frames import DEFAULT_DEAD_AFTER, DEFAULT_KEEPALIVE

    fields = NodeConfig.model_fields
    assert (fields["keepalive"].default, fields["keepalive_timeout"].default) == (
        DEFAULT_KEEPALIVE, DEFAULT_DEAD_AFTER)
