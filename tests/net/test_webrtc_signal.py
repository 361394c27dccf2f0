"""The sealed signalling core: what the relay cannot read, forge, redirect or replay."""

from __future__ import annotations

import base64
import copy
import hashlib
import json

import pytest

from p2pgate.errors import LocalProtocolError, RemoteProtocolError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.net.rtc_signal import (
    ATTEMPT_DEADLINE,
    FRESHNESS,
    Answered,
    AttemptState,
    Ended,
    Offered,
    RtcSignaller,
    Superseded,
    offer_wins,
    open_sealed,
    seal,
    signal_key,
)

K = b"k" * 32
SDP = "v=0\r\na=candidate:1 1 udp 2130706431 192.168.1.20 40000 typ host\r\n"
WALL = 1_800_000_000.0


def device(name: str) -> DeviceID:
    return DeviceID(hashlib.sha256(name.encode()).digest())


A, B, C = sorted((device("a"), device("b"), device("c")))  # A < B < C


def pair(k_ab: bytes = K) -> tuple[RtcSignaller, RtcSignaller]:
    keys = {frozenset((A, B)): k_ab, frozenset((A, C)): b"c" * 32}
    return (RtcSignaller(A, lambda p: keys.get(frozenset((A, p)))),
            RtcSignaller(B, lambda p: keys.get(frozenset((B, p)))))


def test_offer_and_answer_open_on_the_other_side_only():
    a, b = pair()
    attempt, offer = a.offer(B, SDP, 0.0, WALL)
    assert "192.168" not in json.dumps(offer)  # the relay reads no LAN address
    offered = b.receive(A, offer, 0.1, WALL + 0.1)
    assert isinstance(offered, Offered) and offered.sdp == SDP
    answer = b.answered(offered.attempt, "answer sdp", WALL + 0.2)
    answered = a.receive(B, answer, 0.3, WALL + 0.3)
    assert isinstance(answered, Answered) and answered.sdp == "answer sdp"
    assert answered.attempt is attempt and attempt.state is AttemptState.CONNECTING
    a.connected(attempt)
    b.connected(offered.attempt)
    assert a.attempts == b.attempts == {}


def test_the_key_is_derived_from_k_pair_not_k_pair_itself():
    assert signal_key(K) != K and len(signal_key(K)) == 32
    assert signal_key(K) != signal_key(b"j" * 32)


@pytest.mark.parametrize("field", ["box", "nonce"])
def test_a_tampered_message_does_not_open(field):
    a, b = pair()
    _, offer = a.offer(B, SDP, 0.0, WALL)
    raw = bytearray(base64.b64decode(offer[field]))
    raw[3] ^= 1
    offer[field] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(RemoteProtocolError, match="does not open"):
        b.receive(A, offer, 0.1, WALL)
    assert b.attempts == {}


def test_relabelled_kind_or_attempt_does_not_open():
    a, b = pair()
    attempt, offer = a.offer(B, SDP, 0.0, WALL)
    b.receive(A, offer, 0.1, WALL)
    answer = b.answered(b.attempts[A], "answer", WALL)
    as_bye = {**answer, "kind": "bye"}
    with pytest.raises(RemoteProtocolError, match="does not open"):
        a.receive(B, as_bye, 0.2, WALL)
    other_attempt = {**offer, "attempt": "00" * 16}
    with pytest.raises(RemoteProtocolError, match="does not open"):
        b.receive(A, other_attempt, 0.2, WALL)
    assert attempt.state is AttemptState.OFFERING  # nothing changed


def test_a_message_for_another_receiver_is_refused():
    a, _ = pair()
    c = RtcSignaller(C, lambda p: K)  # even one that shares the same K_pair
    _, offer = a.offer(B, SDP, 0.0, WALL)
    with pytest.raises(RemoteProtocolError, match="another device"):
        c.receive(A, offer, 0.1, WALL)
    forged_to = {**offer, "to": str(C)}  # the relay rewrites the receiver
    with pytest.raises(RemoteProtocolError, match="does not open"):
        c.receive(A, forged_to, 0.1, WALL)


