"""The connection core, driven with numbers for time: no sockets, no sleeping."""

from __future__ import annotations

import random

import pytest

from p2pgate.connect.core import (
    CancelDials,
    CloseSession,
    ConnectionCore,
    DialDirect,
    DialRelay,
    DialWebRtc,
    PeerUnreachable,
    SessionAdopted,
    path_rank,
)
from p2pgate.identity.deviceid import DeviceID

LOW, HIGH = sorted(DeviceID(bytes([n]) * 32) for n in (1, 2))
PEER = DeviceID(bytes([3]) * 32)


def core(me=LOW, **settings):
    return ConnectionCore(me, random.Random(7), **settings)


def drain(c):
    out = []
    while (event := c.next_event()) is not None:
        out.append(event)
    return out


def linked(c, peer, path, key=1, initiated_by_us=False, now=0.0):
    c.session_established(peer, key, path, initiated_by_us, now)
    return drain(c)


def test_happy_eyeballs_dials_direct_at_once_and_the_relay_half_a_second_later():
    c = core()
    c.peers_known([(PEER, True, True)], 100.0)
    c.handle_timer(100.0)
    assert drain(c) == [DialDirect(PEER)]
    assert c.get_timer() == pytest.approx(100.5)
    c.handle_timer(100.49)
    assert drain(c) == []
    c.handle_timer(100.5)
    assert drain(c) == [DialRelay(PEER)]


def test_without_a_direct_candidate_the_relay_is_dialed_at_once():
    c = core()
    c.peers_known([(PEER, False, True)], 10.0)
    c.handle_timer(10.0)
    assert drain(c) == [DialRelay(PEER)]


def test_a_failed_direct_attempt_starts_the_relay_attempt_at_once():
    c = core()
    c.peers_known([(PEER, True, True)], 0.0)
    c.handle_timer(0.0)
    drain(c)
    c.dial_failed(PEER, "direct", 0.2)
    assert drain(c) == [DialRelay(PEER)]


def test_the_first_session_to_complete_hello_wins_and_the_other_attempt_is_cancelled():
    c = core()
    c.peers_known([(PEER, True, True)], 0.0)
    c.handle_timer(0.0)
    c.handle_timer(0.5)
    assert drain(c) == [DialDirect(PEER), DialRelay(PEER)]
    assert linked(c, PEER, "relay", key=1, initiated_by_us=True, now=0.8) == [
        CancelDials(PEER), SessionAdopted(PEER, 1, "relay", True)]
    # the cancelled direct attempt completed anyway: closed, the relay stays
    assert linked(c, PEER, "direct", key=2, initiated_by_us=True, now=0.9) == [
        CloseSession(PEER, 2, "another path won")]
    assert c.path_of(PEER) == "relay"


@pytest.mark.parametrize(("me", "kept_ours"), [(LOW, True), (HIGH, False)])
def test_simultaneous_dials_keep_the_connection_initiated_by_the_lower_device_id(me, kept_ours):
    peer = HIGH if me == LOW else LOW
    c = core(me)
    c.peers_known([(peer, True, True)], 0.0)
    c.handle_timer(0.0)
    assert drain(c) == [DialDirect(peer)]
    # the peer's dial reaches us first and is adopted; ours goes on (no relay needed)
    assert linked(c, peer, "direct", key=1, initiated_by_us=False) == [
        SessionAdopted(peer, 1, "direct", False)]
    c.handle_timer(0.5)
    assert drain(c) == []
    c.session_established(peer, 2, "direct", True, 0.6)
    if kept_ours:  # we are the lower ID: our connection wins on both sides
        assert drain(c) == [CloseSession(peer, 1, "replaced by the preferred session"),
                            SessionAdopted(peer, 2, "direct", True, moved_from="direct")]
    else:
        assert drain(c) == [CloseSession(peer, 2, "duplicate session")]
    assert c.path_of(peer) == "direct"


def test_our_failed_dial_after_the_peer_reached_us_is_not_a_failure():
    c = core()
    c.peers_known([(PEER, True, True)], 0.0)
    c.handle_timer(0.0)
    drain(c)
    linked(c, PEER, "direct", key=1)
    c.dial_failed(PEER, "direct", 0.3)
    assert drain(c) == []  # neither a relay dial nor PeerUnreachable
    assert c.get_timer() is None


