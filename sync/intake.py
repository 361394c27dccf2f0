"""Taking in a peer's logged changes: strict sequence order, and the quarantine.

Pure functions over the replica's version vector and quarantine: each returns an
`Intake` (the batch to store atomically, the new vector and quarantine, events),
which `Replica` commits. A change whose sequence is a duplicate or leaves a gap is
skipped (not acknowledged, so the sender retransmits it). A change stamped more
than `max_skew` ahead is held, and its origin's later changes queue behind it,
until the clock catches up or an admin accepts it (`release_held`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sync.clock import HybridClock
from sync.events import ClockSkewDetected, DocumentChanged, Event, QuarantineReleased
from sync.model import K_STATE, Change, apply_edit, contains_edit, doc_visible
from sync.statemerge import too_far_ahead
from sync.storage import Batch, Storage

__all__ = ["Intake", "apply_change", "release_held", "take_changes"]


@dataclass(slots=True)
class Intake:
    """What taking in changes does: store `batch`, then adopt `vv` and `held`."""

    vv: dict[str, int]
    held: dict[str, list[Change]]
    batch: Batch = field(default_factory=Batch)
    events: list[Event] = field(default_factory=list)


def _start(vv: dict[str, int], held: dict[str, list[Change]]) -> Intake:
    return Intake(dict(vv), {o: list(cs) for o, cs in held.items()})


def take_changes(storage: Storage, clock: HybridClock, vv: dict[str, int],
                 held: dict[str, list[Change]], peer_id: str, changes: list[Change],
                 now: float, max_skew: float, quarantine_limit: int) -> Intake:
    """Apply each next-in-sequence change, or hold it (at most `quarantine_limit` held)."""
    intake = _start(vv, held)
    nheld = sum(len(cs) for cs in intake.held.values())
    for change in changes:
        origin = change.origin
        queue = intake.held.get(origin)
        if change.seq != intake.vv.get(origin, 0) + (len(queue) if queue else 0) + 1:
            continue
        if queue or too_far_ahead(change.hlc, now, max_skew):
            if nheld >= quarantine_limit:
                continue
            if not queue:
                ahead = clock.ahead_by(change.hlc, now)
                intake.events.append(
                    ClockSkewDetected(peer_id, origin, change.seq, change.hlc, ahead))
            intake.held.setdefault(origin, []).append(change)
            intake.batch.hold.append(change)
            nheld += 1
            continue
        apply_change(storage, clock, change, intake, now)
        intake.vv[origin] = change.seq
    return intake


def release_held(storage: Storage, clock: HybridClock, vv: dict[str, int],
                 held: dict[str, list[Change]], now: float, max_skew: float,
                 accept: str | None = None) -> Intake:
    """Apply held changes whose time has come (and `accept`'s first one regardless)."""
    intake = _start(vv, held)
    for origin, queue in intake.held.items():
        forced = origin == accept
        first = queue[0]
        while queue:
            change = queue[0]
            if not forced and too_far_ahead(change.hlc, now, max_skew):
                if change is not first:
                    ahead = clock.ahead_by(change.hlc, now)
                    intake.events.append(
                        ClockSkewDetected("", origin, change.seq, change.hlc, ahead))
                break
            queue.pop(0)
            intake.events.append(QuarantineReleased(origin, change.seq, forced))
            forced = False
            intake.batch.release.append((origin, change.seq))
            apply_change(storage, clock, change, intake, now)
            intake.vv[origin] = change.seq
    return intake


def apply_change(storage: Storage, clock: HybridClock, change: Change, intake: Intake,
                 now: float) -> None:
    """Add `change`'s edits to the intake's batch (skipping edits we already hold)."""
    stamp = (change.hlc, change.origin)
    docs = intake.batch.docs
    for edit in change.edits:
        key = (edit.collection, edit.doc_id)
        doc = docs.get(key)
        if doc is None:
            doc = storage.get_doc(*key)
        forwarded = bool(edit.ops) and edit.ops[0][0] == K_STATE
        if not forwarded and contains_edit(doc, stamp):
            continue  # it reached us inside a forwarded state already
        new = apply_edit(doc, edit, stamp)
        if forwarded and doc is not None and new.version == doc.version:
            continue
        docs[key] = new
        intake.events.append(DocumentChanged(edit.collection, edit.doc_id, change.origin,
                                             change.seq, change.hlc, not doc_visible(new)))
    clock.observe(change.hlc, now)
    intake.batch.changes.append(change)
