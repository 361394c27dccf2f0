"""Replica operations, the delete rule, conflicts and the session protocol."""

import pytest
from sync_helpers import (
    T0,
    ReplicaPair,
    drain,
    make_replica,
    no_protocol_errors,
    roundtrip_until_done,
    transfer,
)

from sync import (
    ClockSkewDetected,
    DocumentChanged,
    DocumentNotFound,
    LocalProtocolError,
    MemoryStorage,
    PeerSynced,
    ProtocolErrorOccurred,
    QuarantineReleased,
    SessionClosed,
)
from sync.codec import CLOSE_BAD_MESSAGE, CLOSE_WRONG_PEER, Close, decode
from sync.storage import Batch


def pair():
    return ReplicaPair(make_replica("A"), make_replica("B"))


def test_local_operations_on_every_field_type():
    r = make_replica("A")
    doc = r.put("c", "d", {"a": 1, "n": 2, "s": ["x"], "t": "hello"}, T0)
    assert doc == {"a": 1, "n": 2, "s": ["x"], "t": "hello"}
    r.increment("c", "d", "n", -5, T0 + 1)
    r.add("c", "d", "s", ["y", "x"], T0 + 2)
    r.remove("c", "d", "s", ["x"], T0 + 3)
    doc = r.splice("c", "d", "t", 5, 0, " world", T0 + 4)
    assert doc == {"a": 1, "n": -3, "s": ["y"], "t": "hello world"}
    assert r.patch("c", "d", {"a": None, "b": [1]}, T0 + 5) == {
        "b": [1], "n": -3, "s": ["y"], "t": "hello world"}
    assert r.put("c", "d", {"z": 0}, T0 + 6) == {"z": 0}
    r.delete("c", "d", T0 + 7)
    assert r.get("c", "d") is None
    with pytest.raises(DocumentNotFound):
        r.delete("c", "d", T0 + 8)
    events = drain(r)
    assert all(isinstance(e, DocumentChanged) for e in events)
    assert [e.seq for e in events] == list(range(1, 9))
    assert events[-1].deleted


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"n": {"$inc": "1"}}, "integer"),
        ({"a": {"$inc": 1}}, "counter"),
        ({"s": {"$add": 1}}, "list"),
        ({"t": {"$splice": [9, 0, "x"]}}, "range"),
        ({"a": float("nan")}, "finite"),
        ({"a": {1: 2}}, "keys"),
        ({"a": object()}, "JSON"),
        ({"": 1}, "field name"),
        ({"n": "x"}, "integer"),
    ],
)
def test_bad_input_is_a_local_error(patch, message):
    r = make_replica("A")
    with pytest.raises(LocalProtocolError, match=message):
        r.patch("c", "d", patch, T0)
    assert r.version_vector() == {}


def test_list_and_declare():
    r = make_replica("A")
    for i in range(5):
        r.put("c", f"d{i}", {"i": i}, T0 + i)
    r.delete("c", "d2", T0 + 9)
    assert [d for d, _ in r.list_docs("c")] == ["d0", "d1", "d3", "d4"]
    assert [d for d, _ in r.list_docs("c", after="d1", limit=1)] == ["d3"]
    assert r.field_types("c") == {"n": "counter", "s": "set", "t": "text"}
    with pytest.raises(LocalProtocolError):
        r.declare("c", {"x": "blob"})


def test_sync_both_ways_and_peer_synced():
    p = pair()
    p.a.put("c", "d1", {"a": 1, "n": 1, "s": [1], "t": "x"}, T0)
    p.b.put("c", "d2", {"b": 2}, T0)
    p.roundtrip_until_done(T0 + 1)
    assert p.a.get("c", "d2") == {"b": 2}
    assert p.b.get("c", "d1") == {"a": 1, "n": 1, "s": [1], "t": "x"}
    assert p.a.version_vector() == p.b.version_vector() == {"A": 1, "B": 1}
    assert any(isinstance(e, PeerSynced) for e in drain(p.a))
    assert any(isinstance(e, PeerSynced) for e in drain(p.b))


