"""The hardened DHT on loopback: a 50-node network, real UDP, in one process.

(1) Time for a fresh node (listen, bootstrap from one node, look up) to find a paired
    peer's current record, median of 5 (a new record and a new fresh node each time).
(2) Bytes the fresh node sends for one lookup (UDP payloads).
(3) Lookup success rate when 20 % of the nodes lie (forged values for every key,
    garbage node lists): 20 lookups from fresh nodes.

Run: .venv/bin/python bench/dht_bench.py [--nodes 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pgate.discovery.dht.node import DhtNode, HardenedProtocol  # noqa: E402
from p2pgate.discovery.dht.records import RecordContent, seal_record  # noqa: E402
from p2pgate.identity import Identity  # noqa: E402

ME = Identity.generate()


class LyingProtocol(HardenedProtocol):  # type: ignore[misc]
    def rpc_find_value(self, sender: Any, nodeid: Any, key: Any) -> Any:
        return {"value": os.urandom(300)}

    def rpc_find_node(self, sender: Any, nodeid: Any, key: Any) -> Any:
        return [[b"short", 5, "x"]]


class LyingNode(DhtNode):  # type: ignore[misc]
    def _create_protocol(self) -> HardenedProtocol:
        proto = LyingProtocol(self.node, self.storage, self.ksize)
        proto._wait_timeout = 1.0
        return proto


async def build(n: int, liars: int) -> tuple[list[DhtNode], int]:
    nodes: list[DhtNode] = []
    for i in range(n):
        node = (LyingNode if 0 < i <= liars else DhtNode)(wait_timeout=1.0)
        await node.listen(0, interface="127.0.0.1")
        nodes.append(node)
    port = nodes[0].transport.get_extra_info("sockname")[1]
    for node in nodes[1:]:
        await node.bootstrap([("127.0.0.1", port)])
    for node in nodes[1:]:  # a second round fills the routing tables
        await node.bootstrap([("127.0.0.1", port)])
    return nodes, port


async def fresh_lookup(port: int, key: bytes) -> tuple[float, int, bytes | None]:
    start = time.perf_counter()
    node = DhtNode(wait_timeout=1.0)
    await node.listen(0, interface="127.0.0.1")
    await node.bootstrap([("127.0.0.1", port)])
    sent = 0
    transport = node.protocol.transport
    original = transport.sendto

    def counting(data: bytes, addr: Any = None) -> None:
        nonlocal sent
        sent += len(data)
        original(data, addr)

    transport.sendto = counting
    value = await node.lookup(key)
    elapsed = time.perf_counter() - start
    node.stop()
    return elapsed, sent, value


async def main(n: int) -> None:
    honest, port = await build(n, 0)
    times, sizes = [], []
    for i in range(5):
        rec = seal_record(RecordContent((f"10.1.1.{i}:7771",), ()), k_pair=os.urandom(32),
                          publisher=ME.device_id, device_key=ME.private_key, seq=1,
                          now=time.time())
        await honest[1 + i].publish(rec)
        elapsed, sent, value = await fresh_lookup(port, rec.key)
        assert value == rec.value, "lookup failed"
        times.append(elapsed)
        sizes.append(sent)
    for node in honest:
        node.stop()
    print(f"(1) fresh node finds a paired peer's record in a {n}-node DHT: median "
          f"{statistics.median(times) * 1000:.0f} ms (target <= 2 s); all: "
          + ", ".join(f"{t * 1000:.0f}" for t in times))
    print(f"(2) bytes sent per lookup (bootstrap not counted): median "
          f"{statistics.median(sizes):.0f} B")

    liars = n // 5
    nodes, port = await build(n, liars)
    ok = 0
    for i in range(20):
        rec = seal_record(RecordContent((f"10.2.2.{i}:7771",), ()), k_pair=os.urandom(32),
                          publisher=ME.device_id, device_key=ME.private_key, seq=1,
                          now=time.time())
        await nodes[liars + 1 + i % (n - liars - 1)].publish(rec)
        _, _, value = await fresh_lookup(port, rec.key)
        ok += value == rec.value
    for node in nodes:
        node.stop()
    print(f"(3) with {liars} of {n} nodes lying: {ok}/20 lookups found the record")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.nodes))
