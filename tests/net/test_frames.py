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


def test_keepalive_pings_measure_rtt_and_detect_a_dead_peer():
    a, b = pair(keepalive=10, dead_after=30)
    pump(a, b, 0.0)
    events(a), events(b)
    assert a.get_timer() == 10
    a.handle_timer(10.0)          # a pings
    b.receive(a.data_to_send(), 10.0)
    a.receive(b.data_to_send(), 10.25)  # b's pong
    assert a.rtt == 0.25
    # now b goes silent
    a.handle_timer(20.25)
    a.handle_timer(40.25)
    [closed] = events(a)
    assert closed.reason.startswith("peer stopped answering")


def test_oversized_frame_closes_with_reason():
    a, b = pair(max_frame=100)
    pump(a, b, 0.0)
    events(b)
    a.max_frame = 10_000
    a.send(b"z" * 500, 1.0)
    b.receive(a.data_to_send(), 1.0)
    [closed] = events(b)
    assert "frame of 501 bytes (limit 100)" in closed.reason


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
