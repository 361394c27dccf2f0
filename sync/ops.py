"""Turning local operations (put, merge-patch, delete, ...) into edits.

Everything here validates caller input and raises LocalProtocolError; nothing is
stored. The replica stamps the result and applies it like a remote change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sync.errors import LocalProtocolError
from sync.fields import (
    ABSENT,
    COUNTER,
    LWW,
    SET,
    TEXT,
    TYPE_NAMES,
    CounterState,
    FieldState,
    LwwState,
    SetState,
    TextState,
    field_value,
    set_key,
)
from sync.model import (
    F_DELETE,
    F_TOUCH,
    K_ADD,
    K_CLEAR,
    K_INC,
    K_LWW,
    K_REMOVE,
    K_RESET,
    K_TEXT,
    K_TEXT_QUIET,
    K_UNSET,
    DocState,
    FieldOp,
)

__all__ = [
    "MAX_CHANGE_BYTES",
    "MAX_DEPTH",
    "MAX_NAME_CHARS",
    "OPERATORS",
    "check_name",
    "delete_ops",
    "patch_ops",
    "put_ops",
]

MAX_CHANGE_BYTES = 1 << 20  # an upper bound of one change's encoded size
MAX_NAME_CHARS = 256
MAX_DEPTH = 32
INT_RANGE = (-(2**63), 2**63 - 1)
OPERATORS = ("$inc", "$add", "$remove", "$splice")


def check_name(kind: str, name: object) -> str:
    """Return `name` if it is a non-empty string of at most 256 chars; else LocalProtocolError."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise LocalProtocolError(f"{kind} must be a non-empty string of at most 256 characters")
    return name


def _json_size(value: Any, depth: int = 0) -> int:
    """Validate a JSON value and bound its encoded size from above."""
    kind = type(value)
    if kind is str:
        return 4 * len(value) + 5
    if value is None or kind is bool:
        return 1
    if kind is int:
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:
            raise LocalProtocolError("integers must fit in 64 bits")
        return 10
    if kind is float:
        if not math.isfinite(value):
            raise LocalProtocolError("numbers must be finite")
        return 9
    if depth >= MAX_DEPTH:
        raise LocalProtocolError("value nested too deeply")
    if kind is list:
        return 5 + sum(_json_size(v, depth + 1) for v in value)
    if kind is dict:
        size = 5
        for k, v in value.items():
            if type(k) is not str:
                raise LocalProtocolError("object keys must be strings")
            size += 4 * len(k) + 5 + _json_size(v, depth + 1)
        return size
    raise LocalProtocolError(f"not a JSON value: {kind.__name__}")


