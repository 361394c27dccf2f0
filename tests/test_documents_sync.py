"""The node's documents driving a state (filtered) sync session on the libSQL store."""

from __future__ import annotations

import sync.statesync
from p2pgate.documents import Documents
from p2pgate.identity import Identity
from p2pgate.identity.deviceid import DeviceID
from p2pgate.storage.database import Database
from sync import CollectionPolicy, PeerPolicy, Replica

T0 = 1_700_000_000.0  # the clock stands still: only "at once" timers can be due
FILTERED = {"notes": {"mode": "both", "filter": {"body": {"$exists": True}}}}


async def test_a_state_session_with_more_to_send_runs_again_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(sync.statesync, "SEND_BUDGET", 1000)  # a few documents per step
    me = Identity.generate().device_id
    peer = str(Identity.generate().device_id)
    db = await Database.open(tmp_path / "db", "k" * 32)
    try:
        documents = await Documents.open(db, DeviceID.parse(str(me)), clock=lambda: T0)
        for i in range(30):
            await documents.put("notes", f"n{i:02}", {"body": "x" * 200}, None)
        session = await documents.peer_open(peer, FILTERED)
        other = Replica(peer)
        other.set_policy(str(me), PeerPolicy({"notes": CollectionPolicy(
            "both", FILTERED["notes"]["filter"])}))
        remote = other.connect(str(me), T0)
        received: list[bytes] = []
        steps_with_more = 0
        for _ in range(100):
            out, closed, timer = await documents.peer_step(session, received)
            assert not closed
            for data in out:
                remote.receive(data, T0)
            received = remote.messages_to_send(T0)
            if timer is not None and timer <= T0:
                steps_with_more += 1  # the loop is told to come back at once, not in 5 s
            elif not received and not out:
                break
        assert len(other.list_docs("notes", limit=100)) == 30
        assert steps_with_more >= 3
    finally:
        await db.close()


async def test_a_caught_up_peer_is_recorded_and_holds_back_collection(tmp_path):
    me = str(Identity.generate().device_id)
    peer = str(Identity.generate().device_id)
    db = await Database.open(tmp_path / "db", "k" * 32)
    try:
        documents = await Documents.open(db, DeviceID.parse(me), clock=lambda: T0)
        for i in range(5):
            await documents.put("notes", f"n{i}", {"body": "x"}, None)
        session = await documents.peer_open(peer)
        remote = Replica(peer).connect(me, T0)
        out, _, _ = await documents.peer_step(session, [])
        assert documents.backlog[peer] == (5, 5)
        for _ in range(10):
            for data in out:
                remote.receive(data, T0)
            out, closed, _ = await documents.peer_step(session, remote.messages_to_send(T0))
            assert not closed
        assert documents.backlog[peer] == (0, 5)
        for i in range(3):  # the peer has not heard of these: they stay in the log
            await documents.put("notes", f"m{i}", {"body": "y"}, None)
        await documents.peer_step(session, [])
        assert documents.backlog[peer] == (3, 8)
        assert await documents.collect_garbage(3600) == (5, 0)
        await documents.peer_close(session, "done")
    finally:
        await db.close()
