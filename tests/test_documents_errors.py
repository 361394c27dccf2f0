"""libSQL statement errors reach the documents service as our own `StoreError`."""

from __future__ import annotations

import pytest

from p2pgate.documents import Documents
from p2pgate.identity import Identity
from p2pgate.identity.deviceid import DeviceID
from p2pgate.storage.database import Database, MappedConnection, StoreError, connect


def test_a_failed_statement_is_a_store_error(tmp_path):
    conn = MappedConnection(connect(tmp_path / "db", "k" * 32, durability="normal"))
    try:
        conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (?)", (1,))
        with pytest.raises(StoreError, match="UNIQUE constraint failed"):
            conn.execute("INSERT INTO t VALUES (?)", (1,))
        with pytest.raises(StoreError, match="no such table"):
            conn.executemany("INSERT INTO nope VALUES (?)", [(1,)])
    finally:
        conn.close()


async def test_documents_surface_a_damaged_schema_as_a_store_error(tmp_path):
    db = await Database.open(tmp_path / "db", "k" * 32)
    try:
        documents = await Documents.open(db, DeviceID.parse(str(Identity.generate().device_id)))
        await db.run(lambda conn: conn.execute("DROP TABLE sync_docs"))
        with pytest.raises(StoreError, match="no such table"):
            await documents.put("notes", "a", {"body": "x"}, None)
    finally:
        await db.close()
