"""The sync driver core (`p2pgate.documents.driver`): time as numbers, no sockets."""

from __future__ import annotations

import subprocess
import sys

import pytest

import sync.statesync
from p2pgate.documents.driver import BacklogMeasured, DriverEvent, PeerCaughtUp, SyncDriver
from sync import CollectionPolicy, PeerPolicy, PeerSession, Replica

T0 = 1_700_000_000.0
FILTER = {"body": {"$exists": True}}


def _events(driver: SyncDriver) -> list[DriverEvent]:
    out = []
    while (event := driver.next_event()) is not None:
        out.append(event)
    return out


def _filtered(replica: Replica, peer: str) -> None:
    replica.set_policy(peer, PeerPolicy({"notes": CollectionPolicy("both", FILTER)}))


def _pair(filtered: bool = False) -> tuple[Replica, SyncDriver, Replica, PeerSession]:
    ours, theirs = Replica("ours"), Replica("theirs")
    if filtered:
        _filtered(ours, "theirs")
        _filtered(theirs, "ours")
    driver = SyncDriver(ours, ours.connect("theirs", T0))
    return ours, driver, theirs, theirs.connect("ours", T0)


def _deliver(messages: list[bytes], to: PeerSession, now: float) -> None:
    for data in messages:
        to.receive(data, now)


def test_a_zero_timer_is_due_and_a_session_with_more_to_send_runs_again_at_once(monkeypatch):
    monkeypatch.setattr(sync.statesync, "SEND_BUDGET", 1000)  # a few documents per step
    ours, driver, theirs, remote = _pair(filtered=True)
    for i in range(30):
        ours.put("notes", f"n{i:02}", {"body": "x" * 200}, T0)
    received: list[bytes] = []
    at_once = 0
    for _ in range(100):
        stepped = driver.step(received, T0)  # the clock never moves: only 0.0 timers run
        _deliver(stepped.messages, remote, T0)
        received = remote.messages_to_send(T0)
        if stepped.timer == 0.0:
            at_once += 1
            assert driver.get_timer() == 0.0  # a real value, not "no timer"
            assert driver.due(T0)
        elif not received and not stepped.messages:
            break
    assert len(theirs.list_docs("notes", limit=100)) == 30
    assert at_once >= 3


def test_an_acknowledgement_is_due_once_the_peer_holds_everything():
    ours, driver, theirs, remote = _pair()
    ours.put("c", "a", {"x": 1}, T0)
    first = driver.step([], T0)
    assert [e for e in _events(driver) if isinstance(e, PeerCaughtUp)] == []
    _deliver(first.messages, remote, T0)
    received = remote.messages_to_send(T0)
    for _ in range(10):
        stepped = driver.step(received, T0 + 1)
        events = _events(driver)
        caught_up = [e for e in events if isinstance(e, PeerCaughtUp)]
        if caught_up:
            break
        (backlog,) = [e for e in events if isinstance(e, BacklogMeasured)]
        assert backlog.total == 1
        _deliver(stepped.messages, remote, T0 + 1)
        received = remote.messages_to_send(T0 + 1)
    else:
        pytest.fail("the peer never caught up")
    assert caught_up == [PeerCaughtUp("theirs", {"ours": 1}, T0 + 1)]
    assert [e for e in events if isinstance(e, BacklogMeasured)] == [
        BacklogMeasured("theirs", 0, 1)]
    assert theirs.get("c", "a") == {"x": 1}


def test_the_retransmit_timer_runs_when_due_and_not_before():
    ours, driver, _theirs, _remote = _pair()
    assert len(driver.step([], T0).messages) == 1  # our Hello
    timer = driver.get_timer()
    assert timer == T0 + ours.retransmit_after
    assert not driver.due(timer - 0.001)
    assert driver.due(timer)
    early = driver.step([], timer - 0.001)
    assert early.messages == []
    assert early.timer == timer
    late = driver.step([], timer)
    assert len(late.messages) == 1  # the Hello again
    assert late.timer == timer + ours.retransmit_after


def test_the_replica_quarantine_timer_is_driven_too():
    ours, driver, theirs, remote = _pair()
    theirs.put("c", "a", {"x": 1}, T0 + 3600)  # an hour ahead: held here
    received: list[bytes] = []
    for _ in range(6):
        stepped = driver.step(received, T0)
        _deliver(stepped.messages, remote, T0)
        received = remote.messages_to_send(T0)
    assert ours.get("c", "a") is None
    release = ours.get_timer()
    assert release is not None
    assert driver.get_timer() == release
    driver.step([], release)
    assert ours.get("c", "a") == {"x": 1}


def test_a_closed_session_flushes_its_close_and_has_no_timer():
    _ours, driver, _theirs, remote = _pair()
    driver.step([], T0)
    driver.session.close(T0 + 1, reason="bye")
    stepped = driver.step([], T0 + 2)
    assert stepped.closed
    assert stepped.timer is None
    assert len(stepped.messages) == 1
    _deliver(stepped.messages, remote, T0 + 2)
    assert remote.closed


def test_importing_documents_does_not_import_the_api():
    code = (
        "import sys, p2pgate.documents\n"
        "from p2pgate.documents import Documents\n"
        "bad = [m for m in sys.modules if m == 'aiohttp' or m.startswith('p2pgate.api')]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""
