"""The storage a replica needs, as a small protocol, and an in-memory implementation.

A SQL implementation maps it onto a few tables: documents (collection, id, state
blob), the change log keyed by (origin, seq), the version vector (origin, seq),
the quarantine (origin, seq, change blob) and one row of metadata (the clock).
`apply_batch` must be one transaction: after a crash, all of a batch or none of
it is visible. Packed HLCs fit in 53 bits, so they bind as plain integers.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from sync.errors import LocalProtocolError
from sync.model import Change, DocState

__all__ = ["Batch", "GcState", "MemoryStorage", "Storage", "StoredState"]

DocKey = tuple[str, str]


@dataclass(slots=True)
class StoredState:
    """What a replica loads when it starts."""

    clock: int = 0
    version_vector: dict[str, int] = field(default_factory=dict)
    quarantine: dict[str, list[Change]] = field(default_factory=dict)
    gc: GcState = field(default_factory=lambda: GcState())


@dataclass(slots=True)
class GcState:
    """What garbage collection removed: per origin, the changes up to `log_base` are
    gone from the log, and every edit stamped at or before `horizon` had reached
    every peer when deleted documents made only of such edits were purged."""

    log_base: dict[str, int] = field(default_factory=dict)
    horizon: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Batch:
    """One atomic write.

    `changes` are appended to the change log; for each origin they continue its
    sequence without a gap, which advances the version vector. `docs` are the new
    states of the documents they touched. `hold` adds changes to the quarantine
    and `release` removes (origin, seq) entries from it.
    """

    changes: list[Change] = field(default_factory=list)
    docs: dict[DocKey, DocState] = field(default_factory=dict)
    clock: int = 0
    hold: list[Change] = field(default_factory=list)
    release: list[tuple[str, int]] = field(default_factory=list)


class Storage(Protocol):
    """Persistence for one replica. Single writer; reads see every applied batch."""

    def load(self) -> StoredState:
        """Clock, version vector and quarantine, as last written."""
        ...

    def get_doc(self, collection: str, doc_id: str) -> DocState | None:
        """The state of a document (visible or not), or None if unknown."""
        ...

    def collections(self) -> list[str]:
        """Every collection that holds a document, sorted."""
        ...

    def list_docs(
        self, collection: str, after: str | None, limit: int
    ) -> list[tuple[str, DocState]]:
        """Up to `limit` documents (visible or not) with id > `after`, by id."""
        ...

    def changes_since(self, origin: str, after_seq: int, limit: int) -> list[Change]:
        """Logged changes of `origin` with seq > `after_seq`, in order."""
        ...

    def apply_batch(self, batch: Batch) -> None:
        """Write the batch atomically, or raise and write nothing."""
        ...

    def compact(self, gc: GcState, purge: list[DocKey]) -> None:
        """Atomically: drop logged changes up to `gc.log_base`, delete the `purge`
        documents, and store `gc`."""
        ...


class MemoryStorage:
    """Storage in dictionaries, for tests, benchmarks and throwaway replicas."""

    def __init__(self) -> None:
        self.docs: dict[DocKey, DocState] = {}
        self.log: dict[str, list[Change]] = {}
        self.clock = 0
        self.quarantine: dict[str, list[Change]] = {}
        self.gc = GcState()
        self._sorted_ids: dict[str, list[str]] | None = None

    def _base(self, origin: str) -> int:
        return self.gc.log_base.get(origin, 0)

    def load(self) -> StoredState:
        """See `Storage.load`."""
        vv = {o: self._base(o) + len(cs) for o, cs in self.log.items() if cs or self._base(o)}
        held = {o: list(cs) for o, cs in self.quarantine.items() if cs}
        return StoredState(self.clock, vv, held, GcState(dict(self.gc.log_base),
                                                         dict(self.gc.horizon)))

    def compact(self, gc: GcState, purge: list[DocKey]) -> None:
        """See `Storage.compact`."""
        for origin, base in gc.log_base.items():
            log = self.log.setdefault(origin, [])
            del log[: base - self._base(origin)]
        for key in purge:
            del self.docs[key]
        self._sorted_ids = None
        self.gc = GcState(dict(gc.log_base), dict(gc.horizon))

    def get_doc(self, collection: str, doc_id: str) -> DocState | None:
        """See `Storage.get_doc`."""
        return self.docs.get((collection, doc_id))

    def collections(self) -> list[str]:
        """See `Storage.collections`."""
        return sorted(self._ids())

    def _ids(self) -> dict[str, list[str]]:
        if self._sorted_ids is None:
            ids: dict[str, list[str]] = {}
            for c, d in self.docs:
                ids.setdefault(c, []).append(d)
            for lst in ids.values():
                lst.sort()
            self._sorted_ids = ids
        return self._sorted_ids

    def list_docs(
        self, collection: str, after: str | None, limit: int
    ) -> list[tuple[str, DocState]]:
        """See `Storage.list_docs`."""
        ids = self._ids().get(collection, [])
        start = 0 if after is None else bisect.bisect_right(ids, after)
        docs = self.docs
        return [(doc_id, docs[(collection, doc_id)]) for doc_id in ids[start : start + limit]]

    def _apply_one(self, batch: Batch) -> None:
        change = batch.changes[0]
        log = self.log.get(change.origin)
        if log is None:
            log = self.log[change.origin] = []
        if change.seq != self._base(change.origin) + len(log) + 1:
            raise LocalProtocolError(
                f"change {change.origin}/{change.seq} does not continue the log"
            )
        docs = self.docs
        if self._sorted_ids is not None and any(k not in docs for k in batch.docs):
            self._sorted_ids = None
        log.append(change)
        docs.update(batch.docs)
        if batch.clock > self.clock:
            self.clock = batch.clock

    def changes_since(self, origin: str, after_seq: int, limit: int) -> list[Change]:
        """See `Storage.changes_since`; raises LocalProtocolError if they were collected."""
        start = after_seq - self._base(origin)
        if start < 0:
            raise LocalProtocolError(f"changes of {origin} up to {self._base(origin)} are gone")
        return self.log.get(origin, [])[start : start + limit]

    def apply_batch(self, batch: Batch) -> None:
        """See `Storage.apply_batch`; raises LocalProtocolError if the batch leaves a gap."""
        if len(batch.changes) == 1 and not batch.hold and not batch.release:
            self._apply_one(batch)
            return
        next_seq: dict[str, int] = {}
        for change in batch.changes:
            expected = next_seq.get(change.origin)
            if expected is None:
                expected = self._base(change.origin) + len(self.log.get(change.origin, ())) + 1
            if change.seq != expected:
                raise LocalProtocolError(
                    f"change {change.origin}/{change.seq} does not continue the log at {expected}"
                )
            next_seq[change.origin] = expected + 1
        _check_release(self.quarantine, batch.release)
        # validated: nothing below can fail, so the batch lands whole
        log = self.log
        for change in batch.changes:
            lst = log.get(change.origin)
            if lst is None:
                lst = log[change.origin] = []
            lst.append(change)
        if self._sorted_ids is not None and any(k not in self.docs for k in batch.docs):
            self._sorted_ids = None
        self.docs.update(batch.docs)
        if batch.clock > self.clock:
            self.clock = batch.clock
        for origin, seq in batch.release:
            held = self.quarantine[origin]
            held[:] = [c for c in held if c.seq != seq]
        for change in batch.hold:
            self.quarantine.setdefault(change.origin, []).append(change)


def _check_release(
    quarantine: Mapping[str, list[Change]], release: Iterable[tuple[str, int]]
) -> None:
    for origin, seq in release:
        if not any(c.seq == seq for c in quarantine.get(origin, ())):
            raise LocalProtocolError(f"change {origin}/{seq} is not in quarantine")
