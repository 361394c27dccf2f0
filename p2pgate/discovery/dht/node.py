"""A Kademlia node that survives a hostile network (on the `kademlia` package).

Raw kademlia stores anything anyone sends, keeps whatever value most nodes return,
grows without bound, and lets one malformed reply crash `bootstrap()` or `get()`.
Here: every datagram and RPC is checked and a bad one costs only itself; only
valid private records are stored (signature bound to the key, highest `seq` wins),
storage is bounded by count and per source network (/24, /64), held a few hours at
most, and a full store makes room for a fresh record by evicting the least recently
used one; lookups keep the newest valid record among all answers and treat a lying
peer as no answer.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import ipaddress
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kademlia.crawling import ValueSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.storage import IStorage

from p2pgate.discovery.dht.records import MAX_HOLD, MAX_RECORD, Record, validate
from p2pgate.errors import RemoteProtocolError

__all__ = ["DhtNode", "HardenedProtocol", "RecordStore", "source_prefix"]

log = logging.getLogger("p2pgate.dht")

_ID = 20


@functools.lru_cache(maxsize=4096)
def source_prefix(address: str) -> str:
    """The network a source address counts against: its /24 (IPv4) or /64 (IPv6); an
    IPv4-mapped IPv6 address counts as IPv4; anything else (e.g. "local") as itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return f"{ipaddress.IPv4Address(int(ip) >> 8 << 8)}/24"
    return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"


@dataclass(slots=True)
class _Held:
    record: Record
    prefix: str
    stored: float
    until: float  # the signed expiry, or MAX_HOLD after storing if that comes first
    generation: int  # tells a current expiry-heap entry from one left by a replacement


class RecordStore(IStorage):  # type: ignore[misc]
    """Valid records only, the highest seq per key, bounded in count and per source prefix.

    Each /24 (IPv4) or /64 (IPv6) holds at most `max_per_prefix` records. A record is
    held until its signed expiry, at most `max_hold` seconds. When the store is full, a
    fresh valid record takes the place of the one least recently stored or read (an
    `OrderedDict` in that order). Expiry pops a heap: O(log n) per record that expires,
    nothing per record that does not.
    """

    def __init__(self, max_records: int = 10_000, max_per_prefix: int = 64,
                 max_hold: float = MAX_HOLD, clock: Callable[[], float] = time.time) -> None:
        self.max_records = max_records
        self.max_per_prefix = max_per_prefix
        self.max_hold = max_hold
        self._clock = clock
        self._records: OrderedDict[bytes, _Held] = OrderedDict()  # least recently used first
        self._expiries: list[tuple[float, int, bytes]] = []  # (until, generation, key)
        self._per_prefix: Counter[str] = Counter()
        self._generation = 0
        self.evicted = 0

    def offer(self, key: bytes, value: bytes, source: str) -> bool:
        """Store if valid and newer; False (and nothing stored) otherwise."""
        now = self._clock()
        self._expire(now)
        prefix = source_prefix(source)
        current = self._records.get(key)
        if current is None and self._per_prefix[prefix] >= self.max_per_prefix:
            log.debug("refused record from %s: per-network limit", prefix)  # no check spent
            return False
        try:
            record = validate(key, value, now)
        except RemoteProtocolError as exc:
            log.debug("refused record from %s: %s", source, exc)
            return False
        if current is not None and current.record.seq >= record.seq:
            return current.record.value == value
        if current is None:
            if len(self._records) >= self.max_records:
                self._evict()
        else:
            self._drop(key)
        self._generation += 1
        held = _Held(record, prefix, now, min(record.expiry, now + self.max_hold),
                     self._generation)
        self._records[key] = held
        self._per_prefix[prefix] += 1
        heapq.heappush(self._expiries, (held.until, held.generation, key))
        if len(self._expiries) > 2 * len(self._records) + 64:
            self._compact()
        return True

    def _evict(self) -> None:
        """Make room: drop the record least recently stored or read."""
        key = next(iter(self._records))
        log.debug("store full: evicted the least recently used record")
        self._drop(key)
        self.evicted += 1

    def _drop(self, key: bytes) -> None:
        held = self._records.pop(key)
        self._per_prefix[held.prefix] -= 1
        if not self._per_prefix[held.prefix]:
            del self._per_prefix[held.prefix]

    def _expire(self, now: float) -> None:
        heap = self._expiries
        while heap and heap[0][0] <= now:
            _, generation, key = heapq.heappop(heap)
            held = self._records.get(key)
            if held is not None and held.generation == generation:
                self._drop(key)

    def _compact(self) -> None:
        """Rebuild the heap without the entries of replaced or evicted records."""
        self._expiries = [(h.until, h.generation, k) for k, h in self._records.items()]
        heapq.heapify(self._expiries)

    def __len__(self) -> int:
        return len(self._records)

    # IStorage, as the kademlia package uses it
    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.offer(key, value, "local")

    def __getitem__(self, key: bytes) -> bytes:
        """A read (a peer's find_value or our lookup): the record moves to the back of
        the eviction order."""
        held = self._records[key]
        if held.until <= self._clock():
            raise KeyError(key)
        self._records.move_to_end(key)
        return held.record.value

    def get(self, key: bytes, default: Any = None) -> Any:
        """The value stored under `key`, or `default`."""
        try:
            return self[key]
        except KeyError:
            return default

    def iter_older_than(self, seconds_old: float) -> Iterator[tuple[bytes, bytes]]:
        """The (key, value) pairs stored more than `seconds_old` seconds ago (to republish)."""
        now = self._clock()
        cutoff = now - seconds_old
        return iter([(k, h.record.value) for k, h in self._records.items()
                     if h.stored < cutoff and h.until > now])

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        now = self._clock()
        return iter([(k, h.record.value) for k, h in self._records.items() if h.until > now])