def test_concurrent_lww_loser_is_the_last_conflict():
    p = pair()
    p.a.patch("c", "d", {"title": "from A"}, T0)
    p.b.patch("c", "d", {"title": "from B"}, T0 + 1)
    p.roundtrip_until_done(T0 + 2)
    for r in (p.a, p.b):
        assert r.get("c", "d") == {"title": "from B"}
        conflict = r.conflicts("c", "d")["title"]
        assert (conflict["value"], conflict["device"]) == ("from A", "A")
    p.a.patch("c", "d", {"title": "A again"}, T0 + 3)  # A saw B's write: no conflict
    p.roundtrip_until_done(T0 + 4)
    assert p.b.conflicts("c", "d") == {}


def test_equal_clocks_tie_break_on_device_id():
    p = pair()
    p.a.clock.last = p.b.clock.last = (int(T0 * 1000) << 8) + 100
    p.a.patch("c", "d", {"v": "A"}, T0)
    p.b.patch("c", "d", {"v": "B"}, T0)
    p.roundtrip_until_done(T0)
    assert p.a.get("c", "d") == p.b.get("c", "d") == {"v": "B"}


class TestDeleteRule:
    """Existence is last-writer-wins by stamp; observed-remove types keep unseen writes."""

    def setup(self):
        p = pair()
        p.a.put("c", "d", {"a": 1, "n": 1, "s": ["x"], "t": "abc"}, T0)
        p.roundtrip_until_done(T0)
        return p

    def test_delete_wins_over_a_concurrent_earlier_update(self):
        p = self.setup()
        p.a.patch("c", "d", {"a": 2, "b": 3}, T0 + 1)
        p.b.delete("c", "d", T0 + 2)
        p.roundtrip_until_done(T0 + 3)
        assert p.a.get("c", "d") is None
        assert p.b.get("c", "d") is None

    def test_a_later_concurrent_update_resurrects_with_what_the_delete_did_not_see(self):
        p = self.setup()
        p.b.delete("c", "d", T0 + 1)
        p.a.patch("c", "d", {"b": 3, "n": {"$inc": 5}, "s": {"$add": ["y"]}}, T0 + 2)
        p.a.splice("c", "d", "t", 3, 0, "!", T0 + 2.5)
        p.roundtrip_until_done(T0 + 3)
        expected = {"b": 3, "n": 5, "s": ["y"], "t": "!"}
        assert p.a.get("c", "d") == expected
        assert p.b.get("c", "d") == expected

    def test_an_update_after_seeing_the_delete_starts_from_empty(self):
        p = self.setup()
        p.b.delete("c", "d", T0 + 1)
        p.roundtrip_until_done(T0 + 1)
        p.a.patch("c", "d", {"n": {"$inc": 1}, "s": {"$add": ["z"]}}, T0 + 2)
        p.roundtrip_until_done(T0 + 2)
        assert p.b.get("c", "d") == {"n": 1, "s": ["z"]}

    def test_put_replaces_and_clears_observed_fields(self):
        p = self.setup()
        p.b.put("c", "d", {"n": 7}, T0 + 1)
        p.roundtrip_until_done(T0 + 1)
        assert p.a.get("c", "d") == {"n": 7}


def test_changes_travel_transitively():
    phone, desktop, laptop = make_replica("phone"), make_replica("desktop"), make_replica("laptop")
    phone.put("c", "d", {"from": "phone"}, T0)
    ReplicaPair(phone, desktop).roundtrip_until_done(T0 + 1)
    ReplicaPair(desktop, laptop).roundtrip_until_done(T0 + 2)
    assert laptop.get("c", "d") == {"from": "phone"}
    assert laptop.version_vector() == {"phone": 1}


def test_redelivery_after_a_lost_connection_is_safe():
    p = pair()
    for i in range(5):
        p.a.put("c", f"d{i}", {"i": i}, T0 + i)
    messages = p.sa.messages_to_send(T0 + 5)
    p.sb.receive(messages[0], T0 + 5)  # hello only; the changes are lost
    p.sb.messages_to_send(T0 + 5)  # B's ack is lost too
    p.connect(T0 + 6)
    p.roundtrip_until_done(T0 + 6)
    before = [p.b.get("c", f"d{i}") for i in range(5)]
    for data in messages[1:]:  # the stale messages arrive late, twice
        p.sb.receive(data, T0 + 7)
        p.sb.receive(data, T0 + 7)
    assert [p.b.get("c", f"d{i}") for i in range(5)] == before
    assert p.b.version_vector() == {"A": 5}
    assert not any(isinstance(e, ProtocolErrorOccurred) for e in drain(p.b))


