"""Typed fields: each top-level field of a document is a small state-based CRDT.

Every state below is a join semilattice: `merge_field` is commutative, associative
and idempotent. Local operations produce *delta* states (a state holding just the
new information) and applying an operation is merging its delta, so the same
function serves local writes, remote changes and replica-to-replica merges.

Stamps are `(hlc, origin device ID)` tuples; tuple order is "HLC, then device ID".

- `lww`: the two best writes by stamp. The best is the value; the second is the
  field's *last conflict* if it was concurrent with the best, i.e. if the winner's
  writer had not seen a write at least that recent (`seen` < its HLC).
- `counter`: a PN-counter, per-origin cumulative (increments, decrements), plus a
  per-origin *baseline*: a reset (field cleared, document deleted or replaced)
  moves the baseline up to the totals it observed, so increments it had not seen
  survive it.
- `set`: an add-wins observed-remove set. Each add is tagged with its change's
  stamp; a remove (or reset) tombstones the (stamp, element) tags it observed, so a
  concurrent add survives.
- `text`: a Yjs document (pycrdt, imported lazily) held as update bytes; a reset
  deletes the characters it observed, so concurrent insertions survive.

Every state also records `last` (the newest stamp that wrote to it) and `cleared`
(the newest stamp that cleared it); a field is visible when it was written at or
after both its own clear and its document's delete (see `sync.model`). Values are
JSON; ranks order the types so that a field written with two different types by
misconfigured devices still converges (the higher rank wins).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ABSENT",
    "COUNTER",
    "FIELD_TYPES",
    "LWW",
    "SET",
    "TEXT",
    "TYPE_NAMES",
    "CounterState",
    "FieldState",
    "LwwState",
    "SetState",
    "Stamp",
    "TextState",
    "Tomb",
    "empty_state",
    "field_conflict",
    "field_value",
    "max_stamp",
    "merge_field",
    "set_key",
]

Stamp = tuple[int, str]
Tomb = tuple[int, str, str]  # (hlc, origin, element key): one removed add
LwwEntry = tuple[int, str, int, Any]  # (hlc, origin, seen, value)

LWW, COUNTER, SET, TEXT = 0, 1, 2, 3
FIELD_TYPES = {"lww": LWW, "counter": COUNTER, "set": SET, "text": TEXT}
TYPE_NAMES = {rank: name for name, rank in FIELD_TYPES.items()}


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


def max_stamp(a: Stamp | None, b: Stamp | None) -> Stamp | None:
    """The newer of two stamps, where None is older than any stamp."""
    if a is None:
        return b
    if b is None or a >= b:
        return a
    return b


def set_key(value: Any) -> str:
    """The canonical identity of a set element (JSON with sorted keys)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(slots=True)
class LwwState:
    """An `lww` field: the best two writes as (hlc, origin, seen, value), best first."""

    entries: tuple[LwwEntry, ...] = ()
    cleared: Stamp | None = None
    rank = LWW


@dataclass(slots=True)
class CounterState:
    """A `counter` field: per-origin cumulative (increments, decrements) and reset baselines."""

    totals: dict[str, tuple[int, int]] = field(default_factory=dict)
    base: dict[str, tuple[int, int]] = field(default_factory=dict)
    last: Stamp | None = None
    cleared: Stamp | None = None
    rank = COUNTER


@dataclass(slots=True)
class SetState:
    """A `set` field: elements by key with their add tags, and the tombstoned tags."""

    adds: dict[str, tuple[Any, frozenset[Stamp]]] = field(default_factory=dict)
    removed: frozenset[Tomb] = frozenset()
    last: Stamp | None = None
    cleared: Stamp | None = None
    rank = SET


@dataclass(slots=True)
class TextState:
    """A `text` field: a Yjs document held as update bytes."""

    update: bytes = b""
    last: Stamp | None = None
    cleared: Stamp | None = None
    rank = TEXT


FieldState = LwwState | CounterState | SetState | TextState


def empty_state(rank: int) -> FieldState:
    """The empty state of a field type, given its rank (LWW, COUNTER, SET or TEXT)."""
    if rank == LWW:
        return LwwState()
    if rank == COUNTER:
        return CounterState()
    if rank == SET:
        return SetState()
    return TextState()


def _merge_lww(a: LwwState, b: LwwState) -> LwwState:
    cleared = max_stamp(a.cleared, b.cleared)
    if not b.entries:
        return LwwState(a.entries, cleared)
    if not a.entries:
        return LwwState(b.entries, cleared)
    if len(b.entries) == 1:  # a single write: the common case, without sorting
        new = b.entries[0]
        key = (new[0], new[1])
        first = a.entries[0]
        if key > (first[0], first[1]):
            return LwwState((new, first), cleared)
        if key == (first[0], first[1]):
            return LwwState(a.entries, cleared)
        if len(a.entries) == 1:
            return LwwState((first, new), cleared)
        second = a.entries[1]
        if key > (second[0], second[1]):
            return LwwState((first, new), cleared)
        return LwwState(a.entries, cleared)
    by_stamp = {(e[0], e[1]): e for e in a.entries}
    for e in b.entries:
        by_stamp[(e[0], e[1])] = e
    if len(by_stamp) <= 1:
        return LwwState(tuple(by_stamp.values()), cleared)
    best = sorted(by_stamp.items(), reverse=True)[:2]
    return LwwState((best[0][1], best[1][1]), cleared)