class _Builder:
    """Collects the field operations of one edit and their size."""

    __slots__ = ("deleted", "device", "doc", "ops", "size", "types")

    def __init__(self, device: str, doc: DocState | None, types: Mapping[str, int]) -> None:
        self.device = device
        self.doc = doc
        self.deleted = None if doc is None else doc.deleted
        self.types = types
        self.ops: list[FieldOp] = []
        self.size = 0

    def state(self, name: str) -> FieldState | None:
        return None if self.doc is None else self.doc.fields.get(name)

    def add(self, op: FieldOp, size: int) -> None:
        self.ops.append(op)
        self.size += size + 4 * len(op[1]) + 16
        if self.size > MAX_CHANGE_BYTES:
            raise LocalProtocolError("change too large")

    def reset(self, name: str, state: FieldState | None) -> bytes | None:
        """Remove what this device observed of an observed-remove field.

        Returns the text state after the reset, for a text field (None otherwise).
        """
        if isinstance(state, CounterState) and state.totals:
            self.add((K_RESET, name, dict(state.totals), None), 24 * len(state.totals))
        elif isinstance(state, SetState) and state.adds:
            tags = frozenset((h, o, k) for k, (_, ts) in state.adds.items() for h, o in ts)
            self.add((K_UNSET, name, tags, None), sum(16 + 4 * len(t[2]) for t in tags))
        elif isinstance(state, TextState) and state.update:
            from sync.text import merge_updates, splice, text_of

            if not text_of(state.update):
                return state.update
            delta = splice(state.update, self.device, 0, -1, "")
            self.add((K_TEXT_QUIET, name, delta, None), len(delta))
            return merge_updates(state.update, delta)
        return None

    def write(self, name: str, value: Any) -> None:
        """Set a field to `value` according to its declared type."""
        check_name("field name", name)
        rank = self.types.get(name, LWW)
        state = self.state(name)
        if rank == LWW:
            size = _json_size(value)
            seen = state.entries[0][0] if isinstance(state, LwwState) and state.entries else 0
            self.add((K_LWW, name, seen, value), size)
        elif rank == COUNTER:
            if type(value) is not int:
                raise LocalProtocolError(f"{name} is a counter: its value must be an integer")
            self.reset(name, state)
            self._increment(name, state, value)
        elif rank == SET:
            if type(value) is not list:
                raise LocalProtocolError(f"{name} is a set: its value must be a list")
            self.reset(name, state)
            if value:
                self.add((K_ADD, name, tuple(value), None), _json_size(value))
        else:
            if type(value) is not str:
                raise LocalProtocolError(f"{name} is text: its value must be a string")
            update = state.update if isinstance(state, TextState) else b""
            self._splice(name, update, 0, -1, value)

    def _increment(self, name: str, state: FieldState | None, by: int) -> None:
        p, n = (0, 0)
        if isinstance(state, CounterState):
            p, n = state.totals.get(self.device, (0, 0))
        if by >= 0:
            p += by
        else:
            n -= by
        if p > INT_RANGE[1] or n > INT_RANGE[1]:
            raise LocalProtocolError("counter out of range")
        self.add((K_INC, name, p, n), 20)

    def _splice(self, name: str, update: bytes, pos: int, delete: int, insert: str) -> None:
        from sync.text import splice

        if 4 * len(insert) > MAX_CHANGE_BYTES:
            raise LocalProtocolError("change too large")
        delta = splice(update, self.device, pos, delete, insert)
        self.add((K_TEXT, name, delta, None), len(delta))

    def operator(self, name: str, op: str, arg: Any) -> None:
        """Apply `{"$inc": n}`, `{"$add": [...]}`, `{"$remove": [...]}` or `{"$splice": [...]}`.

        A field hidden by a delete or clear is reset first, so it starts empty.
        """
        check_name("field name", name)
        rank = self.types.get(name, LWW)
        want = {"$inc": COUNTER, "$add": SET, "$remove": SET, "$splice": TEXT}[op]
        if rank != want:
            kind = TYPE_NAMES[rank]
            raise LocalProtocolError(f"{op} needs a {TYPE_NAMES[want]} field; {name} is {kind}")
        state = self.state(name)
        hidden = state is not None and field_value(state, self.deleted) is ABSENT
        after_reset = self.reset(name, state) if hidden else None
        if op == "$inc":
            if type(arg) is not int:
                raise LocalProtocolError("$inc takes an integer")
            self._increment(name, state, arg)
        elif op == "$add":
            if type(arg) is not list or not arg:
                raise LocalProtocolError("$add takes a non-empty list")
            self.add((K_ADD, name, tuple(arg), None), _json_size(arg))
        elif op == "$remove":
            if type(arg) is not list or not arg:
                raise LocalProtocolError("$remove takes a non-empty list")
            _json_size(arg)
            adds = state.adds if isinstance(state, SetState) and not hidden else {}
            keys = [set_key(v) for v in arg]
            tags = frozenset((h, o, k) for k in keys if (e := adds.get(k)) for h, o in e[1])
            self.add((K_REMOVE, name, tags, None), sum(16 + 4 * len(t[2]) for t in tags))
        else:
            if (
                type(arg) is not list
                or len(arg) != 3
                or type(arg[0]) is not int
                or type(arg[1]) is not int
                or type(arg[2]) is not str
                or arg[0] < 0
                or arg[1] < 0
            ):
                raise LocalProtocolError("$splice takes [position, delete count, insert text]")
            update = state.update if isinstance(state, TextState) else b""
            if after_reset is not None:
                update = after_reset
            self._splice(name, update, arg[0], arg[1], arg[2])

    def clear(self, name: str) -> None:
        """Merge-patch null: hide the field as of this change."""
        check_name("field name", name)
        state = self.state(name)
        rank = self.types.get(name, LWW) if state is None else state.rank
        self.add((K_CLEAR, name, rank, None), 4)
        self.reset(name, state)


def put_ops(
    device: str, doc: DocState | None, types: Mapping[str, int], values: Mapping[str, Any]
) -> tuple[int, tuple[FieldOp, ...]]:
    """Replace the whole document: a delete and the new fields in one edit."""
    if not isinstance(values, Mapping):
        raise LocalProtocolError("a document must be a JSON object")
    b = _Builder(device, doc, types)
    if doc is not None:
        for name, state in doc.fields.items():
            if name not in values:
                b.reset(name, state)
    for name, value in values.items():
        b.write(name, value)
    return F_DELETE | F_TOUCH, tuple(b.ops)


def delete_ops(device: str, doc: DocState | None) -> tuple[int, tuple[FieldOp, ...]]:
    """Delete the document: a tombstone plus resets of what this device observed."""
    b = _Builder(device, doc, {})
    if doc is not None:
        for name, state in doc.fields.items():
            b.reset(name, state)
    return F_DELETE, tuple(b.ops)


def patch_ops(
    device: str, doc: DocState | None, types: Mapping[str, int], patch: Mapping[str, Any]
) -> tuple[int, tuple[FieldOp, ...]]:
    """A per-field merge patch: a value sets, null clears, an operator object edits."""
    if not isinstance(patch, Mapping):
        raise LocalProtocolError("a patch must be a JSON object")
    b = _Builder(device, doc, types)
    fields = None if doc is None else doc.fields
    for name, value in patch.items():
        kind = type(value)
        if (kind is int or kind is float or kind is bool or kind is str) and name not in types:
            # an undeclared (lww) field set to a scalar: the common case, inlined
            if type(name) is not str or not 0 < len(name) <= MAX_NAME_CHARS:
                check_name("field name", name)
            state = None if fields is None else fields.get(name)
            seen = state.entries[0][0] if type(state) is LwwState and state.entries else 0
            b.add((K_LWW, name, seen, value), _json_size(value))
        elif value is None:
            b.clear(name)
        elif type(value) is dict and len(value) == 1 and next(iter(value)) in OPERATORS:
            op, arg = next(iter(value.items()))
            b.operator(name, op, arg)
        else:
            b.write(name, value)
    return F_TOUCH, tuple(b.ops)