def test_reconnect_sends_only_the_difference():
    p = pair()
    for i in range(200):
        p.a.put("c", f"d{i}", {"i": i}, T0)
    p.roundtrip_until_done(T0)
    p.a.patch("c", "d0", {"i": -1}, T0 + 1)
    p.connect(T0 + 2)
    first = p.sa.messages_to_send(T0 + 2)
    assert sum(map(len, first)) < 200
    for data in first:
        p.sb.receive(data, T0 + 2)
    p.roundtrip_until_done(T0 + 2)
    assert p.b.get("c", "d0") == {"i": -1}


def test_retransmit_on_timer_after_a_drop():
    p = pair()
    p.roundtrip_until_done(T0)
    p.a.put("c", "d", {"v": 1}, T0 + 1)
    assert p.sa.messages_to_send(T0 + 1)  # dropped
    assert p.sa.messages_to_send(T0 + 1) == []
    timer = p.sa.get_timer()
    assert timer == T0 + 1 + p.a.retransmit_after
    p.sa.handle_timer(timer - 1)
    assert p.sa.messages_to_send(timer - 1) == []
    p.sa.handle_timer(timer)
    transfer(p.sa, p.sb, timer)
    transfer(p.sb, p.sa, timer)
    assert p.b.get("c", "d") == {"v": 1}
    assert p.sa.get_timer() is None


def test_lost_hello_is_resent():
    p = pair()
    p.sa.messages_to_send(T0)  # lost
    timer = p.sa.get_timer()
    assert timer is not None
    p.sa.handle_timer(timer)
    assert roundtrip_until_done(p.sa, p.sb, timer) <= 4
    assert p.sa.state.value == p.sb.state.value == "syncing"


class TestQuarantine:
    def skewed_pair(self):
        a = make_replica("A")
        b = make_replica("B", max_skew=300)
        a.put("c", "d", {"v": "future"}, T0 + 1000)  # A's clock runs 1000 s ahead
        a.put("c", "d", {"v": "later"}, T0 + 1001)
        return ReplicaPair(a, b)

    def test_held_not_applied_not_acknowledged(self):
        p = self.skewed_pair()
        p.roundtrip_until_done(T0)
        assert p.b.get("c", "d") is None
        assert p.b.version_vector() == {}
        assert [c.seq for c in p.b.quarantined()["A"]] == [1, 2]
        assert p.sa.peer_version_vector() == {}
        skews = [e for e in drain(p.b) if isinstance(e, ClockSkewDetected)]
        assert len(skews) == 1
        assert (skews[0].origin, skews[0].seq) == ("A", 1)
        assert skews[0].ahead_by == pytest.approx(1000, abs=1)

    def test_applied_when_the_clock_catches_up(self):
        p = self.skewed_pair()
        p.roundtrip_until_done(T0)
        timer = p.b.get_timer()
        assert timer == pytest.approx(T0 + 700, abs=0.01)
        p.b.handle_timer(timer - 1)
        assert p.b.get("c", "d") is None
        p.b.handle_timer(timer)
        assert p.b.get("c", "d") == {"v": "future"}
        assert p.b.get_timer() == pytest.approx(timer + 1, abs=0.01)
        p.b.handle_timer(timer + 1)
        assert p.b.get("c", "d") == {"v": "later"}
        assert p.b.quarantined() == {}
        assert p.b.clock.last >= p.a.clock.last
        p.roundtrip_until_done(timer + 1)
        assert p.sa.peer_version_vector() == {"A": 2}

    def test_accepted_explicitly(self):
        p = self.skewed_pair()
        p.roundtrip_until_done(T0)
        drain(p.b)
        p.b.accept_quarantined("A", T0)
        assert p.b.get("c", "d") == {"v": "future"}
        events = drain(p.b)
        released = [e for e in events if isinstance(e, QuarantineReleased)]
        assert [(e.seq, e.accepted) for e in released] == [(1, True)]
        skews = [e for e in events if isinstance(e, ClockSkewDetected)]
        assert [e.seq for e in skews] == [2]  # next in line, still too far ahead
        p.b.accept_quarantined("A", T0)
        assert p.b.get("c", "d") == {"v": "later"}
        with pytest.raises(LocalProtocolError):
            p.b.accept_quarantined("A", T0)

    def test_bounded(self):
        a = make_replica("A")
        b = make_replica("B", quarantine_limit=3)
        for i in range(10):
            a.put("c", f"d{i}", {}, T0 + 1000)
        p = ReplicaPair(a, b)
        p.roundtrip_until_done(T0)
        assert len(b.quarantined()["A"]) == 3
        b.handle_timer(T0 + 1000)
        p.sa.handle_timer(T0 + 1000)
        p.roundtrip_until_done(T0 + 1000)
        assert b.version_vector() == {"A": 10}


