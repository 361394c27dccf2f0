"""Finding paired devices across networks: private records in the hardened DHT.

For every trusted peer we publish one record per 24 h epoch under a key only that
peer can derive (`p2pgate.discovery.dht.records`), holding our addresses, the public
address a relay observed for us, and our relays, sealed with the pair secret and
signed. We look up each peer's record for us (current and previous epoch, and the
next one just before it starts) and hand what it says to the connection manager.
Records live about 3 h (`RECORD_LIFETIME`, less a random jitter) and are republished
every `republish` seconds (1 h), with a new `seq` each time: a secret per-key offset
plus a counter kept in the database (`SeqCounter`), one value per pass of the loop
(each key is published at most once per pass), so a record sealed after a restart
still beats the ones before it, and the step between two seqs of one key counts our
passes, not how many records (peers) we have. Someone who knows only a device ID cannot
even compute the key, let alone read the value.

`RecordRefresh` (the sans-I/O core in `p2pgate.discovery.refresh`) decides when to
publish and look up; `WanDiscovery` is its asyncio adapter: it feeds the core the
trusted peers, their sessions and our content (polled every `lookup_every` seconds,
every 2 s while no DHT node answers), runs the commands against the `DhtNode` and
reports each outcome. A failed publish or lookup is logged and retried by the core's
backoff; the loop runs under a `Supervisor`, so even a bug cannot end it silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from p2pgate.discovery.dht.node import DhtNode
from p2pgate.discovery.dht.records import (
    RecordContent,
    dht_key,
    epoch_of,
    open_record,
    seal_record,
    seq_offset,
)
from p2pgate.discovery.dht.seq import SeqCounter
from p2pgate.discovery.refresh import LookupPeer, PublishRecord, RecordRefresh, needs_lookup
from p2pgate.errors import LocalProtocolError, P2PGateError, RemoteProtocolError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.storage.database import Database
from p2pgate.storage.registry import Device, DeviceRegistry
from p2pgate.supervisor import Supervisor

__all__ = ["DhtError", "WanDiscovery", "record_content"]

log = logging.getLogger("p2pgate.discovery")

Found = Callable[[DeviceID, tuple[str, ...]], Awaitable[None]]

_UNJOINED_POLL = 2.0  # seconds between checks while no DHT node answers


class DhtError(P2PGateError):
    """A DHT publish or lookup could not be done (no node answered, a socket failed)."""


@contextlib.contextmanager
def dht_errors(what: str) -> Iterator[None]:
    """Map the errors of the UDP transport and of kademlia's waits to `DhtError`."""
    try:
        yield
    except (OSError, TimeoutError) as exc:
        raise DhtError(f"{what}: {type(exc).__name__}: {exc}") from exc


def record_content(addresses: Iterable[str], relays: Iterable[str],
                   observed: Iterable[str | None]) -> RecordContent:
    """What our record says: our listening addresses, our relays, and the first public
    address one of our relays observed for us."""
    return RecordContent(tuple(addresses), tuple(relays),
                         next((address for address in observed if address), None))


