"""The hardened DHT on loopback: real UDP, real kademlia, hostile peers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time

import umsgpack

from p2pgate.discovery.dht.node import DhtNode, HardenedProtocol, RecordStore
from p2pgate.discovery.dht.records import RecordContent, seal_record
from p2pgate.identity import Identity

ME = Identity.generate()
K = os.urandom(32)


def record(seq=1, k=K, now=None):
    return seal_record(RecordContent(("10.1.1.1:7771",), ()), k_pair=k,
                       publisher=ME.device_id, device_key=ME.private_key, seq=seq,
                       now=now or time.time())


@contextlib.asynccontextmanager
async def network(n=5, node_class=DhtNode, **kw):
    nodes = []
    try:
        for i in range(n):
            node = (node_class if i else DhtNode)(ksize=4, alpha=2, wait_timeout=0.5, **kw)
            await node.listen(0, interface="127.0.0.1")
            nodes.append(node)
        ports = [node.transport.get_extra_info("sockname")[1] for node in nodes]
        for node in nodes[1:]:
            await node.bootstrap([("127.0.0.1", ports[0])])
        yield nodes, ports
    finally:
        for node in nodes:
            node.stop()
        await asyncio.sleep(0.05)
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()


async def test_publish_and_lookup_across_nodes():
    async with network() as (nodes, _):
        rec = record()
        assert await nodes[1].publish(rec)
        assert await nodes[4].lookup(rec.key) == rec.value
        newer = record(seq=2)
        assert newer.key == rec.key
        await nodes[2].publish(newer)
        assert await nodes[3].lookup(rec.key) == newer.value
        # a replayed older seq does not replace the newer one anywhere
        await nodes[1].publish(rec)
        assert await nodes[4].lookup(rec.key) == newer.value


def test_store_refuses_forged_wrong_key_oversized_and_bounds_sources():
    store = RecordStore(max_records=50, max_per_prefix=3)
    good = record()
    forged = bytearray(good.value)
    forged[-1] ^= 1
    assert not store.offer(good.key, bytes(forged), "1.1.1.1")
    assert not store.offer(os.urandom(20), good.value, "1.1.1.1")
    assert not store.offer(good.key, b"x" * 5000, "1.1.1.1")
    assert store.offer(good.key, good.value, "1.1.1.1")
    assert not store.offer(good.key, record(seq=0).value, "1.1.1.1")  # older seq
    flood = [seal_record(RecordContent((), ()), k_pair=os.urandom(32), publisher=ME.device_id,
                         device_key=ME.private_key, seq=1, now=time.time()) for _ in range(10)]
    accepted = sum(store.offer(r.key, r.value, f"6.6.6.{i}") for i, r in enumerate(flood))
    assert accepted == 3
    assert len(store) == 4


async def _udp_sender():
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       local_addr=("127.0.0.1", 0))
    return transport


async def test_garbage_datagrams_and_store_flood_do_not_hurt_the_node():
    async with network(3) as (nodes, ports):
        udp = await _udp_sender()
        try:
            junk = [b"", b"\x00", b"\x00" + os.urandom(20) + b"\xc1",  # msgpack "never used"
                    b"\x00" + os.urandom(20) + umsgpack.packb(["store", [1, 2]]),
                    b"\x00" + os.urandom(20) + umsgpack.packb(["find_node", [b"x", b"y"]]),
                    b"\x01" + os.urandom(20) + umsgpack.packb([1, 2, 3]),
                    os.urandom(3000)]
            for _ in range(20):
                for packet in junk:
                    udp.sendto(packet, ("127.0.0.1", ports[0]))
            for i in range(300):  # a STORE flood of valid-looking but unsigned junk
                packet = b"\x00" + os.urandom(20) + umsgpack.packb(
                    ["store", [os.urandom(20), os.urandom(20), os.urandom(200)]])
                udp.sendto(packet, ("127.0.0.1", ports[0]))
                if i % 50 == 0:
                    await asyncio.sleep(0)
            # node 0 reads its datagrams in order: an answered ping comes after it has
            # handled every junk datagram that reached it (a busy node may miss a ping)
            for _ in range(10):
                answered, _ = await nodes[1].protocol.ping(("127.0.0.1", ports[0]),
                                                           nodes[1].node.id)
                if answered:
                    break
            assert answered
        finally:
            udp.close()
        assert len(nodes[0].storage) == 0
        rec = record()
        await nodes[1].publish(rec)
        assert await nodes[2].lookup(rec.key) == rec.value


class LyingProtocol(HardenedProtocol):
    """Answers every find_value with a forged value and find_node with garbage."""

    def rpc_find_value(self, sender, nodeid, key):
        return {"value": os.urandom(300)}

    def rpc_find_node(self, sender, nodeid, key):
        return [[b"short", 5, "x"]]


class LyingNode(DhtNode):
    def _create_protocol(self):
        proto = LyingProtocol(self.node, self.storage, self.ksize)
        proto._wait_timeout = 0.5
        return proto


async def test_lying_peers_cost_one_answer_not_the_lookup():
    async with network(5) as (honest, ports):
        liars = []
        try:
            for _ in range(2):
                liar = LyingNode(ksize=4, alpha=2, wait_timeout=0.5)
                await liar.listen(0, interface="127.0.0.1")
                await liar.bootstrap([("127.0.0.1", ports[0])])
                liars.append(liar)
            for node in honest[1:]:
                await node.bootstrap([("127.0.0.1", ports[0])])
            rec = record()
            await honest[1].publish(rec)
            assert await honest[4].lookup(rec.key) == rec.value
        finally:
            for liar in liars:
                liar.stop()


async def test_stranger_learns_no_address_from_a_device_id():
    async with network(3) as (nodes, _):
        rec = record()
        await nodes[1].publish(rec)
        # everything a stranger can derive from the device ID alone finds nothing
        guesses = [
            hashlib.sha1(ME.device_id.digest).digest(),  # noqa: S324
            hashlib.sha1(str(ME.device_id).encode()).digest(),  # noqa: S324
        ]
        for key in guesses:
            assert await nodes[2].lookup(key) is None
        assert b"10.1.1.1" not in rec.value