class TestProtocolErrors:
    def check_closed(self, p, code):
        events = drain(p.b)
        errors = [e for e in events if isinstance(e, ProtocolErrorOccurred)]
        assert [e.code for e in errors] == [code]
        assert p.sb.closed
        out = p.sb.messages_to_send(T0)
        assert isinstance(decode(out[-1]), Close)
        assert decode(out[-1]).code == code
        p.sb.receive(b"\x01\x03\x00", T0)  # ignored once closed
        assert p.sb.messages_to_send(T0) == []

    def test_garbage(self):
        p = pair()
        p.sb.receive(b"\x00garbage", T0)
        self.check_closed(p, 3)

    def test_truncated(self):
        p = pair()
        p.sb.receive(p.sa.messages_to_send(T0)[0][:-1], T0)
        self.check_closed(p, CLOSE_BAD_MESSAGE)

    def test_a_message_before_hello_is_ignored_until_the_hello_comes(self):
        p = pair()
        p.sb.receive(b"\x01\x03\x00", T0)  # an Ack whose Hello was lost
        assert not p.sb.closed
        assert no_protocol_errors(drain(p.b))
        p.roundtrip_until_done(T0)
        assert not p.sb.closed

    def test_hello_from_another_device(self):
        p = pair()
        p.sb.receive(make_replica("Mallory").connect("B", T0).messages_to_send(T0)[0], T0)
        self.check_closed(p, CLOSE_WRONG_PEER)

    def test_close_is_reported_to_the_peer(self):
        p = pair()
        p.roundtrip_until_done(T0)
        drain(p.b)
        p.sa.close(T0, reason="bye")
        transfer(p.sa, p.sb, T0)
        assert p.sb.closed
        assert SessionClosed("A", 0, "bye", True) in drain(p.b)
        assert p.b.sessions() == {}


def test_new_session_replaces_the_old_one():
    p = pair()
    old = p.sa
    p.connect(T0)
    assert old.closed
    assert any(isinstance(e, SessionClosed) and e.code == 5 for e in drain(p.a))


def test_apply_batch_is_atomic():
    storage = MemoryStorage()
    r = make_replica("A", storage=storage)
    r.put("c", "d", {"v": 1}, T0)
    good = storage.changes_since("A", 0, 1)[0]
    before = (dict(storage.docs), {o: list(c) for o, c in storage.log.items()}, storage.clock)
    with pytest.raises(LocalProtocolError):
        storage.apply_batch(Batch([good], {("c", "x"): storage.docs[("c", "d")]}, 10**12))
    assert (storage.docs, storage.log, storage.clock) == before


def test_replica_restarts_from_storage():
    storage = MemoryStorage()
    a = make_replica("A", storage=storage)
    a.put("c", "d", {"v": 1}, T0)
    again = make_replica("A", storage=storage)
    assert again.version_vector() == {"A": 1}
    again.patch("c", "d", {"w": 2}, T0 - 100)  # the wall clock went back: HLC does not
    assert again.storage.changes_since("A", 1, 1)[0].hlc > a.clock.last
    assert again.get("c", "d") == {"v": 1, "w": 2}