def _max_pairs(
    a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    if not b:
        return a
    if not a:
        return b
    out = dict(a)
    for origin, (p, n) in b.items():
        old = out.get(origin)
        if old is None:
            out[origin] = (p, n)
        elif p > old[0] or n > old[1]:
            out[origin] = (max(p, old[0]), max(n, old[1]))
    return out


def _merge_counter(a: CounterState, b: CounterState) -> CounterState:
    return CounterState(
        _max_pairs(a.totals, b.totals),
        _max_pairs(a.base, b.base),
        max_stamp(a.last, b.last),
        max_stamp(a.cleared, b.cleared),
    )


def _add_to_set(a: SetState, b: SetState) -> SetState:
    """`_merge_set` when `b` removes nothing: the work grows with `b`, not with `a`.

    It relies on `a` holding no add tag its own tombstones remove, which every state
    does (merges remove them; `sync.statecodec` removes them from a peer's state)."""
    adds = dict(a.adds)
    dead = a.removed
    for key, (value, tags) in b.adds.items():
        if dead:
            tags = frozenset(t for t in tags if (t[0], t[1], key) not in dead)
        old = adds.get(key)
        if old is not None:
            adds[key] = (value, old[1] | tags)
        elif tags:
            adds[key] = (value, tags)
    removed = a.removed if not b.removed else a.removed | b.removed
    return SetState(adds, removed, max_stamp(a.last, b.last), max_stamp(a.cleared, b.cleared))


def _merge_set(a: SetState, b: SetState) -> SetState:
    if not b.removed and len(b.adds) < len(a.adds):
        return _add_to_set(a, b)
    removed = a.removed | b.removed
    adds: dict[str, tuple[Any, frozenset[Stamp]]] = {}
    for source in (a.adds, b.adds):
        for key, (value, tags) in source.items():
            old = adds.get(key)
            adds[key] = (value, tags if old is None else old[1] | tags)
    if removed:
        dead: dict[str, set[Stamp]] = {}
        for hlc, origin, key in removed:
            if key in adds:
                dead.setdefault(key, set()).add((hlc, origin))
        for key, stamps in dead.items():
            value, tags = adds[key]
            if tags <= stamps:
                del adds[key]
            else:
                adds[key] = (value, tags - stamps)
    return SetState(adds, removed, max_stamp(a.last, b.last), max_stamp(a.cleared, b.cleared))


def _merge_text(a: TextState, b: TextState) -> TextState:
    if not a.update or a.update == b.update:
        update = b.update or a.update
    elif not b.update:
        update = a.update
    else:
        from sync.text import merge_updates

        update = merge_updates(a.update, b.update)
    return TextState(update, max_stamp(a.last, b.last), max_stamp(a.cleared, b.cleared))


def merge_field(a: FieldState, b: FieldState) -> FieldState:
    """Join two states of one field."""
    if a.rank != b.rank:
        return a if a.rank > b.rank else b
    if isinstance(a, LwwState) and isinstance(b, LwwState):
        return _merge_lww(a, b)
    if isinstance(a, CounterState) and isinstance(b, CounterState):
        return _merge_counter(a, b)
    if isinstance(a, SetState) and isinstance(b, SetState):
        return _merge_set(a, b)
    if isinstance(a, TextState) and isinstance(b, TextState):
        return _merge_text(a, b)
    raise TypeError("not field states")


def _hidden_before(state: FieldState, deleted: Stamp | None) -> Stamp | None:
    return max_stamp(state.cleared, deleted)


def field_value(state: FieldState, deleted: Stamp | None = None) -> Any:
    """The field's visible value, or ABSENT when cleared, deleted or never written."""
    hide = _hidden_before(state, deleted)
    if isinstance(state, LwwState):
        if not state.entries:
            return ABSENT
        best = state.entries[0]
        if hide is not None and (best[0], best[1]) < hide:
            return ABSENT
        return best[3]
    last = state.last
    if last is None or (hide is not None and last < hide):
        return ABSENT
    if isinstance(state, CounterState):
        total = 0
        base = state.base
        for origin, (p, n) in state.totals.items():
            bp, bn = base.get(origin, (0, 0))
            total += max(0, p - bp) - max(0, n - bn)
        return total
    if isinstance(state, SetState):
        return [state.adds[k][0] for k in sorted(state.adds)]
    from sync.text import text_of

    return text_of(state.update)


def field_conflict(state: FieldState, deleted: Stamp | None = None) -> LwwEntry | None:
    """The last concurrent `lww` write that lost, if it is still visible."""
    if not isinstance(state, LwwState) or len(state.entries) < 2:
        return None
    best, second = state.entries
    if second[0] <= best[2]:
        return None
    hide = _hidden_before(state, deleted)
    if hide is not None and (second[0], second[1]) < hide:
        return None
    return second
