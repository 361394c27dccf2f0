"""libSQL persistence: one encrypted database file, one writer thread, migrations.

The `libsql` driver is synchronous, so every statement runs on one dedicated
thread that owns the connection; coroutines hand it work with `read()` and
`write()`. `write()` runs its function inside one `BEGIN IMMEDIATE` transaction:
a crash (even SIGKILL) leaves all of it or none of it.

Encryption at rest uses libSQL's built-in page encryption. The key comes from
`P2PGATE_DB_KEY`, else from the 0600 file `db.key` created by `p2pgate init`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import libsql

from p2pgate.errors import P2PGateError
from p2pgate.identity.files import read_secret, write_secret

__all__ = [
    "ENV_DB_KEY",
    "MIGRATIONS",
    "Connection",
    "Database",
    "MappedConnection",
    "StoreError",
    "create_key_file",
    "load_key",
    "map_store_errors",
]

ENV_DB_KEY = "P2PGATE_DB_KEY"
MAX_SAFE_INT = 2**53 - 1  # the libsql binding loses precision above this

T = TypeVar("T")


class StoreError(P2PGateError):
    """The database cannot be opened, is damaged, or a statement failed."""


class Connection(Protocol):
    """The part of a libsql connection we use (DB-API like)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any:
        """Run one statement and return its cursor."""
        ...

    def executemany(self, sql: str, parameters: Sequence[Sequence[Any]], /) -> Any:
        """Run one statement once per parameter row."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


@contextlib.contextmanager
def map_store_errors() -> Iterator[None]:
    """Turn the libsql driver's statement errors (it raises bare `ValueError`) into
    `StoreError`; use it around driver calls only, not around our own code."""
    try:
        yield
    except (ValueError, libsql.Error) as exc:
        raise StoreError(f"a database statement failed: {exc}") from exc


class MappedConnection:
    """A connection whose statement errors surface as `StoreError`."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        """Run one statement and return its cursor; raises StoreError if it fails."""
        with map_store_errors():
            return self._conn.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Sequence[Sequence[Any]], /) -> Any:
        """Run one statement per parameter row; raises StoreError if it fails."""
        with map_store_errors():
            return self._conn.executemany(sql, parameters)

    def close(self) -> None:
        """Close the connection; raises StoreError if it fails."""
        with map_store_errors():
            self._conn.close()


# Each entry moves the schema one version up and runs in its own transaction.
MIGRATIONS: tuple[str, ...] = (
    # 1: the device registry
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE devices (
        device_id  TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        cert_der   BLOB NOT NULL,
        k_pair     BLOB,
        disc_key   BLOB,
        state      TEXT NOT NULL
                   CHECK (state IN ('pending', 'trusted', 'blocked', 'revoked')),
        first_seen INTEGER NOT NULL,
        last_seen  INTEGER,
        addresses  TEXT NOT NULL DEFAULT '[]',
        relays     TEXT NOT NULL DEFAULT '[]',
        revoked_at INTEGER
    );
    """,
    # 2: per-device sync policy, state index, app tokens (stored hashed)
    """
    ALTER TABLE devices ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
    CREATE INDEX devices_by_state ON devices (state);
    CREATE TABLE app_tokens (
        token_id   TEXT PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        token_hash BLOB NOT NULL,
        scopes     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER
    );
    """,
    # 3: sync storage, collection declarations, the app event log
    """
    CREATE TABLE sync_docs (
        collection TEXT NOT NULL,
        doc_id     TEXT NOT NULL,
        state      BLOB NOT NULL,
        cursor     INTEGER NOT NULL,
        deleted    INTEGER NOT NULL,
        PRIMARY KEY (collection, doc_id)
    );
    CREATE INDEX sync_docs_by_cursor ON sync_docs (collection, cursor);
    CREATE TABLE sync_changes (
        origin TEXT NOT NULL,
        seq    INTEGER NOT NULL,
        change BLOB NOT NULL,
        PRIMARY KEY (origin, seq)
    );
    CREATE TABLE sync_vv (origin TEXT PRIMARY KEY, seq INTEGER NOT NULL);
    CREATE TABLE sync_quarantine (
        origin TEXT NOT NULL,
        seq    INTEGER NOT NULL,
        change BLOB NOT NULL,
        PRIMARY KEY (origin, seq)
    );
    CREATE TABLE collections (name TEXT PRIMARY KEY, fields TEXT NOT NULL);
    CREATE TABLE events (
        cursor     INTEGER PRIMARY KEY,
        collection TEXT NOT NULL,
        doc_id     TEXT NOT NULL,
        deleted    INTEGER NOT NULL,
        origin     TEXT NOT NULL
    );
    """,
)