def test_a_direct_session_replaces_a_relayed_one_and_not_the_other_way_round():
    c = core()
    c.peers_known([(PEER, True, True)], 0.0)
    assert linked(c, PEER, "relay", key=1) == [SessionAdopted(PEER, 1, "relay", False)]
    assert linked(c, PEER, "direct", key=2) == [
        CloseSession(PEER, 1, "replaced by the preferred session"),
        SessionAdopted(PEER, 2, "direct", False, moved_from="relay")]
    assert linked(c, PEER, "relay", key=3) == [CloseSession(PEER, 3, "a direct session exists")]
    assert c.path_of(PEER) == "direct"
    assert path_rank("direct") > path_rank("webrtc") > path_rank("relay")


def test_while_relayed_direct_paths_are_probed_every_30_s_with_jitter_and_at_once_on_a_sighting():
    c = core(probe_every=30.0)
    c.peers_known([(PEER, True, True)], 0.0)
    linked(c, PEER, "relay", key=1, now=0.0)
    probes = []
    now = 0.0
    for _ in range(40):
        now = c.get_timer()
        assert now is not None
        c.handle_timer(now)
        assert drain(c) == [DialDirect(PEER, probe=True)]
        c.dial_failed(PEER, "direct", now)
        assert drain(c) == []  # a failed probe changes nothing; the relay stays
        probes.append(now)
    gaps = [b - a for a, b in zip([0.0, *probes], probes, strict=False)]
    assert all(24.0 <= g <= 36.0 for g in gaps), gaps
    assert len({round(g, 3) for g in gaps}) > 10  # jittered, not a fixed period
    c.peer_discovered(PEER, ["10.0.0.2:7771"], now + 1.0)
    assert c.get_timer() == now + 1.0
    c.handle_timer(now + 1.0)
    assert drain(c) == [DialDirect(PEER, probe=True)]
    assert linked(c, PEER, "direct", key=2, initiated_by_us=True, now=now + 1.2) == [
        CloseSession(PEER, 1, "replaced by the preferred session"),
        SessionAdopted(PEER, 2, "direct", True, moved_from="relay")]
    assert c.get_timer() is None  # direct: no more probes


def test_a_session_that_ends_is_redialed_at_once_then_with_backoff():
    c = core(redial=5.0, max_redial=30.0)
    c.peers_known([(PEER, True, False)], 0.0)
    linked(c, PEER, "direct", key=1)
    c.session_ended(PEER, 1, 50.0)
    assert c.get_timer() == 50.0
    now, waits = 50.0, []
    for _ in range(6):
        c.handle_timer(now)
        assert drain(c)[0] == DialDirect(PEER)
        c.dial_failed(PEER, "direct", now)
        unreachable = drain(c)
        assert unreachable == [PeerUnreachable(PEER, c.get_timer(), ("direct",))]
        waits.append(c.get_timer() - now)
        now = c.get_timer()
    assert waits == [5.0, 10.0, 20.0, 30.0, 30.0, 30.0]
    # a session resets the backoff
    linked(c, PEER, "direct", key=2, now=now)
    c.session_ended(PEER, 2, now + 1)
    c.handle_timer(now + 1)
    drain(c)
    c.dial_failed(PEER, "direct", now + 1)
    assert drain(c) == [PeerUnreachable(PEER, now + 6, ("direct",))]


def test_an_old_session_ending_does_not_unlink_the_new_one():
    c = core()
    c.peers_known([(PEER, True, True)], 0.0)
    linked(c, PEER, "relay", key=1)
    linked(c, PEER, "direct", key=2)
    c.session_ended(PEER, 1, 1.0)
    assert c.path_of(PEER) == "direct"
    c.handle_timer(1.0)
    assert drain(c) == []


def test_a_relay_reconnecting_makes_unreachable_peers_due_now():
    c = core()
    c.peers_known([(PEER, False, True)], 0.0)
    c.handle_timer(0.0)
    drain(c)
    c.dial_failed(PEER, "relay", 0.1)
    drain(c)
    assert c.get_timer() == pytest.approx(5.1)
    c.paths_changed(1.0)
    assert c.get_timer() == 1.0
    c.handle_timer(1.0)
    assert drain(c) == [DialRelay(PEER)]


