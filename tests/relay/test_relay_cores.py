"""The relay's sans-I/O cores, with time passed in: rendezvous, limits, login, broker
(pairing mailboxes: test_relay_mailbox_core.py)."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pgate.identity import Identity
from p2pgate.ratelimit import ByteBucket
from p2pgate.relay.access_tokens import issue_token, key_id, public_key_text
from p2pgate.relay.auth import (
    AuthRefused,
    certificate_key,
    check_access,
    login_message,
    verify_login,
)
from p2pgate.relay.broker import Broker
from p2pgate.relay.limits import IpAdmission, Throughput, client_ip
from p2pgate.relay.relay_key import RelayKey
from p2pgate.relay.rendezvous import Expired, SpliceMatcher

# -- splice matching ---------------------------------------------------------------------


def test_the_second_half_of_a_splice_meets_the_first():
    splices: SpliceMatcher[str] = SpliceMatcher(wait=30.0)
    assert splices.arrive("sid", "side a", now=0.0) is None
    assert splices.get_timer() == 30.0
    assert splices.arrive("other", "side x", now=1.0) is None
    assert splices.arrive("sid", "side b", now=2.0) == "side a"
    assert len(splices) == 1  # only "other" still waits
    assert splices.handle_timer(30.5) == []  # the matched one does not expire


def test_a_lone_half_expires_at_its_deadline_not_before():
    splices: SpliceMatcher[str] = SpliceMatcher(wait=30.0)
    splices.arrive("sid", "side a", now=10.0)
    assert splices.handle_timer(39.9) == []
    assert splices.handle_timer(40.0) == [Expired("sid", "side a")]
    assert splices.get_timer() is None
    assert splices.arrive("sid", "side b", now=41.0) is None  # too late: it waits alone


def test_a_half_that_left_is_not_matched():
    splices: SpliceMatcher[str] = SpliceMatcher(wait=30.0)
    splices.arrive("sid", "side a", now=0.0)
    splices.leave("sid", "someone else")  # not the waiter: no effect
    assert len(splices) == 1
    splices.leave("sid", "side a")
    assert splices.arrive("sid", "side b", now=1.0) is None
    assert splices.handle_timer(30.0) == []  # the stale deadline of side a is skipped


# -- per-IP admission and bytes per second ---------------------------------------------


def test_ip_admission_counts_open_connections_and_the_accept_rate():
    admission = IpAdmission(max_connections=2, accept_rate=1.0)
    assert admission.admit("10.0.0.1", now=0.0) is None
    assert admission.admit("10.0.0.1", now=0.0) == "ip_accept_rate"  # burst of 1
    assert admission.admit("10.0.0.1", now=1.0) is None
    assert admission.admit("10.0.0.1", now=5.0) == "ip_connections"
    assert admission.admit("10.0.0.2", now=5.0) is None  # per IP
    admission.release("10.0.0.1")
    assert admission.open_connections("10.0.0.1") == 1
    assert admission.admit("10.0.0.1", now=5.0) is None


def test_forwarded_for_is_believed_from_trusted_proxies_only():
    trusted = ("10.1.0.0/16",)
    assert client_ip("10.1.2.3", "198.51.100.7, 203.0.113.9", trusted) == "203.0.113.9"
    assert client_ip("192.0.2.1", "203.0.113.9", trusted) == "192.0.2.1"
    assert client_ip("10.1.2.3", None, trusted) == "10.1.2.3"
    assert client_ip("?", "203.0.113.9", trusted) == "?"


def _send_for(meter_delay, seconds: float, chunk: int) -> int:
    """Bytes a sender gets through in `seconds` of simulated time, waiting as told."""
    now, sent = 0.0, 0
    while now < seconds:
        sent += chunk
        now += meter_delay(chunk, now)
    return sent


def test_a_byte_bucket_holds_its_rate_over_simulated_seconds():
    rate = 256 << 10
    for chunk in (1000, 16 << 10, 64 << 10):
        sent = _send_for(ByteBucket(rate).delay, 20.0, chunk)
        assert 0.99 * rate * 20 <= sent <= 1.01 * rate * 20 + rate * 0.05 + chunk, chunk


def test_a_byte_bucket_lets_a_short_burst_through_and_refills_when_idle():
    bucket = ByteBucket(1000.0, burst=0.05)
    assert bucket.delay(50, now=0.0) == 0.0  # 50 ms worth passes at once
    assert bucket.delay(100, now=0.0) == pytest.approx(0.1)
    assert bucket.delay(10, now=10.0) == 0.0  # drained while idle


def test_a_flooding_session_is_held_to_its_own_rate_and_starves_nobody():
    rate = 512 << 10
    throughput = Throughput(session_rate=rate, global_rate=8 * rate)
    flood, quiet = throughput.meter(), throughput.meter()
    now, quiet_sent = 0.0, 0
    quiet_ready = flood_ready = 0.0
    while now < 10.0:  # the flood writes whenever allowed, the quiet session too
        if flood_ready <= now:
            flood_ready = now + flood.delay(64 << 10, now)
        if quiet_ready <= now:
            quiet_sent += 16 << 10
            quiet_ready = now + quiet.delay(16 << 10, now)
        now = min(flood_ready, quiet_ready)
    assert quiet_sent >= 0.95 * rate * 10


def _run_meters(meters, start: float, seconds: float, chunk: int) -> int:
    """Bytes all `meters` together get through from `start` for `seconds` (simulated)."""
    ready = [start] * len(meters)
    now, sent = start, 0
    while now < start + seconds:
        for i, meter in enumerate(meters):
            if ready[i] <= now:
                sent += chunk
                ready[i] = now + meter.delay(chunk, now)
        now = min(ready)
    return sent


def test_the_global_rate_bounds_all_sessions_together_and_reloads_at_once():
    rate = 100_000
    throughput = Throughput(session_rate=rate, global_rate=rate)
    meters = [throughput.meter() for _ in range(4)]
    sent = _run_meters(meters, 0.0, 10.0, 10_000)
    assert 0.95 * rate * 10 <= sent <= 1.05 * rate * 10 + 4 * 10_000
    throughput.set_rates(rate, 2 * rate)  # a reload raises the global rate for everyone
    sent = _run_meters(meters, 20.0, 10.0, 10_000)
    assert 0.95 * 2 * rate * 10 <= sent <= 1.05 * 2 * rate * 10 + 4 * 10_000


# -- login ------------------------------------------------------------------------------

URL, NONCE, NOW = "wss://relay.example", "nonce-123", 1_800_000_000.0
KEY = RelayKey.generate().public_raw


def _login(identity: Identity, *, url: str = URL, nonce: str = NONCE, now: float = NOW,
           token: str | None = None) -> dict:
    return login_message(identity.cert_der, identity.sign, url, KEY, nonce, now, token)


def test_a_signed_login_names_the_device_within_the_freshness_window():
    ident = Identity.generate()
    for skew in (-86_400, 0, 86_400):
        device = verify_login(_login(ident, now=NOW + skew), URL, KEY, NONCE, NOW, 86_400.0)
        assert device == ident.device_id
    for skew in (-86_401, 86_401):
        with pytest.raises(AuthRefused) as err:
            verify_login(_login(ident, now=NOW + skew), URL, KEY, NONCE, NOW, 86_400.0)
        assert err.value.reason == "clock"


@pytest.mark.parametrize(("change", "reason"), [
    ({"url": "ws://another-relay"}, "wrong_url"),
    ({"nonce": "an-old-nonce"}, "bad_signature"),
])
def test_a_login_for_another_relay_or_connection_is_refused(change, reason):
    message = _login(Identity.generate(), **change)
    with pytest.raises(AuthRefused) as err:
        verify_login(message, URL, KEY, NONCE, NOW, 60.0)
    assert err.value.reason == reason


def test_a_signature_by_another_key_or_a_tampered_time_is_refused():
    ident, other = Identity.generate(), Identity.generate()
    forged = _login(ident)
    forged["sig"] = _login(other)["sig"]
    tampered = _login(ident)
    tampered["time"] += 1
    for message in (forged, tampered):
        with pytest.raises(AuthRefused) as err:
            verify_login(message, URL, KEY, NONCE, NOW, 60.0)
        assert err.value.reason == "bad_signature"


def test_malformed_logins_and_certificates_are_refused_with_their_reason():
    good = _login(Identity.generate())
    cases = {"malformed": [{}, {**good, "t": "hello"}, {**good, "cert": "not base64!"},
                           {**good, "time": "noon"}, {k: v for k, v in good.items()
                                                      if k != "sig"}],
             "bad_certificate": [{**good, "cert": base64.b64encode(b"\x30\x03abc").decode()},
                                 {**good, "cert": base64.b64encode(b"junk").decode()}]}
    for reason, messages in cases.items():
        for message in messages:
            with pytest.raises(AuthRefused) as err:
                verify_login(message, URL, KEY, NONCE, NOW, 60.0)
            assert err.value.reason == reason, message


def test_the_certificate_key_is_the_one_that_signs():
    ident = Identity.generate()
    certificate_key(ident.cert_der).verify(ident.sign(b"x"), b"x")
    der = bytearray(ident.cert_der)
    for cut in (1, 10, len(der) // 2):
        with pytest.raises(AuthRefused):
            certificate_key(bytes(der[:-cut]))


def test_access_rules_allowlist_and_tokens():
    ident, stranger = Identity.generate(), Identity.generate()
    rules = {"access": "allowlist", "allowlist": (str(ident.device_id),), "token_keys": {},
             "audience": "fleet", "now": NOW}
    check_access(ident.device_id, None, **rules)
    with pytest.raises(AuthRefused) as err:
        check_access(stranger.device_id, None, **rules)
    assert err.value.reason == "not_allowed"
    signer = Ed25519PrivateKey.generate()
    keys = {key_id(signer.public_key()): public_key_text(signer.public_key())}
    rules = {**rules, "access": "token", "token_keys": keys}
    check_access(ident.device_id, issue_token(signer, ident.device_id, "fleet", 60, NOW),
                 **rules)
    for token, reason in ((None, "token_missing"), ("x.y", "token_malformed"),
                          (issue_token(signer, ident.device_id, "fleet", 60, NOW - 600),
                           "token_expired"),
                          (issue_token(signer, stranger.device_id, "fleet", 60, NOW),
                           "token_wrong_device")):
        with pytest.raises(AuthRefused) as err:
            check_access(ident.device_id, token, **rules)
        assert err.value.reason == reason
    check_access(stranger.device_id, None, **{**rules, "access": "open"})


# -- the broker ---------------------------------------------------------------------------


def test_absent_and_refusing_devices_are_answered_alike_at_the_deadline():
    a, b, absent = (Identity.generate().device_id for _ in range(3))
    broker = Broker(unavailable_delay=1.0, invite_rate=100, max_sessions_per_device=4)
    broker.attach(a)
    broker.attach(b)
    [invite] = broker.request(a, b, 1, now=0.0)
    assert broker.answer(b, str(invite.message["sid"]), False, now=0.0) == []  # refused: silent
    assert broker.request(a, absent, 2, now=0.0) == []
    assert broker.get_timer() == 1.0
    assert broker.handle_timer(0.99) == []  # never earlier than the deadline
    answers = broker.handle_timer(1.0)
    assert sorted((s.message for s in answers), key=lambda m: m["req"]) == [
        {"t": "unavailable", "req": 1}, {"t": "unavailable", "req": 2}]
    assert {s.to for s in answers} == {a}


def test_invitations_are_rate_limited_per_requester_and_target():
    a, b = Identity.generate().device_id, Identity.generate().device_id
    broker = Broker(unavailable_delay=1.0, invite_rate=1.0, max_sessions_per_device=99)
    broker.attach(a)
    broker.attach(b)
    invited = [len(broker.request(a, b, n, now=0.0)) for n in range(4)]
    assert invited == [1, 1, 0, 0]  # a burst of 2, then nothing until refilled
    assert len(broker.request(a, b, 9, now=1.0)) == 1