def test_a_message_reflected_to_its_sender_is_refused():
    a, _ = pair()
    _, offer = a.offer(B, SDP, 0.0, WALL)
    with pytest.raises(RemoteProtocolError):
        a.receive(B, offer, 0.1, WALL)


def test_a_wrong_k_pair_does_not_open_and_an_untrusted_sender_is_refused():
    a, _ = pair(k_ab=K)
    _, b = pair(k_ab=b"x" * 32)
    _, offer = a.offer(B, SDP, 0.0, WALL)
    with pytest.raises(RemoteProtocolError, match="does not open"):
        b.receive(A, offer, 0.1, WALL)
    stranger = RtcSignaller(C, lambda p: K)
    _, offer = stranger.offer(B, SDP, 0.0, WALL)
    with pytest.raises(RemoteProtocolError, match="untrusted"):
        b.receive(C, offer, 0.1, WALL)


def test_a_replayed_offer_answer_or_bye_is_refused():
    a, b = pair()
    attempt, offer = a.offer(B, SDP, 0.0, WALL)
    offered = b.receive(A, offer, 0.1, WALL)
    with pytest.raises(RemoteProtocolError, match="replayed"):
        b.receive(A, copy.deepcopy(offer), 0.2, WALL)
    answer = b.answered(offered.attempt, "answer", WALL)
    a.receive(B, answer, 0.3, WALL)
    with pytest.raises(RemoteProtocolError, match="out of turn"):
        a.receive(B, answer, 0.4, WALL)
    a.connected(attempt)
    b.connected(offered.attempt)
    with pytest.raises(RemoteProtocolError, match="replayed"):  # after the attempt is done
        b.receive(A, offer, 5.0, WALL + 5)
    with pytest.raises(RemoteProtocolError, match="no attempt"):
        a.receive(B, answer, 5.0, WALL + 5)
    bye = b.bye(b.receive(A, a.offer(B, SDP, 6.0, WALL + 6)[1], 6.1, WALL + 6).attempt,
                WALL + 6)
    assert isinstance(a.receive(B, bye, 6.2, WALL + 6), Ended)
    with pytest.raises(RemoteProtocolError, match="no attempt"):
        a.receive(B, bye, 6.3, WALL + 6)


def test_an_offer_replayed_after_a_restart_is_refused_as_stale():
    a, b = pair()
    _, offer = a.offer(B, SDP, 0.0, WALL)
    _, b_restarted = pair()
    with pytest.raises(RemoteProtocolError, match="stale"):
        b_restarted.receive(A, offer, 0.0, WALL + FRESHNESS + 1)
    assert isinstance(b_restarted.receive(A, offer, 0.0, WALL + FRESHNESS - 1), Offered)


def test_the_lower_device_id_offer_wins():
    assert offer_wins(A, B) and not offer_wins(B, A)
    assert not offer_wins(A, A)
    ids = [device(str(i)) for i in range(20)]
    for x in ids:
        for y in ids:
            if x != y:
                assert offer_wins(x, y) != offer_wins(y, x)  # exactly one side wins


def test_simultaneous_offers_end_on_the_lower_id_s_attempt():
    a, b = pair()
    mine, a_offer = a.offer(B, "sdp of a", 0.0, WALL)
    theirs, b_offer = b.offer(A, "sdp of b", 0.0, WALL)
    assert a.receive(B, b_offer, 0.1, WALL) is None  # A is lower: its own offer stands
    assert a.attempts[B] is mine
    outcome = b.receive(A, a_offer, 0.1, WALL)
    assert isinstance(outcome, Superseded)
    assert outcome.ended.attempt is theirs and outcome.offered.sdp == "sdp of a"
    answer = b.answered(outcome.offered.attempt, "answer", WALL)
    assert isinstance(a.receive(B, answer, 0.2, WALL), Answered)