def test_a_peer_no_longer_trusted_is_forgotten():
    c = core()
    c.peers_known([(PEER, True, False)], 0.0)
    c.peers_known([], 0.0)
    c.handle_timer(0.0)
    assert drain(c) == []
    assert c.get_timer() is None


# -- suspect paths: alternatives start at once, the first to complete takes over -------------

def direct_linked(me=LOW, key=1):
    c = core(me)
    c.peers_known([(PEER, True, True)], 0.0)
    c.handle_timer(0.0)
    drain(c)
    c.session_established(PEER, key, "direct", True, 0.1)
    drain(c)
    return c


def test_a_suspect_session_starts_every_alternative_at_once_and_the_first_wins_any_rank():
    c = direct_linked()
    c.session_suspect(PEER, 1, 50.0)
    assert drain(c) == [DialDirect(PEER, replaces=1), DialRelay(PEER, replaces=1)]
    assert c.is_suspect(PEER)
    c.session_suspect(PEER, 1, 50.5)  # once per suspicion
    assert drain(c) == []
    c.session_established(PEER, 2, "relay", True, 50.6)  # the relay beats the dead direct
    assert drain(c) == [CancelDials(PEER), CloseSession(PEER, 1, "replaced: suspect path"),
                        SessionAdopted(PEER, 2, "relay", True, "direct", "suspect path")]
    assert c.path_of(PEER) == "relay" and not c.is_suspect(PEER)


def test_a_recovered_session_stays_and_a_late_relay_then_loses_by_rank():
    c = direct_linked()
    c.session_suspect(PEER, 1, 50.0)
    drain(c)
    c.session_recovered(PEER, 1, 50.3)
    assert not c.is_suspect(PEER)
    c.dial_failed(PEER, "direct", 50.4)
    c.dial_failed(PEER, "relay", 51.0)
    assert drain(c) == []
    assert c.path_of(PEER) == "direct"


def test_the_peer_moves_when_told_which_of_its_sessions_is_replaced():
    # our side of the dead path looks fine (we were not sending): the peer's word counts
    c = core(HIGH)
    c.peers_known([(PEER, True, True)], 0.0)
    assert linked(c, PEER, "direct", key=1, initiated_by_us=False)[-1].path == "direct"
    c.session_established(PEER, 2, "relay", False, 9.0, replaces=1)
    assert drain(c) == [CloseSession(PEER, 1, "replaced: the peer lost its path"),
                        SessionAdopted(PEER, 2, "relay", False, "direct",
                                       "the peer lost its path")]


def test_without_naming_our_session_a_worse_path_from_the_peer_is_still_refused():
    c = core(HIGH)
    c.peers_known([(PEER, True, True)], 0.0)
    linked(c, PEER, "direct", key=1)
    c.session_established(PEER, 2, "relay", False, 9.0, replaces=77)  # some older session
    assert drain(c) == [CloseSession(PEER, 2, "a direct session exists")]


def test_a_replacement_completing_after_the_suspect_session_ended_is_adopted():
    c = direct_linked()
    c.session_suspect(PEER, 1, 50.0)
    drain(c)
    c.session_ended(PEER, 1, 55.0)  # dead before any replacement completed
    c.handle_timer(55.0)
    assert drain(c) == []  # the replacements in flight are the next round
    c.session_established(PEER, 3, "relay", True, 55.5)
    assert drain(c)[-1] == SessionAdopted(PEER, 3, "relay", True)


# -- WebRTC: tried while relayed, a success moves the peer off the relay -----------------------

def relay_linked(**settings):
    c = core(webrtc=True, **settings)
    c.peers_known([(PEER, False, True)], 0.0)
    c.handle_timer(0.0)
    drain(c)
    c.session_established(PEER, 1, "relay", True, 1.0)
    drain(c)
    return c


def test_a_relayed_peer_gets_a_webrtc_attempt_at_once_and_a_success_moves_it():
    c = relay_linked()
    c.handle_timer(1.0)
    assert drain(c) == [DialWebRtc(PEER)]
    c.session_established(PEER, 2, "webrtc", True, 2.0)
    assert drain(c) == [CloseSession(PEER, 1, "replaced by the preferred session"),
                        SessionAdopted(PEER, 2, "webrtc", True, "relay")]
    c.handle_timer(5000.0)
    assert DialWebRtc(PEER) not in drain(c)  # no more attempts while on webrtc


