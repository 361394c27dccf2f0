"""Hardening #15: a peer's change or state that would make a document larger than the
limit is refused whole (nothing of it applied), and the session goes on."""

from __future__ import annotations

import logging

from p2pgate.documents import Documents
from p2pgate.identity import Identity
from p2pgate.identity.deviceid import DeviceID
from p2pgate.storage.database import Database
from p2pgate.storage.syncstore import MAX_DOC_BYTES
from sync import CollectionPolicy, PeerPolicy, Replica

T0 = 1_700_000_000.0
CHUNK = 15_000  # set elements per change: ~1.5 MB stored each, so the second crosses 2 MiB
FILTERED = {"big": {"mode": "both", "filter": {"body": {"$exists": True}}}}


async def _sync(documents, session, remote, rounds=20):
    received: list[bytes] = []
    for _ in range(rounds):
        out, closed, _ = await documents.peer_step(session, received)
        assert not closed
        for data in out:
            remote.receive(data, T0)
        received = remote.messages_to_send(T0)
        if not received and not out:
            break


async def test_a_peers_oversize_change_is_refused_and_the_session_goes_on(tmp_path, caplog):
    me, peer = str(Identity.generate().device_id), str(Identity.generate().device_id)
    db = await Database.open(tmp_path / "db", "k" * 32)
    try:
        documents = await Documents.open(db, DeviceID.parse(me), clock=lambda: T0)
        await documents.declare("big", {"tags": "set"})
        other = Replica(peer)  # in memory: no size limit, like a misbehaving device
        other.declare("big", {"tags": "set"})
        other.put("notes", "before", {"a": 1}, T0)
        other.patch("big", "d", {"tags": {"$add": list(range(CHUNK))}}, T0)
        other.patch("big", "d", {"tags": {"$add": list(range(CHUNK, 2 * CHUNK))}}, T0)
        other.put("notes", "after", {"a": 2}, T0)
        session = await documents.peer_open(peer)
        remote = other.connect(me, T0)
        with caplog.at_level(logging.WARNING, "p2pgate.sync"):
            await _sync(documents, session, remote)
        assert (await documents.get("notes", "before")).data == {"a": 1}
        big = await documents.get("big", "d")
        assert len(big.data["tags"]) == CHUNK  # the first change only, not part of the second
        assert await documents.get("notes", "after") is None  # waits behind the refused one
        assert documents.replica.version_vector()[peer] == 2
        assert not session.closed
        refused = [r.getMessage() for r in caplog.records if "ChangeRefused" in r.getMessage()]
        assert len(refused) == 1 and f"limit is {MAX_DOC_BYTES} bytes" in refused[0]
        assert f"{peer}/3 refused" in refused[0]
        await _sync(documents, session, remote)  # retransmissions: refused again, quietly
        assert not session.closed
        assert len([r for r in caplog.records if "ChangeRefused" in r.getMessage()]) == 1
        # our own writes still go to the peer
        await documents.put("notes", "mine", {"b": 1}, None)
        await _sync(documents, session, remote)
        assert other.get("notes", "mine") == {"b": 1}
    finally:
        await db.close()


async def test_a_peers_oversize_state_is_left_aside_and_the_others_joined(tmp_path, caplog):
    me, peer = str(Identity.generate().device_id), str(Identity.generate().device_id)
    db = await Database.open(tmp_path / "db", "k" * 32)
    try:
        documents = await Documents.open(db, DeviceID.parse(me), clock=lambda: T0)
        await documents.declare("big", {"tags": "set"})
        other = Replica(peer)
        other.declare("big", {"tags": "set"})
        other.set_policy(me, PeerPolicy({"big": CollectionPolicy(
            "both", FILTERED["big"]["filter"])}))
        other.put("big", "small", {"body": "x"}, T0)
        for start in range(0, 3 * CHUNK, CHUNK):
            other.patch("big", "huge", {"body": "y", "tags": {"$add": list(
                range(start, start + CHUNK))}}, T0)
        session = await documents.peer_open(peer, FILTERED)
        remote = other.connect(me, T0)
        with caplog.at_level(logging.WARNING, "p2pgate.sync"):
            await _sync(documents, session, remote)
        assert (await documents.get("big", "small")).data == {"body": "x"}
        assert await documents.get("big", "huge") is None
        assert not session.closed
        assert any("ChangeRefused" in r.getMessage() and "big/huge" in r.getMessage()
                   for r in caplog.records)
    finally:
        await db.close()
