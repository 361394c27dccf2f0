"""The node's own background loops recover from an injected failure (logged, run again)."""

from __future__ import annotations

import asyncio
import logging

from p2pgate.documents import Documents
from p2pgate.identity import Identity
from p2pgate.storage.database import Database, StoreError
from p2pgate.supervisor import Supervisor


async def test_garbage_collection_survives_a_failing_run(tmp_path, caplog):
    db = await Database.open(tmp_path / "db", "k" * 32)
    try:
        documents = await Documents.open(db, Identity.generate().device_id)
        real = documents.collect_garbage
        calls = []
        again = asyncio.Event()

        async def flaky(peer_timeout):
            calls.append(peer_timeout)
            if len(calls) == 1:
                raise StoreError("database disk image is malformed")
            if len(calls) == 3:
                again.set()
            return await real(peer_timeout)  # the real collection on the real file

        documents.collect_garbage = flaky
        supervisor = Supervisor(first_backoff=0.0)
        with caplog.at_level(logging.ERROR, "p2pgate.supervisor"):
            supervisor.spawn("garbage collection",
                             lambda: documents.collect_garbage_every(0.01, 3600.0))
            await asyncio.wait_for(again.wait(), 10)
        await supervisor.stop()
        assert supervisor.failures == {"garbage collection": 1}
        assert "garbage collection failed: StoreError: database disk image is malformed" in (
            caplog.text)
        assert calls == [3600.0] * len(calls)
    finally:
        await db.close()