def _is_id(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == _ID


def _node_list(value: Any, limit: int) -> list[tuple[bytes, str, int]] | None:
    """A find_node answer as (id, ip, port) triples, or None if it is malformed."""
    if not isinstance(value, list | tuple) or len(value) > limit:
        return None
    nodes = []
    for item in value:
        if not (isinstance(item, list | tuple) and len(item) == 3 and _is_id(item[0])
                and isinstance(item[1], str) and len(item[1]) <= 64
                and isinstance(item[2], int) and 0 < item[2] < 65536):
            return None
        nodes.append((item[0], item[1], item[2]))
    return nodes


class HardenedProtocol(KademliaProtocol):  # type: ignore[misc]
    """Checks every datagram, request and response; a bad one is dropped alone."""

    storage: RecordStore

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Handle one datagram on its own task; oversized or bad ones are dropped and logged."""
        if len(data) > MAX_RECORD + 512:
            log.debug("dropped oversized datagram from %s", addr[0])
            return
        task = asyncio.ensure_future(self._solve_safely(data, addr))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _solve_safely(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            await self._solve_datagram(data, addr)
        except Exception as exc:  # one bad datagram must never hurt the node
            log.debug("dropped bad datagram from %s: %s", addr[0], type(exc).__name__)

    async def _accept_request(self, msg_id: bytes, data: Any, address: tuple[str, int]) -> None:
        try:
            await super()._accept_request(msg_id, data, address)
        except Exception as exc:
            log.debug("dropped bad request from %s: %s", address[0], type(exc).__name__)

    def welcome_if_new(self, node: Node) -> None:
        """Add a node we did not know to the routing table, and only that.

        Raw kademlia also sends a new node every stored record it should hold, scanning
        the whole store; a node that is not in a full bucket stays "new", so anyone
        could make us scan all records (and send many) per datagram with a fresh node
        ID. The owners republish hourly, which brings a new node its records."""
        if self.router.is_new_node(node):
            self.router.add_contact(node)

    def _accept_response(self, msg_id: bytes, data: Any, address: tuple[str, int]) -> None:
        entry = self._outstanding.get(msg_id)
        if entry is None:
            return
        super()._accept_response(msg_id, data, address)

    # -- requests we answer -------------------------------------------------------

    def rpc_ping(self, sender: tuple[str, int], nodeid: Any) -> bytes:
        """Answer a ping; raises RemoteProtocolError on a malformed node ID."""
        if not _is_id(nodeid):
            raise RemoteProtocolError("bad node id")
        return super().rpc_ping(sender, nodeid)  # type: ignore[no-any-return]

    def rpc_store(self, sender: tuple[str, int], nodeid: Any, key: Any, value: Any) -> bool:
        """Store a valid, newer record (see `RecordStore.offer`); malformed: RemoteProtocolError."""
        if not (_is_id(nodeid) and _is_id(key) and isinstance(value, bytes)):
            raise RemoteProtocolError("bad store request")
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        return self.storage.offer(key, value, sender[0])

    def rpc_find_node(self, sender: tuple[str, int], nodeid: Any, key: Any) -> Any:
        """The nodes we know nearest `key`; raises RemoteProtocolError on malformed IDs."""
        if not (_is_id(nodeid) and _is_id(key)):
            raise RemoteProtocolError("bad find_node request")
        return super().rpc_find_node(sender, nodeid, key)

    def rpc_find_value(self, sender: tuple[str, int], nodeid: Any, key: Any) -> Any:
        """The value under `key`, or the nearest nodes; raises RemoteProtocolError on bad IDs."""
        if not (_is_id(nodeid) and _is_id(key)):
            raise RemoteProtocolError("bad find_value request")
        return super().rpc_find_value(sender, nodeid, key)

    # -- answers we receive -------------------------------------------------------

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> Any:
        """Ask `node_to_ask` for nodes near `node_to_find`; a malformed answer counts as none."""
        result = await self.find_node((node_to_ask.ip, node_to_ask.port),
                                      self.source_node.id, node_to_find.id)
        if result[0]:
            nodes = _node_list(result[1], 2 * self.router.ksize)
            result = (False, None) if nodes is None else (True, nodes)
        return self.handle_call_response(result, node_to_ask)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> Any:
        """Ask for the value under `node_to_find`'s ID (or nearer nodes); malformed means none."""
        result = await self.find_value((node_to_ask.ip, node_to_ask.port),
                                       self.source_node.id, node_to_find.id)
        if result[0]:
            answer = result[1]
            if isinstance(answer, dict):
                value = answer.get("value")
                ok = isinstance(value, bytes) and len(value) <= MAX_RECORD
                result = (True, {"value": value}) if ok else (False, None)
            else:
                nodes = _node_list(answer, 2 * self.router.ksize)
                result = (False, None) if nodes is None else (True, nodes)
        return self.handle_call_response(result, node_to_ask)

    async def call_ping(self, node_to_ask: Node) -> Any:
        """Ping `node_to_ask`; an answer without a valid node ID counts as none."""
        result = await self.ping((node_to_ask.ip, node_to_ask.port), self.source_node.id)
        if result[0] and not _is_id(result[1]):
            result = (False, None)
        return self.handle_call_response(result, node_to_ask)


class RecordCrawl(ValueSpiderCrawl):  # type: ignore[misc]
    """Asks several nodes; keeps the newest *valid* record, never a majority vote."""

    def __init__(self, *args: Any, clock: Callable[[], float] = time.time) -> None:
        super().__init__(*args)
        self._clock = clock

    async def _handle_found_values(self, values: list[Any]) -> bytes | None:
        best: Record | None = None
        for value in values:
            try:
                record = validate(self.node.id, value, self._clock())
            except RemoteProtocolError:
                log.info("lookup: dropped an invalid value from a peer")
                continue
            if best is None or record.seq > best.seq:
                best = record
        if best is None:
            if self.nearest.have_contacted_all():
                return None
            return await self.find()  # type: ignore[no-any-return]
        peer = self.nearest_without_value.popleft()
        if peer:
            await self.protocol.call_store(peer, self.node.id, best.value)
        return best.value


class DhtNode(Server):  # type: ignore[misc]
    """A hardened DHT node: bootstrap, publish and look up private records."""

    protocol_class = HardenedProtocol

    def __init__(self, *, ksize: int = 20, alpha: int = 3, storage: RecordStore | None = None,
                 wait_timeout: float = 5.0) -> None:
        super().__init__(ksize=ksize, alpha=alpha)
        self.storage = RecordStore() if storage is None else storage  # never kademlia's default
        self._wait_timeout = wait_timeout

    def _create_protocol(self) -> HardenedProtocol:
        proto = HardenedProtocol(self.node, self.storage, self.ksize)
        proto._wait_timeout = self._wait_timeout
        return proto

    async def bootstrap_node(self, addr: tuple[str, int]) -> Node | None:
        """Ping `addr`: its node if it answers with a valid ID, else None."""
        result = await self.protocol.ping(addr, self.node.id)
        if result[0] and _is_id(result[1]):
            return Node(result[1], addr[0], addr[1])
        return None

    async def publish(self, record: Record) -> bool:
        """Store `record` on the nodes closest to its key (and here, if we are close)."""
        return bool(await self.set_digest(record.key, record.value))

    async def lookup(self, key: bytes) -> bytes | None:
        """The newest valid value stored under `key`, or None."""
        local = self.storage.get(key)
        node = Node(key)
        nearest = self.protocol.router.find_neighbors(node)
        if not nearest:
            return local  # type: ignore[no-any-return]
        found = await RecordCrawl(self.protocol, node, nearest, self.ksize, self.alpha).find()
        candidates = [v for v in (local, found) if v is not None]
        best = None
        for value in candidates:
            try:
                record = validate(key, value, time.time())
            except RemoteProtocolError:
                continue
            if best is None or record.seq > best.seq:
                best = record
        return None if best is None else best.value

    def refresh_table(self, interval: float = 3600) -> None:
        """Kademlia's hourly bucket refresh, tracked so `stop()` cancels it."""
        self._refresh_task = asyncio.ensure_future(self._safe_refresh())
        self.refresh_loop = asyncio.get_running_loop().call_later(interval, self.refresh_table)

    async def _safe_refresh(self) -> None:
        try:
            await self._refresh_table()
        except Exception as exc:
            log.info("DHT refresh failed: %s", exc)

    def stop(self) -> None:
        """Stop serving and cancel the refresh task."""
        super().stop()
        task = getattr(self, "_refresh_task", None)
        if task is not None:
            task.cancel()

