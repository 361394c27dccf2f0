"""Cursors and versions as each caller sees them: the admin token sees the node's own
numbers; an app token sees them through a keyed permutation of its own.

The store's cursor counts every document update on the node, so its raw value (in
list responses, ETags, event cursors and their gaps) would tell an app with `notes:r`
how much happened in collections it may not read. An app token therefore gets each
cursor `c > 0` as `1 + P(c - 1)`, P a 52-bit Feistel permutation keyed per token:
values it can hand back (`?cursor=`, `?since=`, `If-Match`), that mean nothing
between two of them and differ between apps. 0 stays 0 ("from the start"). A value
that is not one of ours (above 2^52) reads as an unknown cursor. Cursors of one app
token work only with that token; a cursor read under another key (another token, a
new admin token) is unknown, which the event stream answers with a `reset`.

What an app token can still infer: the event log's retention is node-wide, so how soon
an old cursor of its own gets "cursor expired" depends on activity everywhere (it says
no more than that), and response times are not hidden.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CursorView", "PLAIN"]

_HALF = 26
_MASK = (1 << _HALF) - 1
_DOMAIN = 1 << (2 * _HALF)
_ROUNDS = 8


@dataclass(frozen=True, slots=True)
class CursorView:
    """One caller's view of cursors and versions; `key` None shows them as they are."""

    key: bytes | None
    _rounds: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:  # one keyed BLAKE2b state per round, copied per use
        rounds = () if self.key is None else tuple(
            hashlib.blake2b(bytes((i,)), key=self.key, digest_size=4) for i in range(_ROUNDS))
        object.__setattr__(self, "_rounds", rounds)

    def _f(self, i: int, half: int) -> int:
        state = self._rounds[i].copy()
        state.update(half.to_bytes(4, "big"))
        return int.from_bytes(state.digest(), "big") & _MASK

    def show(self, cursor: int) -> int:
        """The cursor as this caller sees it."""
        if self.key is None or cursor <= 0:
            return cursor
        left, right = (cursor - 1) >> _HALF, (cursor - 1) & _MASK
        for i in range(_ROUNDS):
            left, right = right, left ^ self._f(i, right)
        return 1 + ((left << _HALF) | right)

    def read(self, shown: int) -> int | None:
        """The node's cursor for one this caller was shown (None: not one of ours)."""
        if self.key is None or shown == 0:
            return shown
        if not 0 < shown <= _DOMAIN:
            return None
        left, right = (shown - 1) >> _HALF, (shown - 1) & _MASK
        for i in reversed(range(_ROUNDS)):
            left, right = right ^ self._f(i, left), left
        return 1 + ((left << _HALF) | right)

    def show_version(self, version: str) -> str:
        """A document version (its ETag) as this caller sees it."""
        if self.key is None or not _digits(version):
            return version
        return str(self.show(int(version)))

    def read_version(self, shown: str) -> str:
        """The node's version for one this caller was shown (`*` stays; a value that is
        not one of ours becomes one that matches no document)."""
        if self.key is None or shown == "*":
            return shown
        node = self.read(int(shown)) if _digits(shown) and len(shown) < 20 else None
        return "-" if node is None else str(node)


PLAIN = CursorView(None)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()
