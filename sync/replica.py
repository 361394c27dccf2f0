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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from sync.clock import COUNTER_BITS, HybridClock
from sync.errors import LocalProtocolError
from sync.events import (
    ChangeRefused,
    ClockSkewDetected,
    DocumentChanged,
    Event,
    QuarantineReleased,
)
from sync.fields import FIELD_TYPES
from sync.model import (
    K_STATE,
    Change,
    DocState,
    Edit,
    FieldOp,
    apply_edit,
    contains_edit,
    doc_conflicts,
    doc_visible,
    filter_view,
    merge_docs,
    newest_stamp,
    render_doc,
)
from sync.ops import check_name, delete_ops, patch_ops, put_ops
from sync.policy import Flow, PeerPolicy
from sync.rbsr import ItemSet, doc_key, item_digest
from sync.session import PeerSession
from sync.storage import Batch, GcState, MemoryStorage, Storage

__all__ = ["DocumentNotFound", "Replica"]

DEFAULT_MAX_SKEW = 300.0
_NO_TYPES: dict[str, int] = {}
_COMPLETE = PeerPolicy()
FORWARD_EDITS = 32  # merged states per forwarding change


class DocumentNotFound(LocalProtocolError):
    """The document does not exist (or is deleted)."""


class Replica:
    """A device's replica of every collection, driven by its caller (sans-I/O).

    `now` is always Unix time in seconds. Local operations return the document as
    it now is; `next_event()` reports what happened (document changes for apps,
    clock skew, session events).
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
        self, collection: str, doc_id: str, doc: Mapping[str, Any], now: float
    ) -> dict[str, Any]:
        """Create or replace a document."""
        types = self._checked(collection, doc_id)
        state = self._local(
            collection, doc_id, now, lambda d: put_ops(self.device_id, d, types, doc)
        )
        return render_doc(state) or {}

    def patch(
        self, collection: str, doc_id: str, patch: Mapping[str, Any], now: float
    ) -> dict[str, Any]:
        """Merge-patch a document (creating it if needed): values set fields, null clears
        one, `{"$inc": n}`, `{"$add": [..]}`, `{"$remove": [..]}`, `{"$splice": [pos, n, s]}`
        edit counter, set and text fields."""
        types = self._checked(collection, doc_id)
        state = self._local(
            collection, doc_id, now, lambda d: patch_ops(self.device_id, d, types, patch)
        )
        return render_doc(state) or {}

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
        return self.patch(collection, doc_id, {field: {"$inc": by}}, now)

    def add(
        self, collection: str, doc_id: str, field: str, values: list[Any], now: float
    ) -> dict[str, Any]:
        return self.patch(collection, doc_id, {field: {"$add": values}}, now)

    def remove(
        self, collection: str, doc_id: str, field: str, values: list[Any], now: float
    ) -> dict[str, Any]:
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
        return self._policies.get(peer_id, _COMPLETE)

    def item_set(self, flow: Flow) -> ItemSet:
        """The documents we may exchange under `flow`, as reconciliation items."""
        items = []
        storage = self.storage
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
        (a fresh tombstone; see `_merge_states`)."""
        base, horizon = dict(self.gc.log_base), dict(self.gc.horizon)
        dropped = 0
        for origin, have in self._vv.items():
            safe = min((vv.get(origin, 0) for vv in acknowledged.values()), default=have)
            safe = min(safe, have)
            if safe <= base.get(origin, 0):
                continue
            last = self.storage.changes_since(origin, safe - 1, 1)
            dropped += safe - base.get(origin, 0)
            base[origin] = safe
            horizon[origin] = max(horizon.get(origin, 0), last[0].hlc)
        purge: list[tuple[str, str]] = []
        for collection in self.storage.collections():
            after = None
            while page := self.storage.list_docs(collection, after, 1000):
                purge.extend((collection, doc_id) for doc_id, state in page
                             if not doc_visible(state) and _within(state.version, horizon))
                after = page[-1][0]
        if dropped or purge:
            self.gc = GcState(base, horizon)
            self.storage.compact(self.gc, purge)
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
        return {p: s for p, s in self._sessions.items() if not s.closed}

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def _emit(self, event: Event) -> None:
        self._events.append(event)

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

    def _merge_states(self, peer_id: str, docs: list[tuple[str, str, DocState]], flow: Flow,
                      now: float) -> float | None:
        """Join document states a peer sent, as one atomic batch, and log the joined
        states as our own changes so that complete replicas get them too. A state
        stamped too far ahead is left aside; returns when to ask for it again."""
        batch = Batch()
        events: list[Event] = []
        edits: list[Edit] = []
        echo: set[tuple[str, str]] = set()
        zombies: list[tuple[str, str, DocState]] = []
        retry: float | None = None
        for collection, doc_id, state in docs:
            key = (collection, doc_id)
            newest = newest_stamp(state)
            if self._too_far_ahead(newest, now):
                ahead = self.clock.ahead_by(newest, now)
                events.append(ClockSkewDetected(peer_id, "", 0, newest, ahead))
                at = now + ahead - self.max_skew + 1
                retry = at if retry is None else min(retry, at)
                continue
            old = batch.docs.get(key) or self.storage.get_doc(collection, doc_id)
            if old is None and _within(state.version, self.gc.horizon):
                if doc_visible(state):  # we purged it as deleted: delete it again
                    zombies.append((collection, doc_id, state))
                continue
            new = state if old is None else merge_docs(old, state)
            if old is not None and new.version == old.version:
                continue
            if not flow.may_receive(collection, filter_view(new)):
                events.append(ChangeRefused(peer_id, collection, doc_id,
                                            "the policy for this device refuses it"))
                continue
            self.clock.observe(newest, now)
            batch.docs[key] = new
            edits.append(Edit(collection, doc_id, 0, ((K_STATE, "*", new, None),)))
            if new.version == state.version:
                echo.add(key)
        for collection, doc_id, state in zombies:
            self._bury(collection, doc_id, state, now)
        if not edits:
            self._events.extend(events)
            return retry
        me, seq = self.device_id, self._vv.get(self.device_id, 0)
        for start in range(0, len(edits), FORWARD_EDITS):
            seq += 1
            hlc = self.clock.tick(now)
            chunk = tuple(edits[start : start + FORWARD_EDITS])
            batch.changes.append(Change(me, seq, hlc, chunk))
            events.extend(DocumentChanged(e.collection, e.doc_id, peer_id, seq, hlc,
                                          not doc_visible(batch.docs[(e.collection, e.doc_id)]))
                          for e in chunk)
        batch.clock = self.clock.last
        self.storage.apply_batch(batch)
        self._vv[me] = seq
        self._events.extend(events)
        self._changed(list(batch.docs), peer_id, echo)
        return retry

    # ------------------------------------------------------------ remote changes

    def _known(self, origin: str) -> int:
        return self._vv.get(origin, 0) + len(self._held.get(origin, ()))

    def _too_far_ahead(self, hlc: int, now: float) -> bool:
        return (hlc >> COUNTER_BITS) > int(now * 1000) + int(self.max_skew * 1000)

    def _receive(self, peer_id: str, changes: list[Change], now: float) -> None:
        """Apply (or hold) changes a session received, as one atomic batch."""
        self._release(now)
        batch = Batch()
        vv = dict(self._vv)
        held = {o: list(cs) for o, cs in self._held.items()}
        nheld = sum(len(cs) for cs in held.values())
        events: list[Event] = []
        for change in changes:
            origin = change.origin
            queue = held.get(origin)
            if change.seq != vv.get(origin, 0) + (len(queue) if queue else 0) + 1:
                continue
            if queue or self._too_far_ahead(change.hlc, now):
                if nheld >= self.quarantine_limit:
                    continue
                if not queue:
                    ahead = self.clock.ahead_by(change.hlc, now)
                    events.append(ClockSkewDetected(peer_id, origin, change.seq, change.hlc, ahead))
                held.setdefault(origin, []).append(change)
                batch.hold.append(change)
                nheld += 1
                continue
            self._apply(change, batch, events, now)
            vv[origin] = change.seq
        if not batch.changes and not batch.hold:
            return
        batch.clock = self.clock.last
        self.storage.apply_batch(batch)
        self._vv = vv
        self._held = {o: cs for o, cs in held.items() if cs}
        self._events.extend(events)
        self._changed(list(batch.docs))

    def _apply(self, change: Change, batch: Batch, events: list[Event], now: float) -> None:
        stamp = (change.hlc, change.origin)
        docs = batch.docs
        for edit in change.edits:
            key = (edit.collection, edit.doc_id)
            doc = docs.get(key)
            if doc is None:
                doc = self.storage.get_doc(*key)
            forwarded = bool(edit.ops) and edit.ops[0][0] == K_STATE
            if not forwarded and contains_edit(doc, stamp):
                continue  # it reached us inside a forwarded state already
            new = apply_edit(doc, edit, stamp)
            if forwarded and doc is not None and new.version == doc.version:
                continue
            docs[key] = new
            events.append(
                DocumentChanged(
                    edit.collection,
                    edit.doc_id,
                    change.origin,
                    change.seq,
                    change.hlc,
                    not doc_visible(new),
                )
            )
        self.clock.observe(change.hlc, now)
        batch.changes.append(change)

    def _release(self, now: float, accept: str | None = None) -> None:
        if not self._held:
            return
        batch = Batch()
        events: list[Event] = []
        vv = dict(self._vv)
        held = {o: list(cs) for o, cs in self._held.items()}
        for origin, queue in held.items():
            forced = origin == accept
            first = queue[0]
            while queue:
                change = queue[0]
                if not forced and self._too_far_ahead(change.hlc, now):
                    if change is not first:
                        ahead = self.clock.ahead_by(change.hlc, now)
                        events.append(ClockSkewDetected("", origin, change.seq, change.hlc, ahead))
                    break
                queue.pop(0)
                events.append(QuarantineReleased(origin, change.seq, forced))
                forced = False
                batch.release.append((origin, change.seq))
                self._apply(change, batch, events, now)
                vv[origin] = change.seq
        if not batch.release:
            return
        batch.clock = self.clock.last
        self.storage.apply_batch(batch)
        self._vv = vv
        self._held = {o: cs for o, cs in held.items() if cs}
        self._events.extend(events)
        self._changed(list(batch.docs))

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
        heads = [cs[0].hlc >> COUNTER_BITS for cs in self._held.values() if cs]
        if not heads:
            return None
        return (min(heads) - int(self.max_skew * 1000) + 1) / 1000

    def handle_timer(self, now: float) -> None:
        """Apply held changes whose time has come."""
        self._release(now)


def _within(version: Mapping[str, int], horizon: Mapping[str, int]) -> bool:
    return bool(version) and all(hlc <= horizon.get(o, 0) for o, hlc in version.items())
