"""Finding paired devices across networks: private records in the hardened DHT.

For every trusted peer we publish one record per 24 h epoch under a key only that
peer can derive (`p2pgate.discovery.dht.records`), holding our addresses, the public address
a relay observed for us, and our relays, sealed with the pair secret and signed.
We look up each peer's record for us (current and adjacent epochs) and hand what
it says to the connection manager. Someone who knows only a device ID cannot even
compute the key, let alone read the value.

Records are republished every `republish` seconds (well before they expire) and
whenever what they say changes (checked every `lookup_every` seconds, when peers
without a direct session are also looked up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from p2pgate.deviceid import DeviceID
from p2pgate.discovery.dht.node import DhtNode
from p2pgate.discovery.dht.records import RecordContent, dht_key, epoch_of, open_record, seal_record
from p2pgate.errors import RemoteProtocolError
from p2pgate.registry import Device, DeviceRegistry

__all__ = ["WanDiscovery"]

log = logging.getLogger("p2pgate.discovery")

Found = Callable[[DeviceID, RecordContent], Awaitable[None]]


class WanDiscovery:
    def __init__(self, dht: DhtNode, registry: DeviceRegistry, me: DeviceID,
                 device_key: Ed25519PrivateKey, content: Callable[[], RecordContent],
                 on_found: Found, wanted: Callable[[DeviceID], bool], *,
                 republish: float = 3600.0, lookup_every: float = 30.0) -> None:
        self._dht = dht
        self._registry = registry
        self._me = me
        self._key = device_key
        self._content = content
        self._on_found = on_found
        self._wanted = wanted  # peers to look up (those without a live session)
        self._republish = republish
        self._lookup_every = lookup_every
        self._published: dict[DeviceID, tuple[int, RecordContent]] = {}  # epoch, content
        self._task: asyncio.Task[None] | None = None
        self._bootstrap: list[tuple[str, int]] = []

    async def start(self, bootstrap: list[tuple[str, int]]) -> None:
        self._bootstrap = bootstrap
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._dht.stop()

    async def _loop(self) -> None:
        last_publish = 0.0
        while True:
            if self._bootstrap and not self._dht.bootstrappable_neighbors():
                await self._dht.bootstrap(self._bootstrap)  # again until someone answers
            now = time.time()
            devices = await self._registry.trusted()
            full = now - last_publish >= self._republish
            if full:
                last_publish = now
            for device in devices:
                with contextlib.suppress(Exception):
                    await self._publish(device, now, force=full)
                if self._wanted(device.device_id):
                    await self._lookup(device, now)
            joined = bool(self._dht.bootstrappable_neighbors())
            await asyncio.sleep(self._lookup_every if joined else 2.0)

    async def _publish(self, device: Device, now: float, force: bool) -> None:
        if device.k_pair is None:
            return
        content, epoch = self._content(), epoch_of(now)
        if not force and self._published.get(device.device_id) == (epoch, content):
            return
        record = seal_record(content, k_pair=device.k_pair, publisher=self._me,
                             device_key=self._key, seq=int(now * 1000), now=now)
        if await self._dht.publish(record):
            self._published[device.device_id] = (epoch, content)
            log.debug("DHT: published our record for %s", device.device_id.short)

    async def _lookup(self, device: Device, now: float) -> None:
        if device.k_pair is None:
            return
        peer_key = x509.load_der_x509_certificate(device.cert_der).public_key()
        if not isinstance(peer_key, Ed25519PublicKey):
            return
        best: tuple[int, RecordContent] | None = None
        for epoch in (epoch_of(now), epoch_of(now) - 1, epoch_of(now) + 1):
            value = await self._dht.lookup(dht_key(device.k_pair, device.device_id, epoch))
            if value is None:
                continue
            try:
                seq, content = open_record(value, k_pair=device.k_pair,
                                           publisher=device.device_id,
                                           publisher_key=peer_key, now=now)
            except RemoteProtocolError as exc:
                log.info("DHT: a record for %s was refused: %s", device.device_id.short, exc)
                continue
            if best is None or seq > best[0]:
                best = (seq, content)
        if best is not None:
            log.info("DHT: found %s by record lookup at %s", device.device_id.short,
                     ", ".join(best[1].addresses) or "no address")
            await self._on_found(device.device_id, best[1])
