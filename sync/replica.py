"""One device's replica: local operations, applying remote changes, the quarantine.

The replica owns one storage and one hybrid logical clock. Peers are driven
through one `PeerSession` per connection (`connect`); every session feeds
received changes here and reads the change log to send.

Remote changes of one origin are applied strictly in sequence order; a change
whose sequence is a duplicate or leaves a gap is ignored and not acknowledged,
so the sender's retransmission repairs it. Quarantine states per origin:

    clear --(change > max_skew ahead)--> held --(clock caught up | accepted)--> clear

While an origin is held, its later changes queue behind the held one (bounded by
`quarantine_limit` changes in all; past that they are dropped, unacknowledged).

A change that would make a document larger than the storage accepts
(`DocumentTooLarge`) is refused whole: none of its edits is applied, it is not
acknowledged, `ChangeRefused` reports it once, and the later changes of its origin
are ignored behind it (sequence order) until the replica is loaded again; the
session goes on. A peer's document state that would be too large is left aside the
same way (its other documents are joined).

The replica holds the state and commits atomic batches; the decisions live in
pure functions beside it: `sync.intake` (remote changes, the quarantine),
`sync.statemerge` (joining peer states), `sync.gc` (garbage collection). Sessions
reach the replica only through `sync.host.SessionHost`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from sync.clock import COUNTER_BITS, HybridClock
from sync.errors import DocumentTooLarge, LocalProtocolError
from sync.events import ChangeRefused, DocumentChanged, Event
from sync.fields import FIELD_TYPES
from sync.gc import plan_collection
from sync.intake import Intake, release_held, take_changes
from sync.model import (
    Change,
    DocState,
    Edit,
    FieldOp,
    apply_edit,
    doc_conflicts,
    doc_visible,
    newest_stamp,
    render_doc,
)
from sync.ops import check_name, delete_ops, patch_ops, put_ops
from sync.policy import Flow, PeerPolicy
from sync.rbsr import ItemSet
from sync.session import PeerSession
from sync.statemerge import item_set, log_forwarded, plan_merge
from sync.storage import Batch, MemoryStorage, Storage

__all__ = ["DocumentNotFound", "Replica"]

DEFAULT_MAX_SKEW = 300.0
_NO_TYPES: dict[str, int] = {}
_COMPLETE = PeerPolicy()


class DocumentNotFound(LocalProtocolError):
    """The document does not exist (or is deleted)."""


class Replica:
    """A device's replica of every collection, driven by its caller (sans-I/O).

    `now` is always Unix time in seconds. Local operations return the document as
    it now is; `next_event()` reports what happened (document changes for apps,
    clock skew, session events). Its sessions use only its `sync.host.SessionHost`
    interface.
    """

    def __init__(
        self,
        device_id: str,
        storage: Storage | None = None,
        *,
        max_skew: float = DEFAULT_MAX_SKEW,
        quarantine_limit: int = 10_000,
        retransmit_after: float = 15.0,
    ) -> None:
        self.device_id = check_name("device ID", device_id)
        self.storage: Storage = storage if storage is not None else MemoryStorage()
        self.max_skew = max_skew
        self.quarantine_limit = quarantine_limit
        self.retransmit_after = retransmit_after
        self._policies: dict[str, PeerPolicy] = {}
        stored = self.storage.load()
        self.clock = HybridClock(stored.clock)
        self._vv: dict[str, int] = dict(stored.version_vector)
        self._held: dict[str, list[Change]] = {o: list(cs) for o, cs in stored.quarantine.items()}
        self.gc = stored.gc
        self._types: dict[str, dict[str, int]] = {}
        self._events: deque[Event] = deque()
        self._sessions: dict[str, PeerSession] = {}
        self._refused: dict[str, int] = {}  # origin -> seq of its change we refused

    # ------------------------------------------------------------ schema

    def declare(self, collection: str, fields: Mapping[str, str]) -> None:
        """Declare field types of a collection: "lww", "counter", "set" or "text"."""
        check_name("collection", collection)
        types = {}
        for name, kind in fields.items():
            check_name("field name", name)
            if kind not in FIELD_TYPES:
                raise LocalProtocolError(f"unknown field type {kind!r}")
            types[name] = FIELD_TYPES[kind]
        self._types[collection] = types

    def field_types(self, collection: str) -> dict[str, str]:
        """The declared field types of a collection, by field name (empty if undeclared)."""
        names = {v: k for k, v in FIELD_TYPES.items()}
        return {f: names[t] for f, t in self._types.get(collection, {}).items()}

    # ------------------------------------------------------------ local operations

    def _local(
        self,
        collection: str,
        doc_id: str,
        now: float,
        build: Callable[[DocState | None], tuple[int, tuple[FieldOp, ...]]],
        base: DocState | None = None,
    ) -> DocState:
        doc = base if base is not None else self.storage.get_doc(collection, doc_id)
        flags, ops = build(doc)
        me = self.device_id
        hlc = self.clock.tick(now)
        seq = self._vv.get(me, 0) + 1
        edit = Edit(collection, doc_id, flags, ops)
        new = apply_edit(doc, edit, (hlc, me))
        self.storage.apply_batch(
            Batch([Change(me, seq, hlc, (edit,))], {(collection, doc_id): new}, hlc)
        )
        self._vv[me] = seq
        self._events.append(
            DocumentChanged(collection, doc_id, me, seq, hlc, not doc_visible(new))
        )
        self._changed([(collection, doc_id)])
        return new

    def _checked(self, collection: str, doc_id: str) -> dict[str, int]:
        if type(collection) is not str or not 0 < len(collection) <= 256:
            check_name("collection", collection)
        if type(doc_id) is not str or not 0 < len(doc_id) <= 256:
            check_name("document ID", doc_id)
        return self._types.get(collection, _NO_TYPES)

    def put(
        self, collection: str, doc_id: str, doc: Mapping[str, Any], now: float,
        *, render: bool = True,
    ) -> dict[str, Any]:
        """Create or replace a document; returns it as it now is (empty if not `render`)."""
        types = self._checked(collection, doc_id)
        state = self._local(
            collection, doc_id, now, lambda d: put_ops(self.device_id, d, types, doc)
        )
        return (render_doc(state) or {}) if render else {}

    def patch(
        self, collection: str, doc_id: str, patch: Mapping[str, Any], now: float,
        *, render: bool = True,
    ) -> dict[str, Any]:
        """Merge-patch a document (creating it if needed): values set fields, null clears
        one, `{"$inc": n}`, `{"$add": [..]}`, `{"$remove": [..]}`, `{"$splice": [pos, n, s]}`
        edit counter, set and text fields. Returns it as it now is (empty if not `render`:
        rendering costs as much as the document is large)."""
        types = self._checked(collection, doc_id)
        state = self._local(
            collection, doc_id, now, lambda d: patch_ops(self.device_id, d, types, patch)
        )
        return (render_doc(state) or {}) if render else {}

    def delete(self, collection: str, doc_id: str, now: float) -> None:
        """Delete a document (a tombstone; see `sync.model` for the rule)."""
        self._checked(collection, doc_id)

        def build(d: DocState | None) -> tuple[int, tuple[FieldOp, ...]]:
            if not doc_visible(d):
                raise DocumentNotFound(f"no document {collection}/{doc_id}")
            return delete_ops(self.device_id, d)

        self._local(collection, doc_id, now, build)

    def increment(
        self, collection: str, doc_id: str, field: str, by: int, now: float
    ) -> dict[str, Any]:
        """Add `by` (negative to subtract) to a counter field; returns the document as it now is."""
        return self.patch(collection, doc_id, {field: {"$inc": by}}, now)

    def add(
        self, collection: str, doc_id: str, field: str, values: list[Any], now: float
    ) -> dict[str, Any]:
        """Add values to a set field; returns the document as it now is."""
        return self.patch(collection, doc_id, {field: {"$add": values}}, now)

    def remove(
        self, collection: str, doc_id: str, field: str, values: list[Any], now: float
    ) -> dict[str, Any]:
        """Remove values from a set field (the adds seen so far); returns the new document."""
        return self.patch(collection, doc_id, {field: {"$remove": values}}, now)

    def splice(
        self,
        collection: str,
        doc_id: str,
        field: str,
        pos: int,
        delete: int,
        insert: str,
        now: float,
    ) -> dict[str, Any]:
        """Delete `delete` characters at `pos` of a text field and insert `insert` there."""
        return self.patch(collection, doc_id, {field: {"$splice": [pos, delete, insert]}}, now)

    # ------------------------------------------------------------ reads

    def get(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """The document, or None if it does not exist or is deleted."""
        return render_doc(self.storage.get_doc(collection, doc_id))

    def list_docs(
        self, collection: str, *, after: str | None = None, limit: int = 100
    ) -> list[tuple[str, dict[str, Any]]]:
        """Up to `limit` visible documents with id > `after`, ordered by id."""
        out: list[tuple[str, dict[str, Any]]] = []
        while len(out) < limit:
            page = self.storage.list_docs(collection, after, limit)
            for doc_id, state in page:
                doc = render_doc(state)
                if doc is not None:
                    out.append((doc_id, doc))
                    if len(out) >= limit:
                        break
            if len(page) < limit:
                break
            after = page[-1][0]
        return out

    def conflicts(self, collection: str, doc_id: str) -> dict[str, dict[str, Any]]:
        """Per `lww` field, the last concurrent write that lost (value, hlc, device)."""
        return doc_conflicts(self.storage.get_doc(collection, doc_id))

    def version_vector(self) -> dict[str, int]:
        """Per origin, the highest sequence applied (all before it are applied too)."""
        return dict(self._vv)

    # ------------------------------------------------------------ policies

    def set_policy(self, peer_id: str, policy: PeerPolicy) -> None:
        """What may flow between us and `peer_id` from now on (default: everything)."""
        if self._policies.get(peer_id, _COMPLETE) == policy:
            return
        self._policies[peer_id] = policy
        session = self._sessions.get(peer_id)
        if session is not None:
            session.policy_changed()

    def policy_for(self, peer_id: str) -> PeerPolicy:
        """Our policy for `peer_id`: the one last set, or the default (everything both ways)."""
        return self._policies.get(peer_id, _COMPLETE)

    def item_set(self, flow: Flow) -> ItemSet:
        """The documents we may exchange under `flow`, as reconciliation items."""
        return item_set(self.storage, flow)

    # ------------------------------------------------------------ garbage collection

    def behind_log(self, peer_vv: Mapping[str, int]) -> bool:
        """Whether a peer lacks changes we have already collected from the log."""
        return any(peer_vv.get(o, 0) < base for o, base in self.gc.log_base.items())

    def collect_garbage(self, acknowledged: Mapping[str, Mapping[str, int]]) -> tuple[int, int]:
        """Drop what every peer has: logged changes all of `acknowledged` (peer -> the
        version vector it acknowledged) hold, and deleted documents all of whose edits
        they hold. Returns (changes dropped, documents purged).

        A peer left out of `acknowledged` (gone too long, or new) that comes back
        reconciles by document state instead of the log, and a document it still holds
        that we purged, made only of edits from before the horizon, is deleted again
        (a fresh tombstone; see `merge_states`)."""
        gc, dropped, purge = plan_collection(self.storage, self.gc, self._vv, acknowledged)
        if dropped or purge:
            self.gc = gc
            self.storage.compact(gc, purge)
        return dropped, len(purge)

    # ------------------------------------------------------------ peers

    def connect(self, peer_id: str, now: float) -> PeerSession:
        """Start a session with a peer over a new connection; replaces an older one."""
        check_name("peer ID", peer_id)
        old = self._sessions.get(peer_id)
        if old is not None and not old.closed:
            old.close(now, reason="replaced by a new session", notify_peer=False, code=5)
        session = PeerSession(self, peer_id, now)
        self._sessions[peer_id] = session
        return session

    def sessions(self) -> dict[str, PeerSession]:
        """The open sessions, by peer ID."""
        return {p: s for p, s in self._sessions.items() if not s.closed}

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def emit(self, event: Event) -> None:
        """Report `event` through `next_event()` (for the replica's sessions)."""
        self._events.append(event)

    @property
    def applied(self) -> Mapping[str, int]:
        """The live version vector, read-only (`version_vector()` is a copy)."""
        return MappingProxyType(self._vv)

    def _changed(self, keys: list[tuple[str, str]], source: str | None = None,
                 echo: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset()) -> None:
        """Tell state sessions which documents changed (not `source` about the `echo`
        keys, whose new state is exactly what it sent)."""
        for peer, session in self._sessions.items():
            state = session.by_state
            if state is None or session.closed:
                continue
            for key in keys:
                if peer != source or key not in echo:
                    state.doc_changed(key)

    def _bury(self, collection: str, doc_id: str, state: DocState, now: float) -> None:
        """Take a document we had purged and delete it at once (a new tombstone)."""
        self.clock.observe(newest_stamp(state), now)
        self._local(collection, doc_id, now, lambda d: delete_ops(self.device_id, d), state)

    def merge_states(self, peer_id: str, docs: list[tuple[str, str, DocState]], flow: Flow,
                     now: float) -> float | None:
        """Join document states a peer sent, as one atomic batch, and log the joined
        states as our own changes so that complete replicas get them too. A state
        stamped too far ahead is left aside; returns when to ask for it again."""
        while True:
            plan = plan_merge(self.storage, self.clock, self.gc.horizon, self.max_skew,
                              peer_id, docs, flow, now)
            for collection, doc_id, state in plan.zombies:
                self._bury(collection, doc_id, state, now)
            if not plan.edits:
                self._events.extend(plan.events)
                return plan.retry
            me = self.device_id
            seq = log_forwarded(plan, me, self._vv.get(me, 0), self.clock, peer_id, now)
            try:
                self.storage.apply_batch(plan.batch)
            except DocumentTooLarge as exc:  # leave that state aside, join the others
                self._events.append(ChangeRefused(peer_id, exc.collection, exc.doc_id,
                                                  str(exc)))
                docs = [d for d in docs if (d[0], d[1]) != (exc.collection, exc.doc_id)]
                continue
            self._vv[me] = seq
            self._events.extend(plan.events)
            self._changed(list(plan.batch.docs), peer_id, plan.echo)
            return plan.retry

    # ------------------------------------------------------------ remote changes

    def receive_changes(self, peer_id: str, changes: list[Change], now: float) -> None:
        """Apply (or hold) logged changes a session received, as one atomic batch."""
        self._release(now)
        refused = self._refused
        if refused:
            changes = [c for c in changes if c.origin not in refused]
        try:
            self._take(peer_id, changes, now)
        except DocumentTooLarge:  # one at a time: apply what fits, refuse the rest
            for change in changes:
                if change.origin in refused:
                    continue
                try:
                    self._take(peer_id, [change], now)
                except DocumentTooLarge as exc:
                    self._refuse(peer_id, change, exc)

    def _take(self, peer_id: str, changes: list[Change], now: float) -> None:
        intake = take_changes(self.storage, self.clock, self._vv, self._held, peer_id,
                              changes, now, self.max_skew, self.quarantine_limit)
        if intake.batch.changes or intake.batch.hold:
            self._commit(intake)

    def _refuse(self, peer_id: str, change: Change, exc: DocumentTooLarge) -> None:
        self._refused[change.origin] = change.seq
        self._events.append(ChangeRefused(
            peer_id, exc.collection, exc.doc_id,
            f"change {change.origin}/{change.seq} refused (its origin's later changes wait "
            f"behind it): {exc}"))

    def _release(self, now: float, accept: str | None = None) -> None:
        while True:
            held = {o: cs for o, cs in self._held.items() if o not in self._refused}
            if not held:
                return
            intake = release_held(self.storage, self.clock, self._vv, held, now,
                                  self.max_skew, accept)
            if not intake.batch.release:
                return
            try:
                self._commit(intake)
                return
            except DocumentTooLarge as exc:  # refuse the change that hit it, try the rest
                culprit = next((c for c in intake.batch.changes if any(
                    (e.collection, e.doc_id) == (exc.collection, exc.doc_id)
                    for e in c.edits)), None)
                if culprit is None:
                    raise
                self._refuse("", culprit, exc)

    def _commit(self, intake: Intake) -> None:
        intake.batch.clock = self.clock.last
        self.storage.apply_batch(intake.batch)
        self._vv = intake.vv
        kept = {o: cs for o, cs in self._held.items() if o in self._refused}
        self._held = {o: cs for o, cs in {**kept, **intake.held}.items() if cs}
        self._events.extend(intake.events)
        self._changed(list(intake.batch.docs))

    # ------------------------------------------------------------ quarantine

    def quarantined(self) -> dict[str, list[Change]]:
        """Held changes per origin, oldest first."""
        return {o: list(cs) for o, cs in self._held.items()}

    def accept_quarantined(self, origin: str, now: float) -> None:
        """Apply the held change of `origin` despite its clock (an admin's decision)."""
        if origin not in self._held:
            raise LocalProtocolError(f"nothing held from {origin}")
        self._release(now, accept=origin)

    def get_timer(self) -> float | None:
        """When the next held change becomes applicable (Unix seconds), or None."""
        heads = [cs[0].hlc >> COUNTER_BITS for o, cs in self._held.items()
                 if cs and o not in self._refused]
        if not heads:
            return None
        return (min(heads) - int(self.max_skew * 1000) + 1) / 1000

    def handle_timer(self, now: float) -> None:
        """Apply held changes whose time has come."""
        self._release(now)