def test_failed_webrtc_attempts_back_off_from_30_s_to_10_min_and_a_sighting_retries_now():
    c = relay_linked()
    delays, now = [], 1.0
    for _ in range(7):
        if now == 1.0:
            c.handle_timer(now)
            assert DialWebRtc(PEER) in drain(c)
        c.dial_failed(PEER, "webrtc", now)
        retry = now + 1.0
        while DialWebRtc(PEER) not in [e for e in _run_until(c, retry)]:
            retry += 1.0
        delays.append(round(retry - now))
        now = retry
    assert delays == [30, 60, 120, 240, 480, 600, 600]
    c.dial_failed(PEER, "webrtc", now)  # the next is 10 min away, but
    c.peer_discovered(PEER, ["192.0.2.7:7771"], now + 1)  # a new DHT record: at once
    c.handle_timer(now + 1)
    assert DialWebRtc(PEER) in drain(c)
    c.dial_failed(PEER, "webrtc", now + 2)
    c.peer_discovered(PEER, ["192.0.2.7:7771"], now + 30)  # the same record, looked up again
    assert DialWebRtc(PEER) not in _run_until(c, now + 31)  # keeps its backoff
    c.peer_discovered(PEER, ["192.0.2.8:7771"], now + 32)  # it moved
    assert DialWebRtc(PEER) in _run_until(c, now + 32)


def _run_until(c, now):
    c.handle_timer(now)
    return drain(c)


def test_a_webrtc_session_never_replaces_a_direct_one_and_the_relay_ending_cancels_it():
    c = relay_linked()
    c.handle_timer(1.0)
    drain(c)
    c.session_ended(PEER, 1, 3.0)  # the relay session went: nothing to move off
    assert drain(c) == [CancelDials(PEER, "webrtc")]
    d = direct_linked()
    d.session_established(PEER, 5, "webrtc", False, 9.0)  # the peer's, by tie-break
    assert drain(d) == [CloseSession(PEER, 5, "a direct session exists")]


def test_without_webrtc_nothing_is_attempted():
    c = core()
    c.peers_known([(PEER, False, True)], 0.0)
    c.handle_timer(0.0)
    drain(c)
    c.session_established(PEER, 1, "relay", True, 1.0)
    drain(c)
    c.handle_timer(1000.0)
    assert DialWebRtc(PEER) not in drain(c)


def test_a_webrtc_peer_keeps_probing_for_a_direct_path_and_moves_to_it():
    c = core(webrtc=True)
    c.peers_known([(PEER, True, True)], 0.0)
    c.handle_timer(0.0)
    drain(c)
    c.dial_failed(PEER, "direct", 0.1)
    drain(c)
    c.session_established(PEER, 1, "relay", True, 0.6)
    drain(c)
    c.handle_timer(0.6)
    assert DialWebRtc(PEER) in drain(c)
    c.session_established(PEER, 2, "webrtc", True, 1.0)
    drain(c)
    c.handle_timer(1.0 + 30 * 1.2)  # the probe, within its jitter
    assert DialDirect(PEER, probe=True) in drain(c)
    c.session_established(PEER, 3, "direct", True, 40.0)
    assert drain(c)[-1] == SessionAdopted(PEER, 3, "direct", True, "webrtc")


def _failed_webrtc_backs_off(c, now):
    c.handle_timer(now)
    assert DialWebRtc(PEER) in drain(c)
    c.dial_failed(PEER, "webrtc", now)
    c.handle_timer(now + 1)
    assert DialWebRtc(PEER) not in drain(c)  # the next one is 30 s away


def test_a_network_change_retries_webrtc_and_probes_direct_at_once_and_resets_backoff():
    c = relay_linked()
    _failed_webrtc_backs_off(c, 1.0)
    c.network_changed(5.0)
    c.handle_timer(5.0)
    out = drain(c)
    assert DialWebRtc(PEER) in out
    c.dial_failed(PEER, "webrtc", 6.0)
    c.handle_timer(6.0 + 29)
    assert DialWebRtc(PEER) not in drain(c)
    c.handle_timer(6.0 + 30)  # the backoff started over at 30 s
    assert DialWebRtc(PEER) in drain(c)
    d = core(webrtc=True)  # a relayed peer with direct candidates is probed at once too
    d.peers_known([(PEER, True, True)], 0.0)
    d.handle_timer(0.0)
    d.dial_failed(PEER, "direct", 0.1)
    d.session_established(PEER, 1, "relay", True, 0.2)
    d.handle_timer(0.2)
    drain(d)
    d.dial_failed(PEER, "webrtc", 0.3)
    d.network_changed(2.0)
    d.handle_timer(2.0)
    assert drain(d) == [DialDirect(PEER, probe=True), DialWebRtc(PEER)]


