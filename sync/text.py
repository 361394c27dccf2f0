"""Collaborative text through pycrdt (Yjs), imported only when a text field is used.

A text field's state is Yjs update bytes; a splice produces the Yjs delta of that
edit; merging is Yjs' own update merge, commutative and idempotent. Each device
writes with a Yjs client ID derived from its device ID, so a device continues its
own Yjs clock across edits instead of growing the state vector.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from sync.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from pycrdt import Doc, Text

__all__ = ["merge_updates", "splice", "text_of", "validate_update"]

_ROOT = "t"


def _client_id(device_id: str) -> int:
    return int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:4], "big") or 1


def _load(update: bytes, client_id: int | None = None) -> tuple[Doc[Any], Text]:
    from pycrdt import Doc, Text

    doc: Doc[Any] = Doc(client_id=client_id)
    if update:
        doc.apply_update(update)
    return doc, doc.get(_ROOT, type=Text)


def text_of(update: bytes) -> str:
    """The text held by a state."""
    if not update:
        return ""
    return str(_load(update)[1])


def merge_updates(a: bytes, b: bytes) -> bytes:
    """The join of two text states (Yjs updates)."""
    from pycrdt import merge_updates as merge

    return merge(a, b)


def splice(update: bytes, device_id: str, pos: int, delete: int, insert: str) -> bytes:
    """The Yjs delta that deletes `delete` characters at `pos` and inserts `insert`.

    `delete=-1` deletes to the end (used to clear the observed text).
    """
    doc, text = _load(update, _client_id(device_id))
    length = len(text)
    if delete == -1:
        delete = length - pos
    if not (0 <= pos <= length and 0 <= delete <= length - pos):
        raise LocalProtocolError(f"splice out of range: pos={pos} delete={delete} len={length}")
    before = doc.get_state()
    with doc.transaction():
        if delete:
            del text[pos : pos + delete]
        if insert:
            text.insert(pos, insert)
    return doc.get_update(before)


def validate_update(update: bytes) -> None:
    """Raise RemoteProtocolError unless `update` is a Yjs update pycrdt accepts."""
    try:
        text_of(update)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as exc:  # pyo3 panics derive from BaseException
        raise RemoteProtocolError(f"bad text update: {type(exc).__name__}") from None
