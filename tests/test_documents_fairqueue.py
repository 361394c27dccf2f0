"""The write queue's fair shares (deficit round robin on measured cost, passed in), and
its bound per writer."""

from __future__ import annotations

import asyncio

from p2pgate.documents import Documents, DocumentView, WritesBacklogged
from p2pgate.documents.fairqueue import FairQueue
from p2pgate.documents.service import MAX_QUEUED
from p2pgate.identity import Identity
from p2pgate.storage.database import Database


def _run(queue: FairQueue[int], costs: dict[str, float], groups: int) -> list[list[str]]:
    """Form `groups` groups, charging each item its writer's cost; the writers per group."""
    out = []
    for _ in range(groups):
        group = queue.next_group()
        for writer, _item in group:
            queue.charge(writer, costs[writer])
        out.append([w for w, _ in group])
    return out


def test_a_cheap_writer_is_not_held_behind_a_costly_ones_backlog():
    queue: FairQueue[int] = FairQueue()
    for i in range(50):
        queue.push("costly", i)
    _run(queue, {"costly": 0.3}, 1)  # its first write teaches the queue what it costs
    queue.push("cheap", 0)
    groups = _run(queue, {"costly": 0.3, "cheap": 0.002}, 2)
    assert "cheap" in groups[0] + groups[1]
    assert (groups[0] + groups[1]).count("costly") <= 1  # at most one costly write ahead


def test_active_writers_get_about_the_same_database_time():
    queue: FairQueue[int] = FairQueue()
    costs = {"costly": 0.1, "cheap": 0.002}
    for i in range(2000):
        queue.push("costly", i)
        queue.push("cheap", i)
    spent = {"costly": 0.0, "cheap": 0.0}
    for group in _run(queue, costs, 300):
        for writer in group:
            spent[writer] += costs[writer]
    assert 0.7 < spent["cheap"] / spent["costly"] < 1.4


def test_each_writer_keeps_its_order_and_a_lone_writer_gets_everything():
    queue: FairQueue[int] = FairQueue()
    for i in range(30):
        queue.push("a", i)
    items = []
    while queue:
        group = queue.next_group()
        assert group
        items += [item for _, item in group]
        for writer, _ in group:
            queue.charge(writer, 0.5)
    assert items == list(range(30))
    assert queue.queued("a") == 0


async def test_a_writer_with_too_many_writes_waiting_is_told_to_retry(tmp_path):
    db = await Database.open(tmp_path / "db", "k" * 32)
    try:
        documents = await Documents.open(db, Identity.generate().device_id)
        writes = [documents.put("notes", f"n{i}", {"i": i}, None, writer="busy")
                  for i in range(MAX_QUEUED + 5)]
        other = documents.put("notes", "other", {"i": 0}, None, writer="calm")
        results = await asyncio.gather(*writes, other, return_exceptions=True)
        refused = [r for r in results if isinstance(r, WritesBacklogged)]
        assert len(refused) == 5 and refused[0].retry_after > 0
        assert not isinstance(results[-1], BaseException)  # another writer is not affected
        assert sum(isinstance(r, DocumentView) for r in results) == MAX_QUEUED + 1
    finally:
        await db.close()