def load_key(key_file: Path) -> str:
    """The database key: `P2PGATE_DB_KEY` if set, else the key file's content."""
    env = os.environ.get(ENV_DB_KEY)
    if env:
        return env
    return read_secret(key_file).decode().strip()


def create_key_file(key_file: Path) -> None:
    """Create a random 256-bit key file (mode 0600) unless one exists."""
    if not key_file.exists():
        write_secret(key_file, secrets.token_hex(32).encode() + b"\n")


def _split_statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def schema_version(conn: Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: Connection, target: int = len(MIGRATIONS)) -> int:
    """Bring the schema up to `target`, one transaction per step; return the version."""
    current = schema_version(conn)
    if current > len(MIGRATIONS):
        raise StoreError(
            f"the database has schema version {current}, newer than this p2pgate "
            f"understands ({len(MIGRATIONS)}); upgrade p2pgate"
        )
    for version in range(current + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_statements(MIGRATIONS[version - 1]):
                conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return max(current, target)


def connect(path: Path, key: str, durability: str = "full") -> Connection:
    """Open (creating if needed) the encrypted database and check the key.

    `durability` "full" syncs every commit to disk (survives power loss); "normal"
    syncs at WAL checkpoints (survives a crashed or killed process, not power loss).
    """
    synchronous = {"full": "FULL", "normal": "NORMAL"}[durability]
    if not key:
        raise StoreError("empty database key")
    try:
        conn: Connection = libsql.connect(str(path), encryption_key=key, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except ValueError as exc:
        if "not a database" in str(exc):
            raise StoreError(
                f"cannot open {path}: wrong database key, or not a p2pgate database"
            ) from None
        raise StoreError(f"cannot open {path}: {exc}") from None
    return conn


class Database:
    """The node's encrypted libSQL database, used from asyncio through one thread."""

    def __init__(self, executor: ThreadPoolExecutor, conn: Connection, path: Path) -> None:
        self._executor = executor
        self._conn = conn
        self.path = path
        self._closed = False

    @classmethod
    async def open(cls, path: Path, key: str, *, target_version: int | None = None,
                   durability: str = "full") -> Database:
        """Open the database on a fresh writer thread and run pending migrations."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2pgate-db")
        loop = asyncio.get_running_loop()

        def _open() -> Connection:
            conn = connect(path, key, durability)
            try:
                migrate(conn, len(MIGRATIONS) if target_version is None else target_version)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await loop.run_in_executor(executor, _open)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn, path)

    async def _submit(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StoreError("the database is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(conn)` on the database thread; `fn` opens any transaction it needs
        (plain reads need none; the documents service commits its own groups)."""
        return await self._submit(lambda: fn(self._conn))

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(conn)` on the database thread inside one transaction."""

        def _transaction() -> T:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

        return await self._submit(_transaction)

    async def schema_version(self) -> int:
        """The schema version the database is at (0 for a new one)."""
        return await self.run(schema_version)

    async def close(self) -> None:
        """Checkpoint and close; the writer thread ends."""
        if self._closed:
            return
        try:
            await self._submit(self._close_conn)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    def _close_conn(self) -> None:
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
