"""Relay access tokens handed to the node through its API, kept in the encrypted store.

One row of the meta table per relay: key `relay_token:<canonical relay URL>`.
"""

from __future__ import annotations

from p2pgate.storage.database import Connection, Database

__all__ = ["relay_tokens", "store_relay_token"]

_PREFIX = "relay_token:"


async def relay_tokens(db: Database) -> dict[str, str]:
    """Relay URL -> the access token last handed over for it."""

    def _load(conn: Connection) -> dict[str, str]:
        rows = conn.execute("SELECT key, value FROM meta WHERE key LIKE 'relay_token:%'")
        return {str(key).removeprefix(_PREFIX): str(value) for key, value in rows.fetchall()}

    return await db.run(_load)


async def store_relay_token(db: Database, url: str, token: str) -> None:
    """Keep `token` for relay `url` (replacing the one before)."""

    def _store(conn: Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                     "DO UPDATE SET value = excluded.value", (_PREFIX + url, token))

    await db.write(_store)
