"""Selective sync: per peer and collection, which way documents flow, and which ones.

A device's policy *for a peer* gives each collection a mode -- `both`, `send` (we
send, never accept), `receive` (we accept, never send) or `none` -- and an optional
document filter (`sync.filters`). Collections not listed use `default` (`both`).
The filter says what the peer may hold: we send only documents that match it now,
and refuse a document from the peer unless it matches after the merge.

Peers exchange their policies in Hello, so each side knows what the other will
send and accept: a document flows from us to the peer when our mode sends, theirs
receives, and it matches both filters (each side evaluates them on its own copy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sync.errors import LocalProtocolError, RemoteProtocolError
from sync.filters import FilterError, Predicate, compile_filter

__all__ = ["MODES", "CollectionPolicy", "Flow", "PeerPolicy"]

MODES = ("both", "send", "receive", "none")
_SENDS = ("both", "send")
_RECEIVES = ("both", "receive")
MAX_COLLECTIONS = 1024


@dataclass(frozen=True, slots=True)
class CollectionPolicy:
    """One collection's sync mode (one of MODES) and optional document filter."""

    mode: str = "both"
    filter: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LocalProtocolError(f"sync mode must be one of {', '.join(MODES)}")

    def predicate(self) -> Predicate | None:
        """The compiled filter, or None when documents are not filtered."""
        return None if self.filter is None else compile_filter(self.filter)


@dataclass(frozen=True, slots=True)
class PeerPolicy:
    """A device's policy for one peer: per-collection rules, `default` for the unlisted ones."""

    collections: Mapping[str, CollectionPolicy] = field(default_factory=dict)
    default: str = "both"

    def __post_init__(self) -> None:
        if self.default not in MODES:
            raise LocalProtocolError(f"sync mode must be one of {', '.join(MODES)}")
        for c in self.collections.values():
            c.predicate()  # a bad filter fails here, not in the middle of a sync

    def get(self, collection: str) -> CollectionPolicy:
        """The rule for a collection, falling back to `default` with no filter."""
        return self.collections.get(collection) or CollectionPolicy(self.default)

    @property
    def complete(self) -> bool:
        """Everything flows both ways: version vectors can reconcile."""
        return self.default == "both" and all(
            c.mode == "both" and c.filter is None for c in self.collections.values())

    def to_wire(self) -> dict[str, Any]:
        """The policy as the JSON-like value sent in Hello (see `from_wire`)."""
        return {"default": self.default, "collections": {
            name: {"mode": c.mode, "filter": c.filter} if c.filter is not None
            else {"mode": c.mode} for name, c in self.collections.items()}}

    @classmethod
    def from_wire(cls, data: Any) -> PeerPolicy:
        """A peer's policy from its Hello; raises RemoteProtocolError if malformed."""
        try:
            if not isinstance(data, dict) or not isinstance(data.get("collections"), dict):
                raise LocalProtocolError("not a policy")
            if len(data["collections"]) > MAX_COLLECTIONS:
                raise LocalProtocolError("too many collections")
            collections = {}
            for name, c in data["collections"].items():
                if not isinstance(c, dict) or set(c) - {"mode", "filter"}:
                    raise LocalProtocolError("not a collection policy")
                collections[name] = CollectionPolicy(c.get("mode", "both"), c.get("filter"))
            return cls(collections, data.get("default", "both"))
        except (LocalProtocolError, FilterError, TypeError) as exc:
            raise RemoteProtocolError(f"bad policy in Hello: {exc}") from None


class Flow:
    """What may flow between us and one peer, from both policies."""

    def __init__(self, mine: PeerPolicy, theirs: PeerPolicy) -> None:
        self.mine, self.theirs = mine, theirs
        self._cache: dict[str, tuple[bool, bool, list[Predicate], Predicate | None]] = {}

    @property
    def complete(self) -> bool:
        """Both policies let everything flow both ways, unfiltered."""
        return self.mine.complete and self.theirs.complete

    def _rules(self, collection: str
               ) -> tuple[bool, bool, list[Predicate], Predicate | None]:
        rules = self._cache.get(collection)
        if rules is None:
            m, t = self.mine.get(collection), self.theirs.get(collection)
            own = m.predicate()
            preds = [p for p in (own, t.predicate()) if p is not None]
            rules = (m.mode in _SENDS and t.mode in _RECEIVES,
                     m.mode in _RECEIVES and t.mode in _SENDS, preds, own)
            self._cache[collection] = rules
        return rules

    def shared(self, collection: str) -> bool:
        """Whether any document of the collection may flow either way."""
        send, receive, _, _ = self._rules(collection)
        return send or receive

    def filtered(self, collection: str) -> bool:
        """Whether either side filters this collection."""
        return bool(self._rules(collection)[2])

    def matches(self, collection: str, view: Mapping[str, Any]) -> bool:
        """Whether a document view passes both sides' filters, whatever the modes."""
        return all(p(view) for p in self._rules(collection)[2])

    def may_send(self, collection: str, view: Mapping[str, Any]) -> bool:
        """Whether a document may be sent: we send, the peer receives, and both filters match."""
        send, _, preds, _ = self._rules(collection)
        return send and all(p(view) for p in preds)

    def may_receive(self, collection: str, view: Mapping[str, Any]) -> bool:
        """Whether a document (as it would be after the merge) is accepted from the peer.
        Our own filter decides: the peer's is its business."""
        _, receive, _, own = self._rules(collection)
        return receive and (own is None or own(view))
