"""The node's documents driving a state (filtered) sync session on the libSQL store."""

from __future__ import annotations

import time

import sync.statesync
from p2pgate.documents import Documents
from p2pgate.identity import Identity
from p2pgate.identity.deviceid import DeviceID
from p2pgate.storage.database import Database
from sync import CollectionPolicy, PeerPolicy, Replica

FILTERED = {"notes": {"mode": "both", "filter": {"body": {"$exists": True}}}}


async def test_a_state_session_with_more_to_send_runs_again_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(sync.statesync, "SEND_BUDGET", 1000)  # a few documents per step
    me = Identity.generate().device_id
    peer = str(Identity.generate().device_id)
    db = await Database.open(tmp_path / "db", "k" * 32)
    try:
        documents = await Documents.open(db, DeviceID.parse(str(me)))
        for i in range(30):
            await documents.put("notes", f"n{i:02}", {"body": "x" * 200}, None)
        session = await documents.peer_open(peer, FILTERED)
        other = Replica(peer)
        other.set_policy(str(me), PeerPolicy({"notes": CollectionPolicy(
            "both", FILTERED["notes"]["filter"])}))
        remote = other.connect(str(me), time.time())
        received: list[bytes] = []
        steps_with_more = 0
        for _ in range(100):
            out, closed, timer = await documents.peer_step(session, received)
            assert not closed
            for data in out:
                remote.receive(data, time.time())
            received = remote.messages_to_send(time.time())
            if timer is not None and timer <= time.time():
                steps_with_more += 1  # the loop is told to come back at once, not in 5 s
            elif not received and not out:
                break
        assert len(other.list_docs("notes", limit=100)) == 30
        assert steps_with_more >= 3
    finally:
        await db.close()
