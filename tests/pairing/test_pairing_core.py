"""The pairing cores with time as an argument: offers, both handshakes, the wire."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgate.errors import RemoteProtocolError
from p2pgate.identity import Identity
from p2pgate.pairing.codes import parse_code_or_uri
from p2pgate.pairing.handshake import (
    HELLO_TIMEOUT,
    STEP_TIMEOUT,
    InviterHandshake,
    JoinerHandshake,
)
from p2pgate.pairing.offers import (
    ATTEMPTS_PER_SOURCE,
    MAX_ATTEMPTS,
    MAX_FAILURES,
    WRONG_CODE_REFILL,
    OfferBook,
    OffersChanged,
    Refusal,
)
from p2pgate.pairing.protocol import PairingIdentity
from p2pgate.pairing.wire import MAX_MESSAGE, MessageDecoder, encode

T0 = 1_000.0


def me(name):
    cert = Identity.generate().cert_der
    return lambda: PairingIdentity(cert, name, bytes(32), bytes(32))


def events(book):
    out = []
    while (e := book.next_event()) is not None:
        out.append(e)
    return out


def wire(messages):
    """What the other side decodes: the messages through the real framing."""
    return MessageDecoder().feed(b"".join(encode(m) for m in messages))


def run(inviter, joiner, now=T0):
    """Deliver messages both ways until neither side has anything to say."""
    to_inviter = joiner.start()
    for _ in range(10):
        to_joiner = [m for msg in wire(to_inviter) for m in inviter.receive(msg, now)]
        if inviter.state == "trusting":
            to_joiner += inviter.trusted(now)
        to_inviter = [m for msg in wire(to_joiner) for m in joiner.receive(msg, now)]
        if not to_inviter and not to_joiner:
            return
    raise AssertionError("the handshake did not settle in 10 rounds")


def test_offers_expire_burn_and_are_advertised_by_nameplate_only():
    book = OfferBook()
    offer = book.open(T0, ttl=60)
    assert events(book) == [OffersChanged(frozenset({offer.nameplate}))]
    assert book.get_timer() == T0 + 60
    book.handle_timer(T0 + 59.9)
    assert offer.state == "waiting"
    assert events(book) == []
    book.handle_timer(T0 + 60)
    assert offer.state == "expired"
    assert events(book) == [OffersChanged(frozenset())]
    assert book.get_timer() is None
    book.handle_timer(T0 + 60 + 600)
    assert book.offers == {}  # forgotten


def test_the_third_wrong_code_burns_and_only_one_attempt_may_prove_the_code():
    book = OfferBook()
    offer = book.open(T0, ttl=300)
    assert book.claim(offer.nameplate, T0, "a") is offer
    assert book.claim(offer.nameplate, T0, "b") is offer  # attempts run side by side ...
    assert book.proved(offer, "a") is None
    assert book.proved(offer, "b").code == "busy"  # ... but only one proves the code
    assert book.claim(offer.nameplate, T0, "c").code == "busy"  # and then it alone goes on
    book.release(offer, "a", proved=True)
    book.release(offer, "b")
    assert not offer.busy
    for n in range(1, MAX_FAILURES + 1):
        assert book.claim(offer.nameplate, T0 + n, n, f"10.0.0.{n}") is offer
        refusal = book.wrong_code(offer, T0 + n, f"10.0.0.{n}")
        book.release(offer, n)
        assert refusal.code == ("burned" if n == MAX_FAILURES else "wrong_code")
    assert offer.state == "failed"
    assert book.advertised(T0 + 10) == frozenset({offer.nameplate})  # until it expires
    assert book.claim(offer.nameplate, T0 + 10, "d") == Refusal(
        "this code burned after 3 wrong tries; make a new one", "burned")


def test_new_offers_avoid_nameplates_in_use():
    book = OfferBook()
    offer = book.open(T0, 300, avoid=set(range(1, 100)) - {42})
    assert offer.nameplate == 42
    again = book.open(T0, 300, avoid=set(range(1, 100)) - {42, 43})
    assert again.nameplate == 43  # ours are avoided too


def test_handshake_by_code_and_by_uri():
    for kind in ("code", "uri"):
        book = OfferBook()
        offer = book.open(T0, 300)
        text = offer.code if kind == "code" else (
            f"p2pgate://pair?c={offer.code}&k={offer.secret}")
        inviter = InviterHandshake(book, me("desk"), T0)
        joiner = JoinerHandshake(parse_code_or_uri(text), me("phone"), T0)
        run(inviter, joiner)
        assert (inviter.state, joiner.state) == ("done", "done")
        assert inviter.result.verification == joiner.result.verification
        assert inviter.result.k_pair == joiner.result.k_pair
        assert (inviter.result.peer.name, joiner.result.peer.name) == ("phone", "desk")
        assert offer.state == "paired"


def test_wrong_words_fail_on_both_sides_and_count_once():
    book = OfferBook()
    offer = book.open(T0, 300)
    nameplate, words = offer.code.split("-", 1)
    wrong = f"{nameplate}-" + ("fig-fox" if words == "acid-acorn" else "acid-acorn")
    inviter = InviterHandshake(book, me("desk"), T0)
    joiner = JoinerHandshake(parse_code_or_uri(wrong), me("phone"), T0)
    run(inviter, joiner)
    assert joiner.failure.code == "wrong_code"
    assert inviter.failure.code == "wrong_code"
    assert inviter.result is None
    assert joiner.result is None
    inviter.release()
    assert (offer.failures, offer.busy, offer.state) == (1, False, "waiting")


def test_a_silent_peer_fails_the_step_at_its_deadline():
    book = OfferBook()
    offer = book.open(T0, 300)
    inviter = InviterHandshake(book, me("desk"), T0)
    joiner = JoinerHandshake(parse_code_or_uri(offer.code), me("phone"), T0)
    inviter.receive(wire(joiner.start())[0], T0 + 5)  # then the joiner goes silent
    assert inviter.get_timer() == T0 + 5 + STEP_TIMEOUT
    inviter.handle_timer(T0 + 5 + STEP_TIMEOUT - 0.1)
    assert inviter.state == "confirm"
    inviter.handle_timer(T0 + 5 + STEP_TIMEOUT)
    assert inviter.state == "failed"
    assert inviter.get_timer() is None
    inviter.release()
    assert offer.busy is False
    assert offer.failures == 0  # silence is no guess


@pytest.mark.parametrize("msg", [{"t": "confirm", "confirm": "AAAA"}, {"t": "hello"},
                                 {"t": "hello", "nameplate": "x"},
                                 {"t": "hello", "nameplate": 1, "pake": "not base64!"}])
def test_a_peer_that_breaks_the_protocol_ends_the_handshake_cleanly(msg):
    book = OfferBook()
    offer = book.open(T0, 300)
    if "nameplate" in msg and msg["nameplate"] == 1:
        msg = {**msg, "nameplate": offer.nameplate}
    inviter = InviterHandshake(book, me("desk"), T0)
    inviter.receive(msg, T0)
    assert inviter.state == "failed"
    inviter.release()
    assert offer.busy is False


def test_wire_decoder_reassembles_and_refuses_junk():
    data = encode({"t": "pake", "pake": b"\x00\x01"}) + encode({"t": "done"})
    decoder = MessageDecoder()
    got = [m for i in range(len(data)) for m in decoder.feed(data[i:i + 1])]
    assert got == [{"t": "pake", "pake": "AAE="}, {"t": "done"}]
    for junk in (b"\x00\x00\x00\x02[]", b"\x00\x00\x00\x01{",
                 (MAX_MESSAGE + 1).to_bytes(4, "big")):
        with pytest.raises(RemoteProtocolError):
            MessageDecoder().feed(junk)


@pytest.mark.parametrize("raw", [b'{"t": "hello", "nameplate": 1e400, "kind": "code"}',
                                 b'{"t": "hello", "nameplate": {}}',
                                 b'{"t": "hello", "nameplate": [1]}',
                                 b'{"t": "hello", "nameplate": true, "kind": "code", "pake": ""}',
                                 b'{"t": "hello", "nameplate": 7, "kind": ["code"]}',
                                 b"[" * 5000 + b"]" * 5000])
def test_hostile_hellos_end_in_a_protocol_error_and_nothing_else(raw):
    book = OfferBook()
    inviter = InviterHandshake(book, me("desk"), T0)
    try:
        messages = MessageDecoder().feed(len(raw).to_bytes(4, "big") + raw)
    except RemoteProtocolError:
        return  # refused by the decoder: fine
    for msg in messages:
        inviter.receive(msg, T0)  # must not raise
    assert inviter.state == "failed"


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids),
                    max_leaves=20),
       st.sampled_from(["hello", "confirm", "sealed", "fail", "done", None]))
def test_any_message_either_moves_the_handshake_or_fails_it(value, t):
    book = OfferBook()
    offer = book.open(T0, 300)
    inviter = InviterHandshake(book, me("desk"), T0)
    joiner = JoinerHandshake(parse_code_or_uri(offer.code), me("phone"), T0)
    junk = {"t": t, "nameplate": value, "kind": value, "pake": value, "confirm": value,
            "sealed": value, "reason": value, "code": value}
    for side in (inviter, joiner):
        side.receive(dict(junk), T0)  # never raises
        assert side.state in ("failed", "hello", "pake")
    inviter.release()
    assert offer.busy is False
    assert offer.failures == 0


def test_a_peers_reason_is_shown_printable_and_short():
    book = OfferBook()
    offer = book.open(T0, 300)
    joiner = JoinerHandshake(parse_code_or_uri(offer.code), me("phone"), T0)
    joiner.receive({"t": "fail", "reason": "\x1b[2J" + "x" * 500, "code": "\x07"}, T0)
    assert str(joiner.failure) == "?[2J" + "x" * 196
    assert joiner.failure.code == "?"


def test_one_source_cannot_burn_offers_faster_than_one_per_offer_lifetime():
    book = OfferBook()
    first, second = book.open(T0, 300), book.open(T0, 300)
    for n in range(MAX_FAILURES):  # the designed bound: three wrong codes burn an offer
        assert book.claim(first.nameplate, T0 + n, n, "10.0.0.66") is first
        book.wrong_code(first, T0 + n, "10.0.0.66")
        book.release(first, n)
    assert first.state == "failed"
    refused = book.claim(second.nameplate, T0 + 3, "x", "10.0.0.66")  # no guess left ...
    assert isinstance(refused, Refusal)
    assert "too many wrong codes from this address" in refused.reason
    assert second.failures == 0  # ... and the refusal costs the offer nothing
    assert book.claim(second.nameplate, T0 + 3, "y", "10.0.0.7") is second  # others go on
    book.release(second, "y")
    later = T0 + 2 + WRONG_CODE_REFILL  # one guess earned back per WRONG_CODE_REFILL
    assert book.claim(second.nameplate, later, "z", "10.0.0.66") is second
    book.wrong_code(second, later, "10.0.0.66")
    book.release(second, "z")
    assert isinstance(book.claim(second.nameplate, later + 1, "w", "10.0.0.66"), Refusal)
    assert MAX_FAILURES * WRONG_CODE_REFILL == 300  # one burned offer per default lifetime


def test_one_source_holds_few_attempts_and_the_real_joiner_still_pairs():
    book = OfferBook()
    offer = book.open(T0, 300)
    silent = []
    for _ in range(ATTEMPTS_PER_SOURCE + 3):  # a stranger's valid hellos, then silence
        shake = InviterHandshake(book, me("desk"), T0, "10.0.0.66")
        shake.receive(wire(JoinerHandshake(parse_code_or_uri(f"{offer.nameplate}-fig-fox"),
                                           me("evil"), T0).start())[0], T0)
        silent.append(shake)
    assert [s.state for s in silent].count("confirm") == ATTEMPTS_PER_SOURCE
    assert {s.failure.code for s in silent if s.failure} == {"busy"}
    inviter = InviterHandshake(book, me("desk"), T0 + 1, "10.0.0.7")
    joiner = JoinerHandshake(parse_code_or_uri(offer.code), me("phone"), T0 + 1)
    run(inviter, joiner, T0 + 1)
    assert joiner.state == inviter.state == "done"
    assert offer.state == "paired"
    assert offer.failures == 0


def test_the_first_message_is_due_within_seconds():
    book = OfferBook()
    book.open(T0, 300)
    inviter = InviterHandshake(book, me("desk"), T0, "10.0.0.66")
    assert inviter.get_timer() == T0 + HELLO_TIMEOUT <= T0 + 5
    inviter.handle_timer(T0 + HELLO_TIMEOUT)
    assert inviter.state == "failed"
    assert STEP_TIMEOUT <= 10  # no step waits for a person


def test_strangers_filling_an_offer_are_pushed_out_by_the_real_joiner():
    book = OfferBook()
    offer = book.open(T0, 300)
    strangers = []
    for n in range(MAX_ATTEMPTS):  # silent valid hellos from several addresses fill it
        shake = InviterHandshake(book, me("desk"), T0, f"10.0.0.{60 + n // 2}")
        shake.receive(wire(JoinerHandshake(parse_code_or_uri(f"{offer.nameplate}-fig-fox"),
                                           me("evil"), T0).start())[0], T0)
        strangers.append(shake)
    assert len(offer.attempts) == MAX_ATTEMPTS
    inviter = InviterHandshake(book, me("desk"), T0 + 1, "10.0.0.7")
    joiner = JoinerHandshake(parse_code_or_uri(offer.code), me("phone"), T0 + 1)
    run(inviter, joiner, T0 + 1)
    assert joiner.state == inviter.state == "done"
    oldest = strangers[0]  # pushed out: its late proof is refused unchecked, no guess
    oldest.receive({"t": "confirm", "confirm": "AAAA"}, T0 + 2)
    assert oldest.failure.code == "busy"
    assert offer.failures == 0
