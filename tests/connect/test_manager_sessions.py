"""Two connection managers over loopback TCP: real pinned TLS, real libSQL, real sync."""

from __future__ import annotations

import asyncio
import contextlib

from p2pgate.connect import ConnectionManager
from p2pgate.documents import Documents
from p2pgate.net.peers import Listener

from .conftest import pair


@contextlib.asynccontextmanager
async def running(device, **settings):
    documents = await Documents.open(device.db, device.identity.device_id)
    manager = ConnectionManager(device.trust, device.registry, documents,
                                device.identity.device_id, device.hello, **settings)
    listener = Listener(device.trust, device.hello, manager.accepted)
    await listener.start("127.0.0.1", 0)
    manager.start()
    try:
        yield manager, documents, listener
    finally:
        await listener.stop()
        await manager.stop()


async def until(predicate, rounds=1500):
    """Let the managers work until `predicate()` holds; fails past `rounds` checks."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never held")


async def test_a_discovered_peer_gets_one_direct_session_and_documents_sync(devices):
    phone, desk = await devices("phone"), await devices("desk")
    await pair(phone, desk)
    async with running(phone) as (at_phone, phone_docs, _), \
            running(desk) as (at_desk, desk_docs, desk_listener):
        peer = desk.identity.device_id
        await at_phone.discovered(peer, (f"127.0.0.1:{desk_listener.port}",))
        await until(lambda: at_phone.path_of(peer) == "direct"
                    and at_desk.path_of(phone.identity.device_id) == "direct")
        await phone_docs.put("notes", "n1", {"text": "hello"}, None)
        await until(lambda: bool(desk_docs.cursor))
        assert (await desk_docs.get("notes", "n1")).data == {"text": "hello"}
        [entry] = at_phone.peers()
        assert (entry["device_id"], entry["path"]) == (str(peer), "direct")
        # reconnect_all closes the session; the phone dials again by itself
        await at_phone.reconnect_all("keys rotated")
        await until(lambda: at_phone.path_of(peer) == "direct")
    assert at_phone.path_of(peer) is None  # stopped: no session left
