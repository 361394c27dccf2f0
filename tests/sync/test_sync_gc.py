"""Garbage collection: what every peer acknowledged leaves the log, deleted documents
are purged, and a peer that was left out converges when it comes back."""

import pytest
from sync_helpers import STORAGES, T0, make_replica, roundtrip_until_done, storages

from sync import Replica


def sync(a: Replica, b: Replica, now: float) -> None:
    roundtrip_until_done(a.connect(b.device_id, now), b.connect(a.device_id, now), now)


@pytest.mark.parametrize("kind", STORAGES)
def test_collected_replicas_still_converge_with_a_peer_that_was_away(kind):
    with storages(kind) as storage:
        a, b, c = (make_replica(n, storage=storage()) for n in "ABC")
        for i in range(20):
            a.put("c", f"d{i}", {"v": i}, T0 + i)
        sync(a, b, T0 + 30)
        sync(a, c, T0 + 30)  # C has every document, then goes away
        for i in range(10):
            a.delete("c", f"d{i}", T0 + 40 + i)
        a.patch("c", "d15", {"v": "edited"}, T0 + 55)
        sync(a, b, T0 + 60)

        # A and B collect what both hold; C is left out (away too long)
        dropped, purged = a.collect_garbage({"B": b.version_vector()})
        assert (dropped, purged) == (31, 10)
        assert b.collect_garbage({"A": a.version_vector()}) == (31, 10)
        for r in (a, b):
            assert r.storage.get_doc("c", "d0") is None  # the tombstone is gone
            assert r.storage.changes_since("A", 31, 10) == []
        reopened = Replica("A", a.storage)  # the collection survives a restart
        assert reopened.gc == a.gc

        # C comes back with the deleted documents still alive, and one new edit
        c.patch("c", "d3", {"v": "C wrote this after the delete"}, T0 + 100)
        c.put("c", "new", {"v": "new on C"}, T0 + 100)
        sync(a, c, T0 + 110)
        sync(a, b, T0 + 120)
        for r in (a, b, c):
            docs = dict(r.list_docs("c", limit=100))
            assert set(docs) == {"d3", "new", *(f"d{i}" for i in range(10, 20))}, r.device_id
            assert docs["d3"]["v"] == "C wrote this after the delete"
            assert docs["d15"]["v"] == "edited"
