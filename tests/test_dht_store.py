"""The DHT record store under a flood: caps per network, eviction, expiry (real UDP)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import statistics
import struct
import time

import umsgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from p2pgate.discovery.dht.node import DhtNode, RecordStore, source_prefix
from p2pgate.discovery.dht.records import EPOCH, MAX_HOLD, RecordContent, seal_record
from p2pgate.identity import Identity

ME = Identity.generate()
_HEAD = struct.Struct(">B32sQQ12s")
WAIT = 20.0  # a guard against hanging, not a timing assertion


def mint(now: float, lifetime: int = 2 * EPOCH, seq: int = 1) -> tuple[bytes, bytes]:
    """What an attacker stores: a valid record under a throw-away key (no pair needed)."""
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    value = _HEAD.pack(1, pub, seq, int(now) + lifetime, os.urandom(12)) + os.urandom(64)
    return hashlib.sha1(pub).digest(), value + key.sign(value)  # noqa: S324


_POOL: list[tuple[bytes, bytes]] = []  # minting is slow: the tests share one pool


def minted(n: int) -> list[tuple[bytes, bytes]]:
    """`n` attacker records, valid for two days (each test uses them in a fresh store)."""
    now = time.time()
    _POOL.extend(mint(now) for _ in range(n - len(_POOL)))
    return _POOL[:n]


def honest(address: str = "10.1.1.1:7771"):
    return seal_record(RecordContent((address,), ()), k_pair=os.urandom(32),
                       publisher=ME.device_id, device_key=ME.private_key, seq=1,
                       now=time.time())


class Attacker(asyncio.DatagramProtocol):
    """A UDP socket speaking kademlia's RPC format: sends STOREs, counts the answers."""

    def __init__(self) -> None:
        self.node_id = os.urandom(20)
        self.waiting: dict[bytes, asyncio.Future[object]] = {}

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        future = self.waiting.pop(data[1:21], None)
        if data[:1] == b"\x01" and future is not None and not future.done():
            future.set_result(umsgpack.unpackb(data[21:]))

    async def store(self, target, records, window: int = 16) -> int:
        """STORE each record, `window` at a time (a socket buffer holds only so many),
        sending again what got no answer, as a persistent attacker would."""
        stored = 0
        async with asyncio.timeout(WAIT):
            for start in range(0, len(records), window):
                pending = list(records[start:start + window])
                while pending:
                    answers = await self._send(target, pending)
                    stored += sum(answer is True for answer in answers.values())
                    pending = [r for r in pending if r[0] not in answers]
        return stored

    async def _send(self, target, records) -> dict[bytes, object]:
        futures = {}
        for key, value in records:
            msg_id = os.urandom(20)
            futures[key] = self.waiting[msg_id] = asyncio.get_running_loop().create_future()
            self.transport.sendto(b"\x00" + msg_id + umsgpack.packb(
                ["store", [self.node_id, key, value]]), target)
        await asyncio.wait(futures.values(), timeout=2.0)
        return {key: f.result() for key, f in futures.items() if f.done()}


@contextlib.asynccontextmanager
async def target_and_peers(peers: int = 2):
    """A DHT node with the default store, and honest nodes bootstrapped from it."""
    nodes = []
    try:
        for _ in range(peers + 1):
            node = DhtNode(ksize=4, alpha=2, wait_timeout=0.5)
            await node.listen(0, interface="127.0.0.1")
            nodes.append(node)
        port = nodes[0].transport.get_extra_info("sockname")[1]
        for node in nodes[1:]:
            await node.bootstrap([("127.0.0.1", port)])
        yield nodes, ("127.0.0.1", port)
    finally:
        for node in nodes:
            node.stop()
        await asyncio.sleep(0.05)
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()


