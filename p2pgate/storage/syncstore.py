"""The sync engine's storage on the encrypted libSQL database.

Implements `sync.storage.Storage` with tables for documents (one state blob per
document), the change log by (origin, seq), the version vector, and the
quarantine. Every `apply_batch` is one transaction. On top of the protocol it
keeps what the node's API needs, in the same transaction: a local *cursor* that
counts document updates (each document row carries the cursor of its latest
update, which is also its version), and a bounded `events` log for the app event
stream. All methods run on the database thread.

A document's stored state is at most `MAX_DOC_BYTES` (`apply_batch` raises
`DocumentTooLarge` and writes nothing). Large states stay decoded in a small cache,
with each field's encoding (and each set element's), so a write to one field of a
large document neither decodes it again nor re-encodes its other fields, nor the
elements of a set it did not touch (states are never mutated: a field state, or a
set entry, that is the same object as the cached one has the same encoding). What
still grows with the document is writing its row.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from p2pgate.storage.database import Connection
from sync.codec import ChangesMessage, decode, encode
from sync.errors import DocumentTooLarge, LocalProtocolError
from sync.fields import CounterState, FieldState, LwwState, SetState, TextState
from sync.model import Change, DocState, doc_visible
from sync.storage import Batch, GcState, StoredState

__all__ = ["MAX_DOC_BYTES", "EventRow", "LibsqlStorage", "decode_state", "encode_state"]

MAX_DOC_BYTES = 2 << 20  # a document's stored state; its wire state is smaller, and fits a
# 4 MiB sync message (`sync.codec.MAX_MESSAGE_SIZE`) with room to spare
CACHED_MIN = 32 << 10  # states from this size (encoded) are kept decoded...
CACHED_TOTAL = 8 << 20  # ...up to this many encoded bytes in all (RSS: ~5x that)


@dataclass(frozen=True, slots=True)
class EventRow:
    """One entry of the app event log: a document changed at a cursor, by an origin."""

    cursor: int
    collection: str
    doc_id: str
    deleted: bool
    origin: str


# -- document states as compact JSON -------------------------------------------------

def _stamp(s: tuple[int, str] | None) -> list[Any] | None:
    return None if s is None else [s[0], s[1]]


def _unstamp(s: list[Any] | None) -> tuple[int, str] | None:
    return None if s is None else (int(s[0]), str(s[1]))


def _stamps(tags: frozenset[tuple[int, str]]) -> list[list[Any]]:
    if len(tags) == 1:
        (tag,) = tags
        return [[tag[0], tag[1]]]
    return sorted(map(list, tags))


def _field(state: FieldState) -> list[Any]:
    if isinstance(state, LwwState):
        return ["l", [list(e) for e in state.entries], _stamp(state.cleared)]
    if isinstance(state, CounterState):
        return ["c", {k: list(v) for k, v in state.totals.items()},
                {k: list(v) for k, v in state.base.items()}, _stamp(state.last),
                _stamp(state.cleared)]
    if isinstance(state, SetState):
        return ["s", {k: [v, _stamps(tags)] for k, (v, tags) in state.adds.items()},
                sorted(map(list, state.removed)), _stamp(state.last), _stamp(state.cleared)]
    return ["t", base64.b64encode(state.update).decode(), _stamp(state.last),
            _stamp(state.cleared)]


def _tags(items: Iterable[list[Any]]) -> frozenset[Any]:
    """Stamps (hlc, origin) and tombstones (hlc, origin, key) back to tuples."""
    return frozenset(tuple(item) for item in items)


def _unfield(data: list[Any]) -> FieldState:
    kind = data[0]
    if kind == "l":
        return LwwState(tuple((e[0], e[1], e[2], e[3]) for e in data[1]), _unstamp(data[2]))
    if kind == "c":
        return CounterState({k: (v[0], v[1]) for k, v in data[1].items()},
                            {k: (v[0], v[1]) for k, v in data[2].items()},
                            _unstamp(data[3]), _unstamp(data[4]))
    if kind == "s":
        return SetState({k: (v, _tags(tags)) for k, (v, tags) in data[1].items()},
                        _tags(data[2]), _unstamp(data[3]), _unstamp(data[4]))
    return TextState(base64.b64decode(data[1]), _unstamp(data[2]), _unstamp(data[3]))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


SetParts = tuple[dict[str, str], str]  # a set field's JSON: per element, its tombstones
FieldCode = tuple[FieldState, str, SetParts | None]  # a state, its JSON (and its parts)
FieldCodes = dict[str, FieldCode]  # by field name


def _set_code(state: SetState, old: FieldCode | None) -> tuple[str, SetParts]:
    """A set field's JSON, reusing from `old` (the field's previous encoding) that of every
    element whose entry is the same object (a merge that adds a few elements copies
    the others' entries) and the tombstones' if they are equal."""
    entries: dict[str, str] = {}
    removed_json = None
    before = old[0] if old is not None else None
    if old is not None and old[2] is not None and isinstance(before, SetState):
        known, had = old[2][0], before.adds
        for key, entry in state.adds.items():
            code = known.get(key) if had.get(key) is entry else None
            entries[key] = code if code is not None else (
                f"{_dumps(key)}:{_dumps([entry[0], _stamps(entry[1])])}")
        if state.removed is before.removed or state.removed == before.removed:
            removed_json = old[2][1]
    else:
        entries = {k: f"{_dumps(k)}:{_dumps([v, _stamps(tags)])}"
                   for k, (v, tags) in state.adds.items()}
    if removed_json is None:
        removed_json = _dumps(sorted(map(list, state.removed)))
    return (f'["s",{{{",".join(entries.values())}}},{removed_json},'
            f"{_dumps(_stamp(state.last))},{_dumps(_stamp(state.cleared))}]",
            (entries, removed_json))


def _encode(doc: DocState, known: FieldCodes) -> tuple[bytes, FieldCodes]:
    """`encode_state`, reusing the JSON of fields whose state is in `known` unchanged (and
    of the elements a set already had)."""
    codes: FieldCodes = {}
    parts = []
    for name, state in doc.fields.items():
        old = known.get(name)
        if old is not None and old[0] is state:
            code = old
        elif isinstance(state, SetState):
            text, set_parts = _set_code(state, old)
            code = (state, text, set_parts)
        else:
            code = (state, _dumps(_field(state)), None)
        codes[name] = code
        parts.append(f"{_dumps(name)}:{code[1]}")
    text = (f"[{_dumps(_stamp(doc.deleted))},{_dumps(_stamp(doc.touched))},"
            f"{{{','.join(parts)}}},{_dumps(doc.version)}]")
    return text.encode(), codes


def encode_state(doc: DocState) -> bytes:
    """A document state as compact JSON bytes (the `sync_docs.state` column)."""
    return _encode(doc, {})[0]


def decode_state(blob: bytes) -> DocState:
    """Read a state written by `encode_state`."""
    deleted, touched, fields, *version = json.loads(blob)  # pre-DocState.version blobs lack it
    return DocState(_unstamp(deleted), _unstamp(touched),
                    {name: _unfield(f) for name, f in fields.items()},
                    version[0] if version else {})


def _encode_change(change: Change) -> bytes:
    return encode(ChangesMessage([change]))


def _decode_change(blob: bytes) -> Change:
    msg = decode(bytes(blob))
    assert isinstance(msg, ChangesMessage)  # noqa: S101 (we wrote it)
    return msg.changes[0]


# -- the storage ------------------------------------------------------------------------

class LibsqlStorage:
    """`sync.storage.Storage` on one libSQL connection (used from its one thread)."""

    def __init__(self, conn: Connection, event_retention: int = 100_000,
                 max_doc_bytes: int = MAX_DOC_BYTES) -> None:
        self._conn = conn
        self.event_retention = event_retention
        self.cursor = self._meta_int("cursor")
        self.horizon = self._meta_int("event_horizon")
        self.new_events: list[EventRow] = []
        self._grouped = False
        self._clock = self._meta_int("sync_clock")
        self._acked: dict[str, tuple[dict[str, int], float]] | None = None
        self.max_doc_bytes = max_doc_bytes
        # large states as last committed: key -> (state, its fields' JSON, encoded size)
        self._cache: OrderedDict[tuple[str, str], tuple[DocState, FieldCodes, int]] = (
            OrderedDict())
        self._cached_bytes = 0
        self._staged: dict[tuple[str, str], tuple[DocState, FieldCodes, int]] = {}

    def _meta_int(self, key: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return 0 if row is None else int(row[0])

    def _set_meta(self, key: str, value: int) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, str(value)))

    # Storage protocol ----------------------------------------------------------------

    def load(self) -> StoredState:
        """See `Storage.load`."""
        conn = self._conn
        vv = {o: int(s) for o, s in conn.execute("SELECT origin, seq FROM sync_vv").fetchall()}
        held: dict[str, list[Change]] = {}
        for origin, _seq, blob in conn.execute(
            "SELECT origin, seq, change FROM sync_quarantine ORDER BY origin, seq"
        ).fetchall():
            held.setdefault(origin, []).append(_decode_change(blob))
        self._clock = self._meta_int("sync_clock")
        row = conn.execute("SELECT value FROM meta WHERE key = 'sync_gc'").fetchone()
        gc = GcState() if row is None else GcState(*json.loads(row[0]))
        return StoredState(self._clock, vv, held, gc)

    def compact(self, gc: GcState, purge: list[tuple[str, str]]) -> None:
        """See `Storage.compact`; one transaction."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for origin, base in gc.log_base.items():
                conn.execute("DELETE FROM sync_changes WHERE origin = ? AND seq <= ?",
                             (origin, base))
            for collection, doc_id in purge:
                self._forget((collection, doc_id))
                conn.execute("DELETE FROM sync_docs WHERE collection = ? AND doc_id = ?",
                             (collection, doc_id))
            conn.execute("INSERT INTO meta (key, value) VALUES ('sync_gc', ?) ON CONFLICT (key) "
                         "DO UPDATE SET value = excluded.value",
                         (json.dumps([gc.log_base, gc.horizon]),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def get_doc(self, collection: str, doc_id: str) -> DocState | None:
        """See `Storage.get_doc`."""
        key = (collection, doc_id)
        known = self._known(key)
        if known is not None:
            return known[0]
        row = self._conn.execute(
            "SELECT state FROM sync_docs WHERE collection = ? AND doc_id = ?",
            (collection, doc_id)).fetchone()
        return None if row is None else self._decoded(key, row[0])

    def _known(self, key: tuple[str, str]) -> tuple[DocState, FieldCodes, int] | None:
        """The state of `key` written in this transaction, or its cached committed one."""
        staged = self._staged.get(key)
        if staged is not None:
            return staged
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
        return cached

    def _state_of(self, key: tuple[str, str], blob: bytes) -> DocState:
        """The state of `key` stored as `blob`: the cached one if any, else decoded."""
        known = self._known(key)
        return known[0] if known is not None else self._decoded(key, blob)

    def _decoded(self, key: tuple[str, str], blob: bytes) -> DocState:
        state = decode_state(blob)
        if len(blob) >= CACHED_MIN:
            self._remember(key, (state, {}, len(blob)))
        return state

    def _remember(self, key: tuple[str, str], entry: tuple[DocState, FieldCodes, int]) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._cached_bytes -= old[2]
        if entry[2] < CACHED_MIN:
            return
        self._cache[key] = entry
        self._cached_bytes += entry[2]
        while self._cached_bytes > CACHED_TOTAL and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= dropped[2]

    def _forget(self, key: tuple[str, str]) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._cached_bytes -= old[2]

    def _promote(self) -> None:
        """The staged states are committed: they become the cached ones."""
        staged, self._staged = self._staged, {}
        for key, entry in staged.items():
            self._remember(key, entry)

    def collections(self) -> list[str]:
        """See `Storage.collections`."""
        return [r[0] for r in self._conn.execute(
            "SELECT DISTINCT collection FROM sync_docs ORDER BY collection").fetchall()]

    def list_docs(self, collection: str, after: str | None, limit: int
                  ) -> list[tuple[str, DocState]]:
        """See `Storage.list_docs`."""
        rows = self._conn.execute(
            "SELECT doc_id, state FROM sync_docs WHERE collection = ? AND doc_id > ? "
            "ORDER BY doc_id LIMIT ?", (collection, after or "", limit)).fetchall()
        return [(doc_id, self._state_of((collection, doc_id), state)) for doc_id, state in rows]

    def changes_since(self, origin: str, after_seq: int, limit: int) -> list[Change]:
        """See `Storage.changes_since`."""
        rows = self._conn.execute(
            "SELECT change FROM sync_changes WHERE origin = ? AND seq > ? ORDER BY seq LIMIT ?",
            (origin, after_seq, limit)).fetchall()
        return [_decode_change(r[0]) for r in rows]

    def apply_batch(self, batch: Batch) -> None:
        """One transaction, or one savepoint inside the caller's `group()`."""
        conn = self._conn
        begin, commit, undo = (
            ("SAVEPOINT batch", "RELEASE batch", ("ROLLBACK TO batch", "RELEASE batch"))
            if self._grouped else ("BEGIN IMMEDIATE", "COMMIT", ("ROLLBACK",))
        )
        saved = self.cursor, self.horizon, self._clock
        staged = dict(self._staged)
        conn.execute(begin)
        try:
            events = self._write_batch(batch)
            conn.execute(commit)
        except BaseException:
            for statement in undo:
                conn.execute(statement)
            self.cursor, self.horizon, self._clock = saved
            self._staged = staged
            raise
        self.new_events.extend(events)
        if not self._grouped:
            self._promote()

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """Apply several batches in one transaction (one fsync: group commit).

        Each batch still succeeds or fails alone (a savepoint); if the final commit
        fails, none of them happened and the caller must reload its replica.
        """
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        self._grouped = True
        mark = len(self.new_events)
        try:
            yield
            conn.execute("COMMIT")
            self._promote()
        except BaseException:
            conn.execute("ROLLBACK")
            self._staged = {}
            del self.new_events[mark:]
            self.cursor = self._meta_int("cursor")
            self.horizon = self._meta_int("event_horizon")
            self._clock = self._meta_int("sync_clock")
            raise
        finally:
            self._grouped = False

    def _encoded(self, batch: Batch) -> list[tuple[tuple[str, str], DocState, bytes]]:
        """Each document of `batch` with its encoding, all within `max_doc_bytes` (or
        DocumentTooLarge); their states are staged for the cache."""
        out = []
        for key, state in batch.docs.items():
            known = self._known(key)
            blob, codes = _encode(state, known[1] if known is not None else {})
            if len(blob) > self.max_doc_bytes:
                raise DocumentTooLarge(key[0], key[1], len(blob), self.max_doc_bytes)
            out.append((key, state, blob))
            self._staged[key] = (state, codes, len(blob))
        return out

    def _write_batch(self, batch: Batch) -> list[EventRow]:
        conn = self._conn
        seqs: dict[str, int] = {}
        origin_of: dict[tuple[str, str], str] = {}
        for change in batch.changes:
            if change.origin not in seqs:
                row = conn.execute("SELECT seq FROM sync_vv WHERE origin = ?",
                                   (change.origin,)).fetchone()
                seqs[change.origin] = 0 if row is None else int(row[0])
            if change.seq != seqs[change.origin] + 1:
                raise LocalProtocolError(
                    f"change {change.origin}/{change.seq} does not continue the log")
            seqs[change.origin] = change.seq
            conn.execute("INSERT INTO sync_changes (origin, seq, change) VALUES (?, ?, ?)",
                         (change.origin, change.seq, _encode_change(change)))
            for edit in change.edits:
                origin_of[(edit.collection, edit.doc_id)] = change.origin
        for origin, seq in seqs.items():
            conn.execute("INSERT INTO sync_vv (origin, seq) VALUES (?, ?) "
                         "ON CONFLICT (origin) DO UPDATE SET seq = excluded.seq", (origin, seq))
        events = []
        for (collection, doc_id), state, blob in self._encoded(batch):
            self.cursor += 1
            deleted = not doc_visible(state)
            conn.execute(
                "INSERT INTO sync_docs (collection, doc_id, state, cursor, deleted) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (collection, doc_id) DO UPDATE SET "
                "state = excluded.state, cursor = excluded.cursor, deleted = excluded.deleted",
                (collection, doc_id, blob, self.cursor, int(deleted)))
            event = EventRow(self.cursor, collection, doc_id, deleted,
                             origin_of.get((collection, doc_id), ""))
            conn.execute("INSERT INTO events (cursor, collection, doc_id, deleted, origin) "
                         "VALUES (?, ?, ?, ?, ?)", (event.cursor, collection, doc_id,
                                                    int(deleted), event.origin))
            events.append(event)
        for origin, seq in batch.release:
            gone = conn.execute("DELETE FROM sync_quarantine WHERE origin = ? AND seq = ?",
                                (origin, seq))
            if getattr(gone, "rowcount", 1) == 0:
                raise LocalProtocolError(f"change {origin}/{seq} is not in quarantine")
        for change in batch.hold:
            conn.execute("INSERT INTO sync_quarantine (origin, seq, change) VALUES (?, ?, ?)",
                         (change.origin, change.seq, _encode_change(change)))
        if batch.clock > self._clock:
            self._set_meta("sync_clock", batch.clock)
            self._clock = batch.clock
        self._set_meta("cursor", self.cursor)
        horizon = self.cursor - self.event_retention
        if horizon > self.horizon:
            conn.execute("DELETE FROM events WHERE cursor <= ?", (horizon,))
            self.horizon = horizon
            self._set_meta("event_horizon", horizon)
        return events

    # Acknowledgements (for garbage collection) ----------------------------------------

    def note_acknowledged(self, peer: str, vv: dict[str, int], now: float) -> None:
        """Remember that `peer` holds `vv` (written at most once a minute per peer)."""
        acked = self.acknowledged()
        old = acked.get(peer)
        if old is not None and old[0] == vv and now - old[1] < 60:
            return
        acked[peer] = (dict(vv), now)
        self._acked = acked
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES ('sync_acked', ?) ON CONFLICT (key) "
            "DO UPDATE SET value = excluded.value",
            (json.dumps({p: [v, t] for p, (v, t) in acked.items()}),))

    def acknowledged(self) -> dict[str, tuple[dict[str, int], float]]:
        """Per peer, the version vector it last acknowledged and when (Unix seconds)."""
        if self._acked is None:
            row = self._conn.execute(
                "SELECT value FROM meta WHERE key = 'sync_acked'").fetchone()
            data = {} if row is None else json.loads(row[0])
            self._acked = {p: (v, float(t)) for p, (v, t) in data.items()}
        return dict(self._acked)

    # What the node's API needs ----------------------------------------------------------

    def doc_status(self, collection: str, doc_id: str) -> tuple[int, bool] | None:
        """(cursor, deleted) of a document, without decoding its state."""
        row = self._conn.execute(
            "SELECT cursor, deleted FROM sync_docs WHERE collection = ? AND doc_id = ?",
            (collection, doc_id)).fetchone()
        return None if row is None else (int(row[0]), bool(row[1]))

    def doc_row(self, collection: str, doc_id: str) -> tuple[DocState, int] | None:
        """A document's state and cursor (deleted or not), or None if unknown."""
        known = self._known((collection, doc_id))
        if known is not None:
            status = self.doc_status(collection, doc_id)
            return None if status is None else (known[0], status[0])
        row = self._conn.execute(
            "SELECT state, cursor FROM sync_docs WHERE collection = ? AND doc_id = ?",
            (collection, doc_id)).fetchone()
        return None if row is None else (self._decoded((collection, doc_id), row[0]),
                                         int(row[1]))

    def visible_docs(self, collection: str, after: str | None, since: int | None, limit: int
                     ) -> list[tuple[str, DocState, int]]:
        """Visible documents by id (changed after cursor `since`, if given)."""
        rows = self._conn.execute(
            "SELECT doc_id, state, cursor FROM sync_docs WHERE collection = ? AND doc_id > ? "
            "AND cursor > ? AND deleted = 0 ORDER BY doc_id LIMIT ?",
            (collection, after or "", since or 0, limit)).fetchall()
        return [(d, self._state_of((collection, d), s), int(c)) for d, s, c in rows]

    def events_after(self, cursor: int, limit: int) -> list[EventRow]:
        """Up to `limit` event log entries after `cursor`, oldest first."""
        rows = self._conn.execute(
            "SELECT cursor, collection, doc_id, deleted, origin FROM events WHERE cursor > ? "
            "ORDER BY cursor LIMIT ?", (cursor, limit)).fetchall()
        return [EventRow(int(c), col, d, bool(dl), o) for c, col, d, dl, o in rows]

    def declarations(self) -> dict[str, dict[str, str]]:
        """The declared field types, by collection and field name."""
        return {name: json.loads(fields) for name, fields in
                self._conn.execute("SELECT name, fields FROM collections").fetchall()}

    def save_declaration(self, collection: str, fields: dict[str, str]) -> None:
        """Store a collection's field types, replacing any earlier declaration."""
        self._conn.execute(
            "INSERT INTO collections (name, fields) VALUES (?, ?) ON CONFLICT (name) "
            "DO UPDATE SET fields = excluded.fields", (collection, json.dumps(fields)))