def test_an_attempt_has_a_ten_second_deadline():
    a, b = pair()
    attempt, offer = a.offer(B, SDP, 100.0, WALL)
    assert attempt.deadline == 100.0 + ATTEMPT_DEADLINE == a.next_deadline()
    assert a.expire(109.9) == []
    ended = a.expire(110.0)
    assert [e.attempt for e in ended] == [attempt] and a.attempts == {}
    offered = b.receive(A, offer, 100.1, WALL)
    answer = b.answered(offered.attempt, "answer", WALL)
    with pytest.raises(RemoteProtocolError, match="no attempt"):  # the answer came too late
        a.receive(B, answer, 110.5, WALL + 10.5)
    b.expire(110.2)
    assert b.attempts == {}
    a.offer(B, SDP, 111.0, WALL + 11)  # a new attempt may start


@pytest.mark.parametrize("data", [
    None, [], "offer", {"v": 2}, {"v": 1, "kind": "hello"},
    {"v": 1, "kind": "offer", "to": "x"},
    {"v": 1, "kind": "offer", "to": str(B), "attempt": "zz", "nonce": "", "box": ""},
    {"v": 1, "kind": "offer", "to": str(B), "attempt": "00" * 16, "nonce": "!!", "box": ""},
    {"v": 1, "kind": "offer", "to": str(B), "attempt": "00" * 8, "nonce": "AAAA", "box": ""},
])
def test_malformed_signals_raise_our_protocol_error(data):
    _, b = pair()
    with pytest.raises(RemoteProtocolError):
        b.receive(A, data, 0.0, WALL)


def test_a_sealed_body_that_is_not_ours_is_refused():
    data = seal(signal_key(K), A, B, "offer", b"\x01" * 16, SDP, WALL)
    assert open_sealed(signal_key(K), A, B, data, WALL).sdp == SDP
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from p2pgate.net import rtc_signal
    nonce = b"\x00" * 12
    box = ChaCha20Poly1305(signal_key(K)).encrypt(
        nonce, b"not json", rtc_signal._ad(A, B, b"\x01" * 16, "offer"))
    data |= {"nonce": base64.b64encode(nonce).decode(), "box": base64.b64encode(box).decode()}
    with pytest.raises(RemoteProtocolError, match="malformed"):
        open_sealed(signal_key(K), A, B, data, WALL)


def test_an_offer_met_while_ours_is_still_gathering_meets_the_tie_break():
    a, b = pair()
    mine = a.begin(B, 0.0)  # A gathers: no offer of ours exists yet
    _, b_offer = b.offer(A, "sdp of b", 0.0, WALL)
    assert a.receive(B, b_offer, 0.1, WALL) is None  # A is lower: its coming offer stands
    outcome = b.receive(A, a.offered(mine, "sdp of a", WALL), 0.2, WALL)
    assert isinstance(outcome, Superseded) and outcome.offered.sdp == "sdp of a"

    a, b = pair()
    gathering = b.begin(A, 0.0)  # now the higher side gathers
    _, a_offer = a.offer(B, "sdp of a", 0.0, WALL)
    outcome = b.receive(A, a_offer, 0.1, WALL)
    assert isinstance(outcome, Superseded) and outcome.ended.attempt is gathering
    with pytest.raises(LocalProtocolError):
        b.offered(gathering, "sdp of b", WALL)  # its offer never goes out
    assert b.bye(gathering, WALL) is None


def test_a_bye_is_only_sent_for_an_attempt_the_peer_heard_of():
    a, _ = pair()
    attempt = a.begin(B, 0.0)
    assert a.bye(attempt, WALL) is None and a.attempts == {}
    attempt, _ = a.offer(B, SDP, 1.0, WALL)
    assert a.bye(attempt, WALL)["kind"] == "bye"


def test_a_sealed_message_fits_the_relay_s_signal_limit_or_is_not_made():
    from p2pgate.net.rtc_signal import MAX_SEALED
    from p2pgate.relay.wire import MAX_SIGNAL

    assert MAX_SEALED == MAX_SIGNAL
    a, _ = pair()
    line = "a=candidate:1 1 udp 2130706431 192.168.1.20 40000 typ host\r\n"
    attempt, data = a.offer(B, line * 40, 0.0, WALL)  # forty candidates still fit
    assert len(json.dumps(data)) <= MAX_SIGNAL
    a.bye(attempt, WALL)
    with pytest.raises(LocalProtocolError, match="over 8192"):
        a.offer(B, line * 120, 1.0, WALL)
    assert a.attempts == {}
