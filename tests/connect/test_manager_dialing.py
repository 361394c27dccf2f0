"""The connection manager keeps dialing whatever a dial raises (real devices, real
libSQL registries; the relay is a RelayClient whose connect fails)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from p2pgate.connect import ConnectionManager
from p2pgate.documents import Documents
from p2pgate.relay.client import RelayClient

from .conftest import pair


class FailingRelay(RelayClient):
    """A connected relay whose every connect raises the next of `errors` (then the last)."""

    def __init__(self, identity, errors):
        async def refuse(_peer):
            return False

        async def drop(stream):
            await stream.close()

        super().__init__("ws://127.0.0.1:9", identity, refuse, drop)
        self.errors = list(errors)
        self.attempts = asyncio.Queue()

    @property
    def connected(self):
        return True

    async def connect(self, peer):
        self.attempts.put_nowait(peer)
        raise self.errors.pop(0) if len(self.errors) > 1 else self.errors[0]


async def test_a_relay_dial_that_raises_is_logged_and_the_peer_is_dialed_again(devices, caplog):
    caplog.set_level(logging.DEBUG, logger="p2pgate.connect")
    phone, desk = await devices("phone"), await devices("desk")
    await pair(phone, desk)  # desk has no address: the relay is the only path
    relay = FailingRelay(phone.identity, [TimeoutError(),
                                          aiohttp.ClientConnectionError("relay went away")])
    documents = await Documents.open(phone.db, phone.identity.device_id)
    manager = ConnectionManager(phone.trust, phone.registry, documents,
                                phone.identity.device_id, phone.hello, relays=[relay],
                                redial=0.01, max_redial=0.02)
    manager.start()
    try:
        async with asyncio.timeout(30):  # a hang guard, not a timing claim
            for _ in range(3):  # TimeoutError, ClientConnectionError, and once more
                assert await relay.attempts.get() == desk.identity.device_id
    finally:
        await manager.stop()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "TimeoutError" in text
    assert "ClientConnectionError: relay went away" in text
    assert "no path to" in text
    assert manager.path_of(desk.identity.device_id) is None


async def test_our_relay_named_by_a_peer_with_its_pinned_id_is_ours_not_a_visitor(devices):
    """A relay URL with ?id= names the same relay as ours (keyed without the pin): a
    second control connection would replace ours at the relay."""
    from p2pgate.relay.relay_key import RelayKey

    phone, desk = await devices("phone"), await devices("desk")
    await pair(phone, desk)
    relay = FailingRelay(phone.identity, [TimeoutError()])
    pinned = f"{relay.url}?id={RelayKey.generate().relay_id}"
    await phone.registry.record_seen(desk.identity.device_id, None, [pinned])
    visited = []

    def visit(url):
        visited.append(url)
        return relay

    documents = await Documents.open(phone.db, phone.identity.device_id)
    manager = ConnectionManager(phone.trust, phone.registry, documents,
                                phone.identity.device_id, phone.hello, relays=[relay],
                                redial=0.01, max_redial=0.02, visit=visit)
    manager.start()
    try:
        async with asyncio.timeout(30):  # a hang guard, not a timing claim
            assert await relay.attempts.get() == desk.identity.device_id
    finally:
        await manager.stop()
    assert visited == []