def test_a_network_change_during_an_attempt_retries_once_it_has_failed():
    c = relay_linked()
    c.handle_timer(1.0)
    assert drain(c) == [DialWebRtc(PEER)]
    c.network_changed(2.0)  # the attempt in flight began with the old addresses
    c.handle_timer(2.0)
    assert drain(c) == []  # one attempt at a time
    c.dial_failed(PEER, "webrtc", 8.0)
    c.handle_timer(8.0)
    assert drain(c) == [DialWebRtc(PEER)]  # at once, not after the backoff
    c.dial_failed(PEER, "webrtc", 9.0)  # this one began after the change: back off
    c.handle_timer(9.0 + 29)
    assert drain(c) == []


def test_a_network_change_dials_an_unreachable_peer_now_with_a_fresh_backoff():
    c = core(redial=5.0, max_redial=30.0)
    c.peers_known([(PEER, False, True)], 0.0)
    now = 0.0
    for _ in range(4):  # backoff grows to 30 s
        c.handle_timer(now)
        assert DialRelay(PEER) in drain(c)
        c.dial_failed(PEER, "relay", now)
        now = c.get_timer()
    c.network_changed(now - 20)
    c.handle_timer(now - 20)
    assert DialRelay(PEER) in drain(c)
    c.dial_failed(PEER, "relay", now - 20)
    assert c.get_timer() == pytest.approx(now - 20 + 5.0)


def test_our_late_relay_dial_ending_the_round_leaves_the_webrtc_attempt_in_flight():
    """After pairing both sides dial the relay at once: the peer's session is adopted
    first (a WebRTC attempt starts off it), then ours completes and ends the round. The
    attempt is no part of the round: its session moves us off the relay, it is not
    closed as "another path won" (seen in the NAT lab: a working webrtc session thrown
    away, relay again, a second attempt)."""
    c = core(webrtc=True)  # LOW: our relayed session wins the tie-break
    c.peers_known([(PEER, False, True)], 0.0)
    c.handle_timer(0.0)
    assert drain(c) == [DialRelay(PEER)]
    assert linked(c, PEER, "relay", key=1, now=0.4) == [SessionAdopted(PEER, 1, "relay", False)]
    c.handle_timer(0.4)
    assert drain(c) == [DialWebRtc(PEER)]
    c.session_established(PEER, 2, "relay", True, 0.5)  # our own relay dial, late
    out = drain(c)
    assert CancelDials(PEER) not in out and CancelDials(PEER, "webrtc") not in out
    assert out[-1] == SessionAdopted(PEER, 2, "relay", True, "relay")
    c.handle_timer(0.5)
    assert DialWebRtc(PEER) not in drain(c)  # the one in flight goes on
    c.session_established(PEER, 3, "webrtc", True, 0.9)
    assert drain(c) == [CloseSession(PEER, 2, "replaced by the preferred session"),
                        SessionAdopted(PEER, 3, "webrtc", True, "relay")]


def test_a_webrtc_session_completing_after_its_attempt_was_cancelled_is_ranked_not_dropped():
    """The peer's tie-break closed our relayed session just before its own relayed one
    reached us (the relay ending cancels the WebRTC attempt); the attempt completed
    anyway: a working webrtc session moves us off the new relayed one (seen in the NAT
    lab: it was closed as "another path won", relay again, a second attempt)."""
    c = relay_linked()
    c.handle_timer(1.0)
    assert drain(c) == [DialWebRtc(PEER)]
    c.session_ended(PEER, 1, 1.2)
    assert drain(c) == [CancelDials(PEER, "webrtc")]
    assert linked(c, PEER, "relay", key=2, now=1.3) == [SessionAdopted(PEER, 2, "relay", False)]
    c.session_established(PEER, 3, "webrtc", True, 1.4)  # the cancelled attempt's
    assert drain(c) == [CloseSession(PEER, 2, "replaced by the preferred session"),
                        SessionAdopted(PEER, 3, "webrtc", True, "relay")]
