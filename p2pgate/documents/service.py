"""The node's documents: a `sync.Replica` on the libSQL store, driven from asyncio.

The replica and its storage live on the database thread: every call runs there
through `Database.run`, one at a time, so a check (If-Match) and the write it
guards happen together. Writes queued while a transaction commits share the next
one (group commit); they queue per writer (an app's token) and each group takes
fair shares of database time from each writer (`fairqueue`), so one app's costly
writes do not hold back the others' cheap ones. After each call the events the storage committed are
published to subscribers (the API's event hub) on the event loop, and drop the
documents they name from the read cache (this process is the store's only writer).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from p2pgate.documents.driver import BacklogMeasured, PeerCaughtUp, SyncDriver
from p2pgate.documents.errors import (
    DocumentError,
    DocumentNotFound,
    DocumentTooLarge,
    FieldTypeConflict,
    InvalidDocument,
    VersionMismatch,
    WritesBacklogged,
)
from p2pgate.documents.fairqueue import FairQueue
from p2pgate.documents.views import ChangeRecord, DocumentView
from p2pgate.identity.deviceid import DeviceID
from p2pgate.storage.database import Connection, Database, MappedConnection
from p2pgate.storage.syncstore import EventRow, LibsqlStorage
from sync.errors import DocumentTooLarge as StateTooLarge
from sync.errors import LocalProtocolError
from sync.events import ChangeRefused, ClockSkewDetected, PeerSynced, ProtocolErrorOccurred
from sync.model import DocState, doc_conflicts, render_doc
from sync.ops import OPERATORS
from sync.policy import CollectionPolicy, PeerPolicy
from sync.replica import DocumentNotFound as MissingInReplica
from sync.replica import Replica
from sync.session import PeerSession

__all__ = ["Documents"]

log = logging.getLogger("p2pgate.sync")

Listener = Callable[[ChangeRecord], None]

CACHE_SIZE = 10_000  # rendered documents kept for reads; every write invalidates its own
MAX_QUEUED = 256  # writes one writer may have waiting; past that it gets WritesBacklogged

Pending = tuple[Callable[[], Any], "asyncio.Future[Any]"]


def _view(collection: str, doc_id: str, state: DocState | None, cursor: int) -> DocumentView:
    data = render_doc(state)
    return DocumentView(collection, doc_id, data or {}, str(cursor), data is None, cursor)


class Documents:
    """The node's documents: the API's document service, the app change feed, and
    the sync sessions the connection manager drives (`peer_open`, `peer_step`,
    `peer_close`). Open with `Documents.open`."""

    def __init__(self, db: Database, replica: Replica, storage: LibsqlStorage,
                 clock: Callable[[], float]) -> None:
        self._db = db
        self.replica = replica
        self._storage = storage
        self._clock = clock
        self._listeners: list[Listener] = []
        self._queue: FairQueue[Pending] = FairQueue()
        self._cache: OrderedDict[tuple[str, str], DocumentView] = OrderedDict()
        self.last_synced: dict[str, float] = {}
        self.backlog: dict[str, tuple[int, int]] = {}  # peer -> (changes it lacks, ours)
        self.collected = (0, 0)  # (log changes, deleted documents) garbage-collected so far
        self._flusher: asyncio.Future[None] | None = None
        self._drivers: dict[PeerSession, SyncDriver] = {}  # until `peer_close`

    @classmethod
    async def open(cls, db: Database, device_id: DeviceID, *, event_retention: int = 100_000,
                   clock: Callable[[], float] = time.time) -> Documents:
        """Load the replica and its declared collections from `db` (on the database thread)."""
        def _open(conn: Connection) -> tuple[Replica, LibsqlStorage]:
            storage = LibsqlStorage(MappedConnection(conn), event_retention)
            return _make_replica(storage, str(device_id)), storage

        replica, storage = await db.run(_open)
        return cls(db, replica, storage, clock)

    # -- events ------------------------------------------------------------------------

    def on_change(self, listener: Listener) -> None:
        """Call `listener` with every committed change, on the event loop."""
        self._listeners.append(listener)

    @property
    def cursor(self) -> int:
        """The newest event cursor (it counts document updates)."""
        return self._storage.cursor

    @property
    def horizon(self) -> int:
        """The cursor the event log is trimmed up to: an older cursor has lost its history."""
        return self._storage.horizon

    async def changes_after(self, cursor: int, limit: int) -> list[ChangeRecord]:
        """Up to `limit` event log entries after `cursor`, oldest first."""
        rows = await self._db.run(lambda _: self._storage.events_after(cursor, limit))
        return [_record(r) for r in rows]

    async def _call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the database thread, then publish what it committed."""
        try:
            return await self._db.run(lambda _: _mapped(fn))
        finally:
            self._publish()

    # -- sync with peers (the connection manager drives one PeerSession per session) ----

    async def peer_open(self, peer: str, policy: dict[str, Any] | None = None) -> PeerSession:
        """Start a sync session with `peer` under our stored policy for it (it replaces
        the session of an older connection, which the caller passes to `peer_step`)."""

        def _open() -> PeerSession:
            self.replica.set_policy(peer, peer_policy(policy or {}))
            session = self.replica.connect(peer, self._clock())
            self._drivers[session] = SyncDriver(self.replica, session)
            return session

        session: PeerSession = await self._call(_open)
        return session

    async def set_policy(self, peer: str, policy: dict[str, Any]) -> None:
        """Apply a changed policy now (a live session re-negotiates)."""
        await self._call(lambda: self.replica.set_policy(peer, peer_policy(policy)))

    async def peer_step(self, session: PeerSession, received: list[bytes]
                        ) -> tuple[list[bytes], bool, float | None]:
        """Feed what the peer sent, run timers; returns (to send, closed, next timer).

        The timer is absolute (Unix seconds); one in the past, 0.0 included, means
        "step again at once". The decisions are `SyncDriver`'s."""

        def _step() -> tuple[list[bytes], bool, float | None]:
            driver = self._drivers.get(session)
            if driver is None:  # a session the caller made itself
                driver = self._drivers[session] = SyncDriver(self.replica, session)
            stepped = driver.step(received, self._clock())
            while (happened := driver.next_event()) is not None:
                if isinstance(happened, PeerCaughtUp):
                    self._storage.note_acknowledged(happened.peer_id, happened.version_vector,
                                                    happened.at)
                elif isinstance(happened, BacklogMeasured):
                    self.backlog[happened.peer_id] = (happened.lacking, happened.total)
            return stepped.messages, stepped.closed, stepped.timer

        return await self._call(_step)  # type: ignore[no-any-return]

    async def peer_close(self, session: PeerSession, reason: str) -> None:
        """End a session without telling the peer (its connection is gone)."""
        def _close() -> None:
            self._drivers.pop(session, None)
            session.close(self._clock(), reason=reason, notify_peer=False)

        await self._call(_close)

    def _publish(self) -> None:
        while (happened := self.replica.next_event()) is not None:
            if isinstance(happened, PeerSynced):
                self.last_synced[happened.peer_id] = self._clock()
            elif isinstance(happened, ClockSkewDetected | ProtocolErrorOccurred | ChangeRefused):
                log.warning("sync: %s", happened)
        events, self._storage.new_events = self._storage.new_events, []
        for event in events:
            self._cache.pop((event.collection, event.doc_id), None)
            record = _record(event)
            for listener in self._listeners:
                listener(record)

    async def _write(self, fn: Callable[[], Any], writer: str) -> Any:
        """Like `_call`, but writes queued meanwhile share one transaction (group
        commit), taken fairly from each `writer`'s queue; each is acknowledged only
        after that transaction is durable."""
        if self._queue.queued(writer) >= MAX_QUEUED:
            raise WritesBacklogged(f"{MAX_QUEUED} writes of this app are already waiting", 1.0)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.push(writer, (fn, future))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                group = self._queue.next_group()
                try:
                    outcomes = await self._db.run(functools.partial(self._run_group, group))
                except Exception as exc:  # the commit failed: nothing of the group landed
                    await self._db.run(lambda _: self._reload())
                    outcomes = [exc] * len(group)
                self._publish()
                for (_, (_, future)), outcome in zip(group, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._flusher = None

    def _run_group(self, group: list[tuple[str, Pending]], conn: Connection) -> list[Any]:
        outcomes: list[Any] = []
        with self._storage.group():
            for writer, (fn, _future) in group:
                started = time.perf_counter()
                try:
                    outcomes.append(_mapped(fn))
                except Exception as exc:
                    outcomes.append(exc)
                self._queue.charge(writer, time.perf_counter() - started)
        return outcomes

    def _reload(self) -> None:
        self._cache.clear()
        self.replica = _make_replica(self._storage, str(self.replica.device_id))
        for driver in self._drivers.values():  # as before: timers and vectors of the new one
            driver.replica = self.replica

    async def collect_garbage(self, peer_timeout: float) -> tuple[int, int]:
        """Drop from the log and purge the tombstones every peer synced within
        `peer_timeout` seconds holds (peers away longer reconcile by state)."""

        def _collect() -> tuple[int, int]:
            since = self._clock() - peer_timeout
            acked = {p: vv for p, (vv, at) in self._storage.acknowledged().items()
                     if at >= since}
            dropped, purged = self.replica.collect_garbage(acked)
            self.collected = (self.collected[0] + dropped, self.collected[1] + purged)
            if purged:
                self._cache.clear()
            return dropped, purged

        result: tuple[int, int] = await self._call(_collect)
        return result

    async def collect_garbage_every(self, interval: float, peer_timeout: float) -> None:
        """Collect garbage every `interval` seconds, forever (run it under a supervisor:
        a failure ends the loop, which the supervisor logs and restarts)."""
        while True:
            await asyncio.sleep(interval)
            dropped, purged = await self.collect_garbage(peer_timeout)
            if dropped or purged:
                log.info("garbage collection: %d logged changes, %d deleted documents",
                         dropped, purged)

    # -- the DocumentService the API uses ------------------------------------------------

    async def declare(self, collection: str, fields: dict[str, str]) -> dict[str, str]:
        """Add field types to a collection, return all of them; FieldTypeConflict if one changes."""
        def _declare() -> dict[str, str]:
            current = self.replica.field_types(collection)
            changed = {f for f, t in fields.items() if f in current and current[f] != t}
            if changed:
                raise FieldTypeConflict(f"field types are fixed once declared: {sorted(changed)}")
            merged = {**current, **fields}
            self.replica.declare(collection, merged)
            self._storage.save_declaration(collection, merged)
            return merged

        result: dict[str, str] = await self._call(_declare)
        return result

    async def fields(self, collection: str) -> dict[str, str]:
        """The declared field types of a collection (empty if none)."""
        return await self._call(lambda: self.replica.field_types(collection))  # type: ignore[no-any-return]

    def _row(self, collection: str, doc_id: str) -> tuple[DocState | None, int]:
        row = self._storage.doc_row(collection, doc_id)
        return (None, 0) if row is None else row

    def _guarded(self, collection: str, doc_id: str, if_match: str | None,
                 write: Callable[[], dict[str, Any] | None], must_exist: bool) -> DocumentView:
        status = self._storage.doc_status(collection, doc_id)
        exists = status is not None and not status[1]
        if must_exist and not exists:
            raise DocumentNotFound(f"no document {doc_id!r} in {collection!r}")
        if if_match is not None and (
            status is None or not exists or if_match not in (str(status[0]), "*")
        ):
            raise VersionMismatch("the document changed (If-Match does not match)")
        data = write()
        cursor = self._storage.cursor  # the write's batch was the latest
        return DocumentView(collection, doc_id, data or {}, str(cursor), data is None, cursor,
                            created=not exists)

    async def get(self, collection: str, doc_id: str) -> DocumentView | None:
        """The document (deleted ones too), or None if the store holds no state for it; cached."""
        key = (collection, doc_id)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached

        def _get() -> tuple[DocumentView | None, int]:
            state, cursor = self._row(collection, doc_id)
            view = None if state is None else _view(collection, doc_id, state, cursor)
            return view, self._storage.cursor

        view, read_at = await self._call(_get)
        if view is not None and read_at == self._storage.cursor:  # no write since the read
            self._cache[key] = view
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return view  # type: ignore[no-any-return]

    async def put(self, collection: str, doc_id: str, data: dict[str, Any],
                  if_match: str | None, *, writer: str = "", render: bool = True
                  ) -> DocumentView:
        """Create or replace a document; a given `if_match` ("*" or a version) must match it.

        `writer` (an app's token) is whose queue the write waits in; without `render`
        the view's data is left empty (the work grows with the document)."""
        return await self._write(lambda: self._guarded(  # type: ignore[no-any-return]
            collection, doc_id, if_match,
            lambda: self.replica.put(collection, doc_id, data, self._clock(), render=render),
            False), writer)

    async def patch(self, collection: str, doc_id: str, patch: dict[str, Any],
                    if_match: str | None, *, writer: str = "", render: bool = True
                    ) -> DocumentView:
        """Merge-patch a document (DocumentNotFound if none); the rest as for `put`."""
        for name, value in patch.items():
            if type(value) is dict and len(value) == 1:
                (key,) = value
                if key.startswith("$") and key not in OPERATORS:
                    raise InvalidDocument(f"{name}: unknown operator {key} "
                                        f"(one of {', '.join(OPERATORS)})")
        return await self._write(lambda: self._guarded(  # type: ignore[no-any-return]
            collection, doc_id, if_match,
            lambda: self.replica.patch(collection, doc_id, patch, self._clock(),
                                       render=render), True), writer)

    async def delete(self, collection: str, doc_id: str, if_match: str | None,
                     *, writer: str = "") -> DocumentView:
        """Delete a document (DocumentNotFound if none); `if_match` as for `put`."""
        return await self._write(lambda: self._guarded(  # type: ignore[no-any-return]
            collection, doc_id, if_match,
            lambda: self.replica.delete(collection, doc_id, self._clock()), True), writer)

    async def list_docs(self, collection: str, limit: int, after: str | None,
                        since: int | None) -> tuple[list[DocumentView], int]:
        """A page of visible documents past ID `after` (changed after `since`), and the cursor."""
        def _list() -> tuple[list[DocumentView], int]:
            rows = self._storage.visible_docs(collection, after, since, limit)
            return [_view(collection, d, s, c) for d, s, c in rows], self._storage.cursor

        return await self._call(_list)  # type: ignore[no-any-return]

    async def conflicts(self, collection: str, doc_id: str) -> dict[str, tuple[Any, str]]:
        """Per `lww` field, the last concurrent write it lost; DocumentNotFound if no document."""
        def _conflicts() -> dict[str, tuple[Any, str]]:
            state, _ = self._row(collection, doc_id)
            if render_doc(state) is None:
                raise DocumentNotFound(f"no document {doc_id!r} in {collection!r}")
            return {f: (c["value"], str(c["device"]))
                    for f, c in doc_conflicts(state).items()}

        return await self._call(_conflicts)  # type: ignore[no-any-return]


def peer_policy(stored: dict[str, Any]) -> PeerPolicy:
    """The registry's per-collection policy (`*` = every other collection) for sync."""
    default = stored.get("*", {}).get("mode", "both")
    return PeerPolicy({c: CollectionPolicy(p.get("mode", "both"), p.get("filter"))
                       for c, p in stored.items() if c != "*"}, default)


def _make_replica(storage: LibsqlStorage, device_id: str) -> Replica:
    replica = Replica(device_id, storage)
    for collection, fields in storage.declarations().items():
        replica.declare(collection, fields)
    return replica


def _mapped(fn: Callable[[], Any]) -> Any:
    """Run `fn`, turning the sync engine's errors into the service's own."""
    try:
        return fn()
    except DocumentError:
        raise
    except MissingInReplica as exc:
        raise DocumentNotFound(str(exc)) from None
    except StateTooLarge as exc:
        raise DocumentTooLarge(str(exc)) from None
    except LocalProtocolError as exc:
        raise InvalidDocument(str(exc)) from None


def _record(row: EventRow) -> ChangeRecord:
    return ChangeRecord(row.cursor, row.collection, row.doc_id, row.deleted, row.origin)
