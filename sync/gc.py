"""Garbage collection of the change log and of deleted documents (pure functions).

What every peer acknowledged can leave the log: per origin, the changes up to the
lowest sequence all peers hold (`log_base`). A deleted document all of whose edits
are stamped at or before the `horizon` (the newest collected change per origin)
is purged. `Replica.collect_garbage` applies the plan.
"""

from __future__ import annotations

from collections.abc import Mapping

from sync.model import doc_visible
from sync.storage import GcState, Storage

__all__ = ["plan_collection", "within"]


def plan_collection(storage: Storage, gc: GcState, vv: Mapping[str, int],
                    acknowledged: Mapping[str, Mapping[str, int]]
                    ) -> tuple[GcState, int, list[tuple[str, str]]]:
    """The new GC state, how many logged changes it drops, and the documents to purge."""
    base, horizon = dict(gc.log_base), dict(gc.horizon)
    dropped = 0
    for origin, have in vv.items():
        safe = min((v.get(origin, 0) for v in acknowledged.values()), default=have)
        safe = min(safe, have)
        if safe <= base.get(origin, 0):
            continue
        last = storage.changes_since(origin, safe - 1, 1)
        dropped += safe - base.get(origin, 0)
        base[origin] = safe
        horizon[origin] = max(horizon.get(origin, 0), last[0].hlc)
    purge: list[tuple[str, str]] = []
    for collection in storage.collections():
        after = None
        while page := storage.list_docs(collection, after, 1000):
            purge.extend((collection, doc_id) for doc_id, state in page
                         if not doc_visible(state) and within(state.version, horizon))
            after = page[-1][0]
    return GcState(base, horizon), dropped, purge


def within(version: Mapping[str, int], horizon: Mapping[str, int]) -> bool:
    """Whether every edit of a document `version` is at or before `horizon`."""
    return bool(version) and all(hlc <= horizon.get(o, 0) for o, hlc in version.items())
