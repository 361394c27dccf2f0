"""This device's discovery key (K_disc), kept in the database's meta table.

Paired peers learn it at pairing and in every Hello; it keys the mDNS tag that only
they recognise. It is replaced when a peer loses our trust.
"""

from __future__ import annotations

import secrets

from p2pgate.storage.database import Connection, Database

__all__ = ["discovery_key", "new_discovery_key"]


async def discovery_key(db: Database) -> bytes:
    """This device's discovery key (peers learn it at pairing), made on first use."""

    def _load(conn: Connection) -> bytes:
        row = conn.execute("SELECT value FROM meta WHERE key = 'disc_key'").fetchone()
        if row is not None:
            return bytes.fromhex(row[0])
        key = secrets.token_bytes(32)
        conn.execute("INSERT INTO meta (key, value) VALUES ('disc_key', ?)", (key.hex(),))
        return key

    return await db.write(_load)


async def new_discovery_key(db: Database) -> bytes:
    """Replace this device's discovery key."""
    key = secrets.token_bytes(32)

    def _store(conn: Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('disc_key', ?) ON CONFLICT (key) "
                      "DO UPDATE SET value = excluded.value", (key.hex(),))

    await db.write(_store)
    return key
