"""Paired-replica helpers for sync tests (aioquic style): no sockets, time as numbers."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sync import MemoryStorage, PeerSession, ProtocolErrorOccurred, Replica, Storage

T0 = 1_700_000_000.0
SCHEMA = {"n": "counter", "s": "set", "t": "text"}
STORAGES = ["memory", "libsql"]


def make_replica(name: str, **kwargs: Any) -> Replica:
    replica = Replica(name, **kwargs)
    replica.declare("c", SCHEMA)
    return replica


@contextmanager
def storages(kind: str) -> Iterator[Any]:
    """A factory of fresh storages of one kind: in memory, or encrypted libSQL files
    (closed and removed afterwards)."""
    if kind == "memory":
        yield MemoryStorage
        return
    from p2pgate.storage.database import connect, migrate
    from p2pgate.storage.syncstore import LibsqlStorage

    conns = []
    with tempfile.TemporaryDirectory(prefix="p2pg-sync-") as tmp:

        def make() -> Storage:
            conn = connect(Path(tmp) / f"{len(conns)}.db", "k" * 32, durability="normal")
            migrate(conn)
            conns.append(conn)
            return LibsqlStorage(conn)

        try:
            yield make
        finally:
            for conn in conns:
                conn.close()


def transfer(src: PeerSession, dst: PeerSession, now: float) -> int:
    """Deliver everything `src` wants to send to `dst`; returns the message count."""
    messages = src.messages_to_send(now)
    for data in messages:
        dst.receive(data, now)
    return len(messages)


class ReplicaPair:
    """Two replicas with one session each way, over a perfect in-memory link."""

    def __init__(self, a: Replica, b: Replica, now: float = T0) -> None:
        self.a, self.b = a, b
        self.connect(now)

    def connect(self, now: float) -> None:
        self.sa = self.a.connect(self.b.device_id, now)
        self.sb = self.b.connect(self.a.device_id, now)

    def roundtrip_until_done(self, now: float, max_rounds: int = 20) -> int:
        return roundtrip_until_done(self.sa, self.sb, now, max_rounds)


def roundtrip_until_done(
    sa: PeerSession, sb: PeerSession, now: float, max_rounds: int = 20
) -> int:
    """Exchange messages until both sides are quiet; fails past `max_rounds`."""
    for rounds in range(1, max_rounds + 1):
        sent = transfer(sa, sb, now) + transfer(sb, sa, now)
        if not sent:
            return rounds
    raise AssertionError(f"sessions still talking after {max_rounds} rounds")


def drain(replica: Replica) -> list[Any]:
    events = []
    while (event := replica.next_event()) is not None:
        events.append(event)
    return events


def no_protocol_errors(events: list[Any]) -> bool:
    return not any(isinstance(e, ProtocolErrorOccurred) for e in events)


def snapshot(replica: Replica, collection: str = "c") -> dict[str, Any]:
    """Everything an app can observe of a collection."""
    docs = dict(replica.list_docs(collection, limit=10_000))
    return {
        "docs": docs,
        "conflicts": {d: replica.conflicts(collection, d) for d in docs},
    }
