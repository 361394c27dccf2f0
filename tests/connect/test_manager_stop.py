"""The connection manager stops promptly, whatever its dial loop was doing."""

from __future__ import annotations

import asyncio

import pytest

from p2pgate.connect import ConnectionManager
from p2pgate.documents import Documents


@pytest.mark.parametrize("yields", range(6))
async def test_stop_right_after_a_wake_up_still_ends_the_dial_loop(devices, yields):
    # A wake-up (here reconnect_all) followed within a few loop iterations by stop():
    # with asyncio.wait_for(event.wait(), ...) on Python 3.11 the cancellation was
    # swallowed and the dial loop ran on, so stop() (and the node) never returned.
    me = await devices("phone")
    documents = await Documents.open(me.db, me.identity.device_id)
    manager = ConnectionManager(me.trust, me.registry, documents, me.identity.device_id,
                                me.hello, redial=60.0)
    manager.start()
    for _ in range(10):  # let the dial loop reach its wait
        await asyncio.sleep(0)
    await manager.reconnect_all("test")
    for _ in range(yields):
        await asyncio.sleep(0)
    stopping = asyncio.ensure_future(manager.stop())
    done, _ = await asyncio.wait({stopping}, timeout=10)
    assert done, "stop() hung"
    loops = [t for t in asyncio.all_tasks() if "ConnectionManager._dial_loop" in repr(t)]
    assert all(t.done() for t in loops), loops
