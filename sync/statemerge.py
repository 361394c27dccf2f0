"""Joining whole document states from a peer (the replica's half of `sync.statesync`).

`plan_merge` decides, document by document, what a Docs message changes here: a
state stamped too far ahead is left aside (to be asked for again), a document we
purged as deleted is to be deleted again (a zombie), a state the policy refuses is
reported, and everything else is joined with ours (`merge_docs`). `log_forwarded`
then records the joined states as our own changes, so that complete replicas get
them through the log too. `item_set` lists what a state session reconciles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sync.clock import COUNTER_BITS, HybridClock
from sync.events import ChangeRefused, ClockSkewDetected, DocumentChanged, Event
from sync.gc import within
from sync.model import (
    K_STATE,
    Change,
    DocState,
    Edit,
    doc_visible,
    filter_view,
    merge_docs,
    newest_stamp,
)
from sync.policy import Flow
from sync.rbsr import ItemSet, doc_key, item_digest
from sync.storage import Batch, Storage

__all__ = ["FORWARD_EDITS", "MergePlan", "item_set", "log_forwarded", "plan_merge",
           "too_far_ahead"]

FORWARD_EDITS = 32  # merged states per forwarding change

DocKey = tuple[str, str]


@dataclass(slots=True)
class MergePlan:
    """What a batch of peer states does here."""

    batch: Batch = field(default_factory=Batch)  # the joined states, to store
    edits: list[Edit] = field(default_factory=list)  # one forwarding edit per joined state
    echo: set[DocKey] = field(default_factory=set)  # joined state == the peer's state
    zombies: list[tuple[str, str, DocState]] = field(default_factory=list)  # delete again
    events: list[Event] = field(default_factory=list)
    retry: float | None = None  # when to ask again for the states left aside


def too_far_ahead(hlc: int, now: float, max_skew: float) -> bool:
    """Whether a stamp is more than `max_skew` seconds ahead of `now`."""
    return (hlc >> COUNTER_BITS) > int(now * 1000) + int(max_skew * 1000)


def plan_merge(storage: Storage, clock: HybridClock, horizon: dict[str, int], max_skew: float,
               peer_id: str, docs: list[tuple[str, str, DocState]], flow: Flow,
               now: float) -> MergePlan:
    """Decide what each state in `docs` does here; the clock observes joined states."""
    plan = MergePlan()
    for collection, doc_id, state in docs:
        key = (collection, doc_id)
        newest = newest_stamp(state)
        if too_far_ahead(newest, now, max_skew):
            ahead = clock.ahead_by(newest, now)
            plan.events.append(ClockSkewDetected(peer_id, "", 0, newest, ahead))
            at = now + ahead - max_skew + 1
            plan.retry = at if plan.retry is None else min(plan.retry, at)
            continue
        old = plan.batch.docs.get(key) or storage.get_doc(collection, doc_id)
        if old is None and within(state.version, horizon):
            if doc_visible(state):  # we purged it as deleted: delete it again
                plan.zombies.append((collection, doc_id, state))
            continue
        new = state if old is None else merge_docs(old, state)
        if old is not None and new.version == old.version:
            continue
        if not flow.may_receive(collection, filter_view(new)):
            plan.events.append(ChangeRefused(peer_id, collection, doc_id,
                                             "the policy for this device refuses it"))
            continue
        clock.observe(newest, now)
        plan.batch.docs[key] = new
        plan.edits.append(Edit(collection, doc_id, 0, ((K_STATE, "*", new, None),)))
        if new.version == state.version:
            plan.echo.add(key)
    return plan


def log_forwarded(plan: MergePlan, device_id: str, seq: int, clock: HybridClock,
                  peer_id: str, now: float) -> int:
    """Add the plan's edits to its batch as our changes after `seq`, `FORWARD_EDITS` per
    change, with their events; returns the last sequence used."""
    batch = plan.batch
    for start in range(0, len(plan.edits), FORWARD_EDITS):
        seq += 1
        hlc = clock.tick(now)
        chunk = tuple(plan.edits[start : start + FORWARD_EDITS])
        batch.changes.append(Change(device_id, seq, hlc, chunk))
        plan.events.extend(
            DocumentChanged(e.collection, e.doc_id, peer_id, seq, hlc,
                            not doc_visible(batch.docs[(e.collection, e.doc_id)]))
            for e in chunk)
    batch.clock = clock.last
    return seq


def item_set(storage: Storage, flow: Flow) -> ItemSet:
    """The documents we may exchange under `flow`, as reconciliation items."""
    items = []
    for collection in storage.collections():
        if not flow.shared(collection):
            continue
        filtered = flow.filtered(collection)
        after = None
        while True:
            page = storage.list_docs(collection, after, 1000)
            for doc_id, state in page:
                if filtered and not flow.matches(collection, filter_view(state)):
                    continue
                key = doc_key(collection, doc_id)
                items.append((key, item_digest(key, state.version)))
            if len(page) < 1000:
                break
            after = page[-1][0]
    return ItemSet(items)
