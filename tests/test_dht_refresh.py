"""The record refresh core, with time as numbers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgate.discovery.dht.records import (
    EPOCH,
    EXPIRY_JITTER,
    RECORD_LIFETIME,
    RecordContent,
    epoch_of,
)
from p2pgate.discovery.refresh import (
    NEXT_EPOCH_LEAD,
    LookupPeer,
    PublishRecord,
    RecordRefresh,
    lookup_epochs,
    needs_lookup,
)
from p2pgate.errors import LocalProtocolError
from p2pgate.identity import Identity

A, B = sorted(Identity.generate().device_id for _ in range(2))
EARLY = 20_000 * EPOCH + 100.0  # just after an epoch starts
E = epoch_of(EARLY)
HOME = RecordContent(("10.0.0.2:7771",), ("wss://relay.example",), "203.0.113.9:40000")
CAFE = RecordContent(("192.168.7.4:7771",), ("wss://relay.example",), "198.51.100.3:5000")


def core(now=EARLY, peers=(A,), lookups=(), content=HOME, **kw):
    refresh = RecordRefresh(republish=3600.0, lookup_every=30.0, first_backoff=2.0,
                            max_backoff=60.0, **kw)
    refresh.set_peers(peers, now)
    refresh.set_needs_lookup(lookups, now)
    if content is not None:
        refresh.set_content(content, now)
    return refresh


def publish_and_succeed(refresh, now):
    commands = refresh.handle_timer(now)
    for command in commands:
        if isinstance(command, PublishRecord):
            refresh.published(command, now)
        else:
            refresh.looked_up(command, now)
    return commands


def test_first_publish_is_at_once():
    refresh = core()
    assert refresh.get_timer() == EARLY
    assert refresh.handle_timer(EARLY) == [PublishRecord(A, E, HOME)]


def test_nothing_is_published_before_the_content_is_known():
    refresh = core(content=None)
    assert refresh.handle_timer(EARLY) == []
    refresh.set_content(HOME, EARLY + 1)
    assert refresh.handle_timer(EARLY + 1) == [PublishRecord(A, E, HOME)]


def test_republish_before_expiry():
    refresh = core()
    publish_and_succeed(refresh, EARLY)
    assert refresh.get_timer() == EARLY + 3600
    assert refresh.handle_timer(EARLY + 3599) == []
    assert refresh.handle_timer(EARLY + 3600) == [PublishRecord(A, E, HOME)]


def test_epoch_change_republishes_under_the_new_epoch():
    late = (E + 1) * EPOCH - 100  # 100 s before the next epoch
    refresh = core(now=late)
    publish_and_succeed(refresh, late)
    assert refresh.get_timer() == (E + 1) * EPOCH  # before the hourly republish
    assert refresh.handle_timer((E + 1) * EPOCH - 1) == []
    assert refresh.handle_timer((E + 1) * EPOCH) == [PublishRecord(A, E + 1, HOME)]


def test_a_content_change_publishes_at_once_and_the_same_content_does_not():
    refresh = core()
    publish_and_succeed(refresh, EARLY)
    refresh.set_content(HOME, EARLY + 10)
    assert refresh.handle_timer(EARLY + 10) == []
    refresh.set_content(CAFE, EARLY + 20)  # our address or observed address moved
    assert refresh.get_timer() == EARLY + 20
    assert refresh.handle_timer(EARLY + 20) == [PublishRecord(A, E, CAFE)]


def test_a_content_change_during_a_publish_publishes_again():
    refresh = core()
    [command] = refresh.handle_timer(EARLY)
    refresh.set_content(CAFE, EARLY + 1)
    refresh.published(command, EARLY + 2)  # it stored HOME
    assert refresh.handle_timer(EARLY + 2) == [PublishRecord(A, E, CAFE)]


def test_a_relayed_or_absent_peer_is_looked_up_every_interval_a_direct_one_never():
    assert needs_lookup(None) and needs_lookup("relay")
    assert not needs_lookup("direct") and not needs_lookup("webrtc")
    refresh = core(peers=(A, B), lookups=(A,))
    lookups = []
    for step in range(0, 181):  # three minutes, second by second
        lookups += [c for c in publish_and_succeed(refresh, EARLY + step)
                    if isinstance(c, LookupPeer)]
    assert [c.peer for c in lookups] == [A] * 7  # at once, then every 30 s
    assert lookups[0] == LookupPeer(A, (E, E - 1))


def test_a_peer_that_loses_its_direct_session_is_looked_up_at_once():
    refresh = core(lookups=())
    publish_and_succeed(refresh, EARLY)
    assert refresh.handle_timer(EARLY + 500) == []
    refresh.set_needs_lookup([A], EARLY + 600)
    assert refresh.handle_timer(EARLY + 600) == [LookupPeer(A, (E, E - 1))]
    refresh.set_needs_lookup([], EARLY + 601)  # direct again: no more lookups
    refresh.looked_up(LookupPeer(A, (E,)), EARLY + 602)
    assert refresh.get_timer() == EARLY + 3600  # only the republish remains


def test_a_new_peer_is_published_for_and_looked_up_at_once():
    refresh = core(peers=(A,))
    publish_and_succeed(refresh, EARLY)
    refresh.set_peers([A, B], EARLY + 5)
    refresh.set_needs_lookup([B], EARLY + 5)
    assert refresh.handle_timer(EARLY + 5) == [PublishRecord(B, E, HOME),
                                               LookupPeer(B, (E, E - 1))]
    refresh.set_peers([A], EARLY + 6)  # B revoked: forgotten
    assert refresh.handle_timer(EARLY + 4000) == [PublishRecord(A, E, HOME)]


def test_failing_publishes_back_off_and_recover():
    refresh = core()
    now, retries = EARLY, []
    for _ in range(8):
        [command] = refresh.handle_timer(now)
        refresh.publish_failed(command, now)
        retry = refresh.get_timer()
        assert refresh.handle_timer(retry - 0.5) == []
        retries.append(retry - now)
        failed_at, now = now, retry
    assert retries == [2, 4, 8, 16, 32, 60, 60, 60]
    refresh.set_content(CAFE, failed_at + 1)  # a failing peer keeps its backoff
    assert refresh.handle_timer(failed_at + 1) == []
    [command] = refresh.handle_timer(now)
    assert command.content == CAFE
    refresh.published(command, now)
    assert refresh.get_timer() == now + 3600
    [command] = refresh.handle_timer(now + 3600)
    refresh.publish_failed(command, now + 3600)
    assert refresh.get_timer() == now + 3600 + 2  # the backoff started over


def test_failing_lookups_back_off_and_recover():
    refresh = core(lookups=(A,))
    [publish, lookup] = refresh.handle_timer(EARLY)
    refresh.published(publish, EARLY)
    refresh.lookup_failed(lookup, EARLY)
    assert refresh.handle_timer(EARLY + 1) == []
    [lookup] = refresh.handle_timer(EARLY + 2)
    refresh.lookup_failed(lookup, EARLY + 2)
    assert refresh.handle_timer(EARLY + 5) == []
    [lookup] = refresh.handle_timer(EARLY + 6)
    refresh.looked_up(lookup, EARLY + 6)
    assert refresh.handle_timer(EARLY + 35) == []
    assert refresh.handle_timer(EARLY + 36) == [lookup]


def test_an_attempt_never_reported_is_retried():
    refresh = core()
    assert refresh.handle_timer(EARLY) == [PublishRecord(A, E, HOME)]
    assert refresh.handle_timer(EARLY + 1) == []  # in flight
    assert refresh.handle_timer(EARLY + 2) == [PublishRecord(A, E, HOME)]


def test_settings_are_checked():
    with pytest.raises(LocalProtocolError):
        RecordRefresh(republish=EPOCH)  # would let records expire
    with pytest.raises(LocalProtocolError):
        RecordRefresh(first_backoff=0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=1, max_size=80))
def test_under_any_failures_publishing_is_retried_never_hammered_never_stale(steps):
    """Whatever fails: the next attempt comes within 60 s of a failure and within the
    republish interval of a success, and never sooner than the first backoff."""
    refresh = core()
    now, last_attempt = EARLY, None
    for late, succeeds in steps:
        now = refresh.get_timer() + late  # the adapter may wake up a little late
        [command] = refresh.handle_timer(now)
        assert last_attempt is None or now - last_attempt >= 2
        last_attempt = now
        if succeeds:
            refresh.published(command, now)
            assert refresh.get_timer() <= now + 3600
        else:
            refresh.publish_failed(command, now)
            assert now + 2 <= refresh.get_timer() <= now + 60


def test_the_next_epochs_key_is_looked_up_only_just_before_it_starts():
    """Asking for tomorrow's key all day would tell the DHT a day early which key our
    peer will use; it is wanted only for a peer whose clock runs a little ahead."""
    refresh = core(lookups=(A,))
    boundary = (E + 1) * EPOCH
    epochs_seen = {}
    now = EARLY
    while now < boundary + 60:
        for command in publish_and_succeed(refresh, now):
            if isinstance(command, LookupPeer):
                epochs_seen[now] = command.epochs
        now = refresh.get_timer()
    far = [t for t, epochs in epochs_seen.items() if E + 1 in epochs]
    assert far, "the next epoch is looked up before the boundary"
    assert min(far) >= boundary - NEXT_EPOCH_LEAD
    assert NEXT_EPOCH_LEAD <= 900
    assert epochs_seen[EARLY] == (E, E - 1)
    assert all(epochs[0] == epoch_of(t) for t, epochs in epochs_seen.items())
    assert lookup_epochs(boundary - NEXT_EPOCH_LEAD - 1) == (E, E - 1)
    assert lookup_epochs(boundary - 1) == (E, E - 1, E + 1)
    assert lookup_epochs(boundary) == (E + 1, E)


def test_records_are_republished_well_before_they_expire():
    RecordRefresh()  # the defaults are accepted
    with pytest.raises(LocalProtocolError):
        RecordRefresh(republish=RECORD_LIFETIME - EXPIRY_JITTER)
    refresh = core()
    publish_and_succeed(refresh, EARLY)
    assert refresh.get_timer() - EARLY <= (RECORD_LIFETIME - EXPIRY_JITTER) / 2
