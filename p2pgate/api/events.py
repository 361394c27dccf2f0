"""The app event stream: every document change, resumable from a cursor.

The cursor is the store's local change sequence. History comes from the store's
change feed (one entry per document, its latest change, like CouchDB's `_changes`),
live changes from `publish()`. A subscriber first registers for live changes, then
replays history after its cursor, then forwards live changes it has not sent yet:
no gap and no duplicate. A cursor newer than the store, or older than the feed's
horizon (its history was purged) while a change the subscriber may see was purged
with it, gets an explicit `reset`.

The hub also knows, per collection, the cursor of its latest change (`latest`): a
scoped caller's "now" is the latest change it may see, never the node's cursor, which
would tell it that something happened in a collection it cannot read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from p2pgate.documents.views import ChangeRecord

__all__ = ["ChangeFeed", "ChangeRecord", "EventHub", "Reset"]

_PAGE = 500
_QUEUE = 10_000


@dataclass(frozen=True, slots=True)
class Reset:
    """Yielded when a cursor is unknown or expired; the stream goes on from `cursor`."""

    cursor: int
    reason: str


class ChangeFeed(Protocol):
    """The store's change history the hub replays (implemented by `Documents`)."""

    @property
    def cursor(self) -> int:
        """The newest cursor."""
        ...

    @property
    def horizon(self) -> int:
        """The oldest cursor history is kept after; an older one gets a Reset."""
        ...

    async def changes_after(self, cursor: int, limit: int) -> list[ChangeRecord]:
        """Up to `limit` changes after `cursor`, oldest first (one per document, its latest)."""
        ...


class _Lagged:
    """Marker: the subscriber's queue overflowed; it must catch up from history."""


class EventHub:
    """Fans document changes out to event stream subscribers, on the event loop."""

    def __init__(self, feed: ChangeFeed) -> None:
        self._feed = feed
        self._subscribers: set[asyncio.Queue[ChangeRecord | _Lagged]] = set()
        self._since_start = feed.cursor  # no collection changed later than this unpublished
        self._latest: dict[str, int] = {}

    def latest(self, visible: Callable[[str], bool]) -> int:
        """A cursor at or after every change in a `visible` collection, with none of
        them after it: the newest such change's (or, when none changed since the node
        started, the node's cursor at start)."""
        return max((c for name, c in self._latest.items() if visible(name)),
                   default=self._since_start)

    def publish(self, record: ChangeRecord) -> None:
        """Hand a committed change to every subscriber; a full queue makes it replay history."""
        self._latest[record.collection] = max(record.cursor,
                                              self._latest.get(record.collection, 0))
        for queue in self._subscribers:
            try:
                queue.put_nowait(record)
            except asyncio.QueueFull:
                queue.get_nowait()
                queue.put_nowait(_Lagged())

    async def stream(
        self, after: int | None, visible: Callable[[str], bool]
    ) -> AsyncIterator[ChangeRecord | Reset]:
        """Changes after `after` (or from now), then live ones, filtered by `visible`."""
        queue: asyncio.Queue[ChangeRecord | _Lagged] = asyncio.Queue(_QUEUE)
        self._subscribers.add(queue)
        try:
            last = self._feed.cursor if after is None else after
            lost = last < self._feed.horizon and self.latest(visible) > last
            if lost or last > self._feed.cursor:
                reason = "cursor expired" if lost else "unknown cursor"
                last = self._feed.cursor
                yield Reset(self.latest(visible), reason)
            while True:
                while page := await self._feed.changes_after(last, _PAGE):
                    for record in page:
                        if visible(record.collection):
                            yield record
                        last = record.cursor
                while True:
                    item = await queue.get()
                    if isinstance(item, _Lagged):
                        break  # catch up from history again
                    if item.cursor > last:
                        if visible(item.collection):
                            yield item
                        last = item.cursor
        finally:
            self._subscribers.discard(queue)
