"""The counter behind our DHT records' `seq`: it only grows, across restarts too.

Storing nodes keep the record with the highest `seq` per key, so a record sealed after
a restart must beat the ones sealed before it. The counter is kept in the database's
meta table by blocks: a start reserves `block` values at once (one write), so the
counter never goes back even after a crash, and it is written again only when a block
is used up. Each step is random (1 to 65,536). The wall clock plays no part.
`WanDiscovery` takes one value per pass (each key is published at most once per
pass), so the step between two seqs of one key counts passes, not records.

Without a database (tests, tools) the counter starts at a random point and lives in
memory: newer-wins then holds within one run only.
"""

from __future__ import annotations

import asyncio
import secrets

from p2pgate.discovery.dht.records import SEQ_COUNTER_MAX
from p2pgate.storage.database import Connection, Database

__all__ = ["SeqCounter"]

_META_KEY = "dht_seq"
_STEP = 1 << 16


class SeqCounter:
    """Hands out increasing counter values in [0, 2^62), persisted by blocks."""

    def __init__(self, db: Database | None = None, *, block: int = 1 << 32) -> None:
        self._db = db
        self._block = block
        self._value: int | None = None
        self._reserved = 0  # values below this one may be handed out without a write
        self._lock = asyncio.Lock()

    async def next(self) -> int:
        """The next counter value: larger than every value handed out before."""
        async with self._lock:
            if self._value is None:
                self._value = await self._load()
                self._reserved = self._value
            self._value += 1 + secrets.randbelow(_STEP)
            if self._value >= self._reserved:
                self._reserved = await self._reserve(self._value + self._block)
            if self._value >= SEQ_COUNTER_MAX:
                raise OverflowError("DHT record counter exhausted")
            return self._value

    async def _load(self) -> int:
        if self._db is None:
            return secrets.randbelow(1 << 40)

        def _read(conn: Connection) -> int:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (_META_KEY,)).fetchone()
            return 0 if row is None else int(row[0])

        return await self._db.run(_read)

    async def _reserve(self, upto: int) -> int:
        """Record that values below `upto` may be used: the next start begins there."""
        if self._db is not None:

            def _write(conn: Connection) -> None:
                conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                             "DO UPDATE SET value = excluded.value", (_META_KEY, str(upto)))

            await self._db.write(_write)
        return upto