def test_sources_count_by_network():
    assert source_prefix("203.0.113.77") == "203.0.113.0/24"
    assert source_prefix("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert source_prefix("::ffff:203.0.113.9") == "203.0.113.0/24"
    assert source_prefix("local") == "local"
    store = RecordStore(max_per_prefix=64)
    flood = minted(200)
    accepted = sum(store.offer(k, v, f"2001:db8:1:2::{i:x}") for i, (k, v) in enumerate(flood))
    assert accepted == 64  # 200 addresses of one /64 are one source


async def test_160_sources_in_three_networks_cannot_fill_the_store():
    loop = asyncio.get_running_loop()
    flood = minted(160 * 64)
    async with target_and_peers() as ((target, publisher, reader), address):
        attackers = []
        try:
            for i in range(160):  # 127.0.1.x, 127.0.2.x, 127.0.3.x: three /24s
                transport, attacker = await loop.create_datagram_endpoint(
                    Attacker, local_addr=(f"127.0.{1 + i % 3}.{10 + i // 3}", 0))
                attackers.append((transport, attacker))
            stored = 0
            for batch in range(0, 160, 4):
                stored += sum(await asyncio.gather(*(
                    attacker.store(address, flood[i * 64:(i + 1) * 64])
                    for i, (_, attacker) in enumerate(attackers[batch:batch + 4], batch))))
        finally:
            for transport, _ in attackers:
                transport.close()
        assert stored == len(target.storage) == 3 * 64
        rec = honest()
        assert await publisher.publish(rec)
        assert target.storage.get(rec.key) == rec.value
        assert await reader.lookup(rec.key) == rec.value


async def test_a_fresh_record_is_stored_in_a_full_store_and_read_records_stay():
    async with target_and_peers() as ((target, publisher, reader), _):
        store = target.storage
        read = honest("10.2.2.2:7771")
        assert await publisher.publish(read)
        flood = minted(store.max_records - 1)
        for i, (key, value) in enumerate(flood):  # 157 /24s, 64 records each at most
            assert store.offer(key, value, f"10.{i // 64 // 256}.{i // 64 % 256}.9")
        assert len(store) == store.max_records
        assert await reader.lookup(read.key) == read.value  # its peer reads it
        fresh = [honest(f"10.3.3.{i}:7771") for i in range(3)]
        for rec in fresh:
            assert await publisher.publish(rec)
            assert store.get(rec.key) == rec.value
        assert len(store) == store.max_records
        assert store.get(read.key) == read.value  # read lately: kept
        assert [store.get(key) for key, _ in flood[:3]] == [None] * 3  # oldest unread: gone
        assert store.get(flood[3][0]) == flood[3][1]


def test_expiry_cost_does_not_grow_with_the_store():
    """The cost of storing one more record with 1,000 and with 10,000 held (interleaved,
    so the machine's load hits both alike): about the same, not ten times more."""
    records = minted(10_000 + 300)
    small, full = RecordStore(), RecordStore()
    for i, (key, value) in enumerate(records[:9_999]):
        source = f"10.{i // 64 // 256}.{i // 64 % 256}.9"
        if i < 999:
            small.offer(key, value, source)
        full.offer(key, value, source)
    costs: dict[str, list[float]] = {"small": [], "full": []}
    for j, (key, value) in enumerate(records[10_000:]):
        for name, store in (("small", small), ("full", full)):
            start = time.perf_counter()
            stored = store.offer(key, value, f"172.16.{j}.1")
            costs[name].append(time.perf_counter() - start)
            assert stored
    assert len(full) == 10_000
    small_cost, full_cost = (statistics.median(costs[n]) for n in ("small", "full"))
    assert full_cost < 3 * small_cost, (small_cost, full_cost)


def test_records_are_held_until_expiry_or_max_hold_and_replacements_keep_their_own():
    now = [1_000_000.0]
    store = RecordStore(clock=lambda: now[0])
    long_lived = mint(now[0], lifetime=2 * EPOCH)
    short = mint(now[0], lifetime=600)
    assert store.offer(*long_lived, "10.0.0.1")
    assert store.offer(*short, "10.0.0.1")
    now[0] += 601
    assert store.get(short[0]) is None
    assert store.get(long_lived[0]) == long_lived[1]  # signed for two days ...
    now[0] += MAX_HOLD - 601
    assert store.get(long_lived[0]) is None  # ... held four hours
    assert store.offer(*mint(now[0]), "10.0.0.1")  # expired ones made way
    assert len(store) == 1
    # a newer seq replaces a record: the old record's expiry no longer applies
    key_pair = Ed25519PrivateKey.generate()
    pub = key_pair.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def version(seq: int, lifetime: int) -> bytes:
        value = _HEAD.pack(1, pub, seq, int(now[0]) + lifetime, os.urandom(12)) + b"x" * 16
        return value + key_pair.sign(value)

    key = hashlib.sha1(pub).digest()  # noqa: S324
    assert store.offer(key, version(1, 60), "10.0.0.2")
    newer = version(2, 3600)
    assert store.offer(key, newer, "10.0.0.2")
    now[0] += 61
    assert store.get(key) == newer
    assert store.offer(*mint(now[0]), "10.0.0.3")  # runs expiry: still there
    assert store.get(key) == newer
    assert len(store) == 3