class WanDiscovery:
    """Publishes our private records and looks up our peers' (asyncio adapter)."""

    def __init__(self, dht: DhtNode, registry: DeviceRegistry, me: DeviceID,
                 device_key: Ed25519PrivateKey, *, addresses: Callable[[], Iterable[str]],
                 relays: Sequence[str], observed: Callable[[], Iterable[str | None]],
                 on_found: Found, path_of: Callable[[DeviceID], str | None],
                 republish: float = 3600.0, lookup_every: float = 30.0,
                 first_backoff: float = 2.0, max_backoff: float = 60.0,
                 clock: Callable[[], float] = time.time,
                 supervisor: Supervisor | None = None, db: Database | None = None) -> None:
        self._dht = dht
        self._registry = registry
        self._me = me
        self._key = device_key
        self._addresses = addresses
        self._relays = tuple(relays)
        self._observed = observed
        self._on_found = on_found
        self._path_of = path_of  # the path of a live session with the peer, or None
        self._lookup_every = lookup_every
        self._clock = clock  # wall clock: epochs and expiry are absolute times
        self._seq = SeqCounter(db)  # without a database: newer-wins within one run only
        self._pass = 0  # the counter value of this pass's records
        self._core = RecordRefresh(republish=republish, lookup_every=lookup_every,
                                   first_backoff=first_backoff, max_backoff=max_backoff)
        self._supervisor = Supervisor(logger=log) if supervisor is None else supervisor
        self._devices: dict[DeviceID, Device] = {}
        self._bootstrap: list[tuple[str, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self, bootstrap: Sequence[tuple[str, int]]) -> None:
        """Start publishing and looking up, joining the DHT through `bootstrap`."""
        self._bootstrap = list(bootstrap)
        self._task = self._supervisor.spawn("DHT records", self._run)

    async def stop(self) -> None:
        """Stop the loop and the DHT node."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._dht.stop()

    async def _run(self) -> None:
        while True:
            await self._join()
            await self._observe(self._clock())
            commands = self._core.handle_timer(self._clock())
            if any(isinstance(command, PublishRecord) for command in commands):
                self._pass = await self._seq.next()  # one per pass: see `SeqCounter`
            for command in commands:
                if isinstance(command, PublishRecord):
                    await self._publish(command)
                else:
                    await self._lookup(command)
            await asyncio.sleep(self._delay())

    def _joined(self) -> bool:
        return bool(self._dht.bootstrappable_neighbors())

    def _delay(self) -> float:
        """Until the core's next timer, but at most one poll interval."""
        poll = self._lookup_every if self._joined() else _UNJOINED_POLL
        timer = self._core.get_timer()
        return poll if timer is None else min(poll, max(0.0, timer - self._clock()))

    async def _join(self) -> None:
        if not self._bootstrap or self._joined():
            return
        try:
            with dht_errors("bootstrap"):
                await self._dht.bootstrap(self._bootstrap)  # again until someone answers
        except DhtError as exc:
            log.warning("DHT: %s", exc)

    async def _observe(self, now: float) -> None:
        """Tell the core the trusted peers, who needs a lookup, and our content."""
        trusted = await self._registry.trusted()
        self._devices = {d.device_id: d for d in trusted if d.k_pair is not None}
        self._core.set_peers(self._devices, now)
        self._core.set_needs_lookup(
            [peer for peer in self._devices if needs_lookup(self._path_of(peer))], now)
        self._core.set_content(
            record_content(self._addresses(), self._relays, self._observed()), now)

    async def _publish(self, command: PublishRecord) -> None:
        device = self._devices[command.peer]
        try:
            await self._store(device, command.content)
        except (DhtError, LocalProtocolError) as exc:
            log.warning("DHT: publishing our record for %s failed: %s",
                        device.device_id.short, exc)
            self._core.publish_failed(command, self._clock())
            return
        self._core.published(command, self._clock())
        log.debug("DHT: published our record for %s", device.device_id.short)

    async def _store(self, device: Device, content: RecordContent) -> None:
        assert device.k_pair is not None  # noqa: S101 (only such devices are kept)
        if not self._joined():
            raise DhtError("no DHT node answers yet")
        now = self._clock()
        seq = seq_offset(device.k_pair, self._me, epoch_of(now)) + self._pass
        try:
            record = seal_record(content, k_pair=device.k_pair, publisher=self._me,
                                 device_key=self._key, seq=seq, now=now)
        except ValueError as exc:  # too many addresses or relays for one record
            raise LocalProtocolError(str(exc)) from None
        with dht_errors("store"):
            stored = await self._dht.publish(record)
        if not stored:
            raise DhtError("no DHT node took the record")

    async def _lookup(self, command: LookupPeer) -> None:
        device = self._devices[command.peer]
        try:
            found = await self._find(device, command.epochs)
        except DhtError as exc:
            log.warning("DHT: looking up %s failed: %s", device.device_id.short, exc)
            self._core.lookup_failed(command, self._clock())
            return
        self._core.looked_up(command, self._clock())
        if found is not None:
            log.info("DHT: found %s by record lookup at %s", device.device_id.short,
                     ", ".join(found.addresses) or "no address")
            if found.relays:
                await self._registry.record_seen(device.device_id, None, found.relays)
            await self._on_found(device.device_id, found.addresses)

    async def _find(self, device: Device, epochs: Sequence[int]) -> RecordContent | None:
        """The newest valid record of `device` for us among `epochs`, or None."""
        assert device.k_pair is not None  # noqa: S101 (only such devices are kept)
        peer_key = x509.load_der_x509_certificate(device.cert_der).public_key()
        if not isinstance(peer_key, Ed25519PublicKey):
            return None
        if not self._joined():
            raise DhtError("no DHT node answers yet")
        best: tuple[int, RecordContent] | None = None
        for epoch in epochs:
            with dht_errors("lookup"):
                value = await self._dht.lookup(dht_key(device.k_pair, device.device_id, epoch))
            if value is None:
                continue
            try:
                seq, content = open_record(value, k_pair=device.k_pair,
                                           publisher=device.device_id,
                                           publisher_key=peer_key, now=self._clock())
            except RemoteProtocolError as exc:
                log.info("DHT: a record for %s was refused: %s", device.device_id.short, exc)
                continue
            if best is None or seq > best[0]:
                best = (seq, content)
        return None if best is None else best[1]
