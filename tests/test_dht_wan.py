"""WanDiscovery, the refresh core's adapter, on a real loopback DHT and a real registry:
a failing publish is logged and retried, a lookup hands the peer's addresses on, and
a loop that crashes is restarted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import pytest

from p2pgate.discovery.dht.node import DhtNode
from p2pgate.discovery.dht.records import (
    EXPIRY_JITTER,
    RECORD_LIFETIME,
    RecordContent,
    dht_key,
    epoch_of,
    open_record,
    seal_record,
    seq_offset,
    validate,
)
from p2pgate.discovery.dht.seq import SeqCounter
from p2pgate.discovery.wan import WanDiscovery, record_content
from p2pgate.identity import Identity
from p2pgate.storage.database import Database
from p2pgate.storage.registry import DeviceRegistry
from p2pgate.supervisor import Supervisor

ME, PEER = Identity.generate(), Identity.generate()
K = os.urandom(32)
OURS = ("10.9.9.9:7771",)
RELAYS = ("wss://relay.example",)
WAIT = 20.0  # a guard against hanging, not a timing assertion


class FlakyDht(DhtNode):
    """A real DHT node whose first `failures` stores raise, as a dead socket would."""

    def __init__(self, failures: int) -> None:
        super().__init__(ksize=4, alpha=2, wait_timeout=0.5)
        self.failures = failures
        self.stored = asyncio.Event()

    async def set_digest(self, dkey, value):
        if self.failures:
            self.failures -= 1
            raise OSError("injected failure")
        stored = await super().set_digest(dkey, value)
        self.stored.set()
        return stored


@pytest.fixture
async def registry(tmp_path):
    db = await Database.open(tmp_path / "reg.db", "k" * 32)
    registry = DeviceRegistry(db)
    await registry.begin_pairing(PEER.cert_der, "desk")
    await registry.complete_pairing(PEER.device_id, K, b"D" * 32)
    yield registry
    await db.close()


@pytest.fixture
async def helper():
    """The other DHT node (a relay's bootstrap node, say)."""
    node = DhtNode(ksize=4, alpha=2, wait_timeout=0.5)
    await node.listen(0, interface="127.0.0.1")
    yield node, node.transport.get_extra_info("sockname")[1]
    node.stop()


@contextlib.asynccontextmanager
async def running(dht, registry, port, **kw):
    await dht.listen(0, interface="127.0.0.1")
    kw.setdefault("on_found", _ignore)
    kw.setdefault("addresses", lambda: OURS)
    kw.setdefault("path_of", lambda peer: "direct")
    wan = WanDiscovery(dht, registry, ME.device_id, ME.private_key, relays=RELAYS,
                       observed=lambda: [None, "203.0.113.9:40000"], first_backoff=0.05, **kw)
    await wan.start([("127.0.0.1", port)])
    try:
        yield wan
    finally:
        await wan.stop()


async def _ignore(peer, addresses):
    return None


def test_record_content_takes_the_first_observed_address():
    assert record_content(["a:1"], ["wss://r"], [None, "", "1.2.3.4:5", "6.7.8.9:1"]) == (
        RecordContent(("a:1",), ("wss://r",), "1.2.3.4:5"))
    assert record_content([], [], []).observed is None


async def test_a_failing_publish_is_logged_and_runs_again(registry, helper, caplog):
    caplog.set_level(logging.WARNING, logger="p2pgate.discovery")
    node, port = helper
    dht = FlakyDht(failures=2)
    async with running(dht, registry, port):
        await asyncio.wait_for(dht.stored.wait(), WAIT)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    failed = [m for m in warnings if "injected failure" in m]
    assert len(failed) == 2
    assert all(PEER.device_id.short in m for m in failed)
    # the retry really stored it: the peer finds our record on the other node
    value = node.storage.get(dht_key(K, ME.device_id, epoch_of(time.time())))
    assert value is not None
    _, content = open_record(value, k_pair=K, publisher=ME.device_id,
                             publisher_key=ME.public_key, now=time.time())
    assert content == RecordContent(OURS, RELAYS, "203.0.113.9:40000")


async def test_a_lookup_hands_the_peers_addresses_and_relays_on(registry, helper):
    node, port = helper
    theirs = seal_record(RecordContent(("10.7.7.7:7771",), ("wss://theirs.example",)),
                         k_pair=K, publisher=PEER.device_id, device_key=PEER.private_key,
                         seq=1, now=time.time())
    assert node.storage.offer(theirs.key, theirs.value, "127.0.0.1")
    found: asyncio.Queue[tuple[object, tuple[str, ...]]] = asyncio.Queue()

    async def on_found(peer, addresses):
        await found.put((peer, addresses))

    async with running(DhtNode(ksize=4, alpha=2, wait_timeout=0.5), registry, port,
                       on_found=on_found, path_of=lambda peer: None):
        assert await asyncio.wait_for(found.get(), WAIT) == (PEER.device_id, ("10.7.7.7:7771",))
    device = await registry.get(PEER.device_id)
    assert device is not None
    assert device.relays == ("wss://theirs.example",)


async def test_a_crashed_loop_is_logged_and_restarted(registry, helper, caplog):
    node, port = helper
    theirs = seal_record(RecordContent(("10.7.7.7:7771",), ()), k_pair=K,
                         publisher=PEER.device_id, device_key=PEER.private_key, seq=1,
                         now=time.time())
    node.storage.offer(theirs.key, theirs.value, "127.0.0.1")
    calls = []

    async def on_found(peer, addresses):
        calls.append(peer)
        if len(calls) == 1:
            raise RuntimeError("a bug in the connection manager")

    done = asyncio.Event()

    async def second(peer, addresses):
        await on_found(peer, addresses)
        done.set()

    supervisor = Supervisor(first_backoff=0.01, max_backoff=0.1)
    async with running(DhtNode(ksize=4, alpha=2, wait_timeout=0.5), registry, port,
                       on_found=second, path_of=lambda peer: None, lookup_every=0.1,
                       supervisor=supervisor):
        await asyncio.wait_for(done.wait(), WAIT)
    assert supervisor.failures == {"DHT records": 1}
    assert any("a bug in the connection manager" in r.getMessage() for r in caplog.records)
    assert len(calls) >= 2


class CountingDht(DhtNode):
    """A real DHT node that tells when it has published `n` records."""

    def __init__(self, n: int) -> None:
        super().__init__(ksize=4, alpha=2, wait_timeout=0.5)
        self.n = n
        self.done = asyncio.Event()

    async def publish(self, record):
        stored = await super().publish(record)
        self.n -= stored
        if self.n <= 0:
            self.done.set()
        return stored


@pytest.fixture
async def database(tmp_path):
    db = await Database.open(tmp_path / "wan.db", "k" * 32)
    yield db
    await db.close()


async def _paired(db, n):
    registry = DeviceRegistry(db)
    peers = []
    for i in range(n):
        peer, k = Identity.generate(), os.urandom(32)
        await registry.begin_pairing(peer.cert_der, f"peer {i}")
        await registry.complete_pairing(peer.device_id, k, b"D" * 32)
        peers.append((peer, k))
    return registry, peers


async def test_records_of_one_pass_share_no_seq_and_no_expiry(database, helper):
    """Storing nodes (and anyone they hand records to) cannot group a device's records
    by seq or expiry, and seq says nothing about the time."""
    node, port = helper
    registry, peers = await _paired(database, 3)
    dht = CountingDht(3)
    start = time.time()
    async with running(dht, registry, port, db=database):
        await asyncio.wait_for(dht.done.wait(), WAIT)
    now = time.time()
    records = [validate(key, node.storage.get(key), now)
               for key in (dht_key(k, ME.device_id, epoch_of(now)) for _, k in peers)]
    seqs = [r.seq for r in records]
    assert len(set(seqs)) == 3
    assert all(seq >= 2**61 for seq in seqs)  # not milliseconds of the wall clock
    assert min(abs(a - b) for a in seqs for b in seqs if a != b) > 2**32  # unrelated
    # one counter value per pass: the step between two seqs of a key does not count peers
    counters = {r.seq - seq_offset(k, ME.device_id, epoch_of(now)) for r, (_, k) in
                zip(records, peers, strict=True)}
    assert len(counters) == 1
    expiries = [r.expiry for r in records]
    assert len(set(expiries)) > 1  # all three equal: 1 chance in 3 million
    for expiry in expiries:
        assert start + RECORD_LIFETIME - EXPIRY_JITTER - 1 <= expiry <= now + RECORD_LIFETIME


async def test_a_record_sealed_after_a_restart_beats_the_one_before(database, helper):
    node, port = helper
    registry, [(peer, k)] = await _paired(database, 1)
    key = dht_key(k, ME.device_id, epoch_of(time.time()))
    seqs = []
    for addresses in (("10.1.0.1:7771",), ("10.2.0.2:7771",)):  # moved, then restarted
        dht = CountingDht(1)
        async with running(dht, registry, port, db=database, addresses=lambda a=addresses: a):
            await asyncio.wait_for(dht.done.wait(), WAIT)
        value = node.storage.get(key)
        seq, content = open_record(value, k_pair=k, publisher=ME.device_id,
                                   publisher_key=ME.public_key, now=time.time())
        assert content.addresses == addresses  # the newer record won on the helper
        seqs.append(seq)
    assert seqs[1] > seqs[0]


async def test_the_seq_counter_only_grows_across_restarts(database):
    first = SeqCounter(database, block=100_000)
    values = [await first.next() for _ in range(20)]  # several blocks used up
    assert values == sorted(set(values))
    again = SeqCounter(database, block=100_000)
    assert await again.next() > values[-1]
    # without a database: a random start, in memory
    assert await SeqCounter().next() != await SeqCounter().next()
