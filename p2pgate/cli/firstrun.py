"""First-run setup of a data directory: identity, database key, database, admin token.

Synchronous on purpose: it runs before any event loop (`p2pgate init`, or `p2pgate
node` before it starts serving).
"""

from __future__ import annotations

import os
import platform
import secrets
from dataclasses import dataclass

from p2pgate.identity import Identity
from p2pgate.identity.files import write_secret
from p2pgate.identity.paths import DataDir
from p2pgate.storage.database import ENV_DB_KEY, connect, create_key_file, load_key, migrate

__all__ = ["Initialised", "initialise"]


@dataclass(frozen=True, slots=True)
class Initialised:
    """What `initialise` found or made: the identity, device name, and whether it is new."""

    identity: Identity
    name: str
    created: bool


def initialise(data_dir: DataDir, name: str | None = None) -> Initialised:
    """Create what is missing in `data_dir` (idempotent); rename if `name` is given."""
    data_dir.create()
    created = not data_dir.device_key.exists()
    if created:
        identity = Identity.generate()
        identity.save(data_dir)
    else:
        identity = Identity.load(data_dir)
    if not os.environ.get(ENV_DB_KEY):
        create_key_file(data_dir.database_key)
    if not data_dir.admin_token.exists():
        write_secret(data_dir.admin_token, secrets.token_urlsafe(32).encode() + b"\n")
    conn = connect(data_dir.database, load_key(data_dir.database_key))
    try:
        migrate(conn)
        row = conn.execute("SELECT value FROM meta WHERE key = 'name'").fetchone()
        if name is None and row is not None:
            name = str(row[0])
        else:
            name = name or platform.node() or "p2pgate device"
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('name', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (name,),
            )
    finally:
        conn.close()
    return Initialised(identity, name, created)
