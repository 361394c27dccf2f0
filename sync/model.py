"""Documents, changes and how a change edits a document.

A *change* is what one local operation produces: origin device, per-origin
sequence number (1, 2, ...), one HLC stamp, and edits to one or more documents. A
change's `signature` is empty for now; the wire format carries it so an origin
can sign batches later. An *edit* flags the document as deleted and/or touched at
the change's stamp and carries field operations, each of which is a delta state
merged into one field (see `sync.fields`).

Delete versus a concurrent update -- the rule
---------------------------------------------
A document's existence is last-writer-wins by stamp (HLC, then device ID): a
delete at stamp d hides the document unless some update was stamped at or after
d. Any write that happened after its writer saw the delete has a larger HLC, so
it always resurrects the document; between truly concurrent operations the larger
stamp wins. A resurrected document shows only what the delete did not remove:

- `lww` fields written at or after d (older ones stay hidden, like a write of
  "absent" to every field at d);
- for `counter`, `set` and `text` fields, which are observed-remove types, the
  increments, additions and insertions the deleting device had not seen.

`put` replaces a document: it is a delete and the new fields in one change, so
the same rule applies to it. A merge-patch `null` clears one field the same way.
A write to a field that is hidden locally first resets what this device observed
of it, so an operation on a deleted document starts from an empty document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sync.fields import (
    ABSENT,
    CounterState,
    FieldState,
    LwwState,
    SetState,
    Stamp,
    TextState,
    empty_state,
    field_conflict,
    field_value,
    max_stamp,
    merge_field,
    set_key,
)

__all__ = [
    "F_DELETE",
    "F_TOUCH",
    "K_ADD",
    "K_CLEAR",
    "K_INC",
    "K_LWW",
    "K_REMOVE",
    "K_RESET",
    "K_STATE",
    "K_TEXT",
    "K_TEXT_QUIET",
    "K_UNSET",
    "Change",
    "DocState",
    "Edit",
    "FieldOp",
    "apply_edit",
    "contains_edit",
    "filter_view",
    "newest_stamp",
    "doc_conflicts",
    "doc_visible",
    "merge_docs",
    "op_delta",
    "render_doc",
]

F_DELETE = 1
F_TOUCH = 2

# Field operation kinds: (kind, field name, a, b)
K_LWW = 1  # a = seen HLC, b = value
K_CLEAR = 2  # a = field type rank: hide what was written before this stamp
K_INC = 3  # a, b = origin's new cumulative (increments, decrements)
K_RESET = 4  # a = {origin: (p, n)} baseline observed
K_ADD = 5  # a = tuple of values, tagged with the change stamp
K_REMOVE = 6  # a = frozenset of (hlc, origin, element key) removed (a write: updates `last`)
K_UNSET = 7  # a = the same, removed by a reset (does not update `last`)
K_TEXT = 8  # a = Yjs update (a write)
K_TEXT_QUIET = 9  # a = Yjs update of a reset (does not update `last`)
K_STATE = 10  # a = a whole DocState, joined in (a replica forwarding what it merged)

FieldOp = tuple[int, str, Any, Any]


@dataclass(slots=True)
class Edit:
    """The part of a change that concerns one document."""

    collection: str
    doc_id: str
    flags: int
    ops: tuple[FieldOp, ...]


@dataclass(slots=True)
class Change:
    """One local operation, as it travels between replicas."""

    origin: str
    seq: int
    hlc: int
    edits: tuple[Edit, ...]
    signature: bytes = b""


@dataclass(slots=True)
class DocState:
    """Everything a replica keeps about one document (visible or not).

    `version` maps each origin to the HLC of its newest edit merged in. Edits of one
    origin reach a document in HLC order (changes apply in sequence order, states
    are joined whole), so a state holds *every* edit of origin o stamped at or
    before `version[o]`: two states with equal versions are equal, and an edit
    stamped at or before its origin's entry is already in.
    """

    deleted: Stamp | None = None
    touched: Stamp | None = None
    fields: dict[str, FieldState] = field(default_factory=dict)
    version: dict[str, int] = field(default_factory=dict)


def contains_edit(doc: DocState | None, stamp: Stamp) -> bool:
    """Whether the edit stamped `stamp` is already merged into `doc`."""
    return doc is not None and doc.version.get(stamp[1], 0) >= stamp[0]


def _max_version(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for origin, hlc in b.items():
        if hlc > out.get(origin, 0):
            out[origin] = hlc
    return out


def op_delta(op: FieldOp, stamp: Stamp) -> FieldState:
    """The delta state a field operation merges into its field."""
    kind, _name, a, b = op
    if kind == K_LWW:
        return LwwState(((stamp[0], stamp[1], a, b),))
    if kind == K_INC:
        return CounterState({stamp[1]: (a, b)}, {}, stamp)
    if kind == K_ADD:
        tags = frozenset((stamp,))
        return SetState({set_key(v): (v, tags) for v in a}, frozenset(), stamp)
    if kind == K_TEXT:
        return TextState(a, stamp)
    if kind == K_CLEAR:
        state = empty_state(a)
        state.cleared = stamp
        return state
    if kind == K_RESET:
        return CounterState({}, dict(a))
    if kind == K_REMOVE:
        return SetState({}, a, stamp)
    if kind == K_UNSET:
        return SetState({}, a)
    if kind == K_TEXT_QUIET:
        return TextState(a)
    if kind == K_STATE:
        raise AssertionError("a forwarded state is not a field operation")
    raise AssertionError(f"unknown op kind {kind}")


def apply_edit(doc: DocState | None, edit: Edit, stamp: Stamp) -> DocState:
    """A new state: `doc` with `edit` (stamped `stamp`) merged in. `doc` is not changed.

    A forwarded state (`K_STATE`) is joined in whole; it does not count as an edit of
    the forwarding device.
    """
    if edit.ops and edit.ops[0][0] == K_STATE:
        forwarded: DocState = edit.ops[0][2]
        return forwarded if doc is None else merge_docs(doc, forwarded)
    if doc is None:
        deleted = touched = None
        fields: dict[str, FieldState] = {}
        version = {stamp[1]: stamp[0]}
    else:
        deleted, touched, fields = doc.deleted, doc.touched, dict(doc.fields)
        version = dict(doc.version)
        if stamp[0] > version.get(stamp[1], 0):
            version[stamp[1]] = stamp[0]
    flags = edit.flags
    if flags & F_DELETE and (deleted is None or stamp > deleted):
        deleted = stamp
    if flags & F_TOUCH and (touched is None or stamp > touched):
        touched = stamp
    for op in edit.ops:
        name = op[1]
        delta = op_delta(op, stamp)
        old = fields.get(name)
        fields[name] = delta if old is None else merge_field(old, delta)
    return DocState(deleted, touched, fields, version)


def merge_docs(a: DocState, b: DocState) -> DocState:
    """Join two states of one document (used by tests and full-state merges)."""
    fields = dict(a.fields)
    for name, state in b.fields.items():
        old = fields.get(name)
        fields[name] = state if old is None else merge_field(old, state)
    return DocState(max_stamp(a.deleted, b.deleted), max_stamp(a.touched, b.touched), fields,
                    _max_version(a.version, b.version))


def newest_stamp(doc: DocState) -> int:
    """The HLC of the newest edit in `doc` (0 if none)."""
    return max(doc.version.values(), default=0)


def filter_view(doc: DocState) -> dict[str, Any]:
    """The fields a document filter sees: the latest values, even of a deleted document,
    so that a delete reaches every replica that held the document."""
    out = {}
    for name, state in doc.fields.items():
        value = field_value(state)
        if value is not ABSENT:
            out[name] = value
    return out


def doc_visible(doc: DocState | None) -> bool:
    """Whether a document exists for apps: touched, and not deleted after its last touch."""
    if doc is None or doc.touched is None:
        return False
    return doc.deleted is None or doc.touched >= doc.deleted


def render_doc(doc: DocState | None) -> dict[str, Any] | None:
    """The document as apps see it, or None when it is deleted or unknown."""
    if doc is None or not doc_visible(doc):
        return None
    deleted = doc.deleted
    out = {}
    for name, state in doc.fields.items():
        if type(state) is LwwState and state.cleared is None and state.entries:
            best = state.entries[0]  # the common case, inlined
            if deleted is None or (best[0], best[1]) >= deleted:
                out[name] = best[3]
            continue
        value = field_value(state, deleted)
        if value is not ABSENT:
            out[name] = value
    return out


def doc_conflicts(doc: DocState | None) -> dict[str, dict[str, Any]]:
    """Per `lww` field, the last concurrent write that lost: value, hlc, device."""
    if doc is None or not doc_visible(doc):
        return {}
    out = {}
    for name, state in doc.fields.items():
        entry = field_conflict(state, doc.deleted)
        if entry is not None:
            out[name] = {"value": entry[3], "hlc": entry[0], "device": entry[1]}
    return out
