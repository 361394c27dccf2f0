"""Record refresh core (sans-I/O): when to publish our DHT record for each peer, and
when to look up each peer's record for us.

No I/O and no clock: the adapter (`p2pgate.discovery.wan`) tells it the trusted peers,
which of them need a lookup (no direct session), what our record says, and the time;
`handle_timer(now)` returns the commands that are due, and the adapter reports how
each one went (`published`/`publish_failed`, `looked_up`/`lookup_failed`).

Publishing, per peer:
  DUE        nothing published yet (a new peer, start-up), our content changed, the
             epoch changed, or the record nears its expiry: `PublishRecord` now.
  PUBLISHED  stored; due again at min(published + republish, start of next epoch).
  FAILING    the last attempt failed: retried after a backoff that doubles up to
             `max_backoff`; a success starts it over (PUBLISHED).
Looking up, per peer:
  IDLE       a direct session exists: no lookups.
  WANTED     no direct session: `LookupPeer` at once, then every `lookup_every`, for
             the current and the previous epoch, and the next one only in the last
             `NEXT_EPOCH_LEAD` seconds before it starts (asking for it all day long
             would tell the DHT tomorrow's key a day early).
  FAILING    the last lookup failed: retried after the same kind of backoff.
A command handed out counts as an attempt: until its outcome is reported, the peer is
scheduled as if it had failed, so an adapter that never reports cannot stall it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from p2pgate.discovery.dht.records import (
    EPOCH,
    EXPIRY_JITTER,
    RECORD_LIFETIME,
    RecordContent,
    epoch_of,
)
from p2pgate.errors import LocalProtocolError
from p2pgate.identity.deviceid import DeviceID

__all__ = [
    "NEXT_EPOCH_LEAD", "Command", "LookupPeer", "PublishRecord", "RecordRefresh",
    "lookup_epochs", "needs_lookup",
]

# A peer whose clock runs ahead, or that (re)starts just after its epoch boundary, has
# only a next-epoch record: looked up this long before our boundary (clocks up to 10 min
# apart). A peer that switched earlier still has its current-epoch record for hours.
NEXT_EPOCH_LEAD = 600.0


@dataclass(frozen=True, slots=True)
class PublishRecord:
    """Seal and store our record for `peer` in `epoch`, saying `content`."""

    peer: DeviceID
    epoch: int
    content: RecordContent


@dataclass(frozen=True, slots=True)
class LookupPeer:
    """Look up `peer`'s record for us, trying these epochs (see `lookup_epochs`)."""

    peer: DeviceID
    epochs: tuple[int, ...]


Command = PublishRecord | LookupPeer


def lookup_epochs(now: float) -> tuple[int, ...]:
    """The epochs whose records we look up at `now`: the current one, the previous one,
    and the next one only in the last `NEXT_EPOCH_LEAD` seconds before it."""
    epoch = epoch_of(now)
    if (epoch + 1) * EPOCH - now <= NEXT_EPOCH_LEAD:
        return (epoch, epoch - 1, epoch + 1)
    return (epoch, epoch - 1)


def needs_lookup(path: str | None) -> bool:
    """Whether a peer whose live session runs on `path` (None: no session) is looked
    up: only a direct session makes its record useless to us."""
    return path in (None, "relay")


@dataclass(slots=True)
class _Schedule:
    """One repeating job (publish or lookup) for one peer."""

    due: float | None  # None: not wanted (lookups of a directly connected peer)
    backoff: float
    failures: int = 0


@dataclass(slots=True)
class _Peer:
    publish: _Schedule
    lookup: _Schedule
    published: RecordContent | None = None  # what the record stored last says


class RecordRefresh:
    """Decides when to publish our record for each peer and when to look theirs up."""

    def __init__(self, *, republish: float = 3600.0, lookup_every: float = 30.0,
                 first_backoff: float = 2.0, max_backoff: float = 60.0,
                 lifetime: float = RECORD_LIFETIME - EXPIRY_JITTER) -> None:
        if not 0 < republish < lifetime:
            raise LocalProtocolError("republish must be positive and below the record "
                                     "lifetime")
        if not 0 < first_backoff <= max_backoff or lookup_every <= 0:
            raise LocalProtocolError("intervals and backoffs must be positive")
        self._republish = republish
        self._lookup_every = lookup_every
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._peers: dict[DeviceID, _Peer] = {}
        self._content: RecordContent | None = None

    # -- inputs ---------------------------------------------------------------------

    def set_peers(self, peers: Iterable[DeviceID], now: float) -> None:
        """The trusted peers (with a pair secret); a new one is published for at once."""
        current = set(peers)
        for gone in self._peers.keys() - current:
            del self._peers[gone]
        for peer in current - self._peers.keys():
            self._peers[peer] = _Peer(_Schedule(now, self._first_backoff),
                                      _Schedule(None, self._first_backoff))

    def set_needs_lookup(self, peers: Iterable[DeviceID], now: float) -> None:
        """The peers without a direct session: looked up at once, then every interval."""
        wanted = set(peers)
        for peer, state in self._peers.items():
            lookup = state.lookup
            if peer not in wanted:
                state.lookup = _Schedule(None, self._first_backoff)
            elif lookup.due is None:
                lookup.due = now

    def set_content(self, content: RecordContent, now: float) -> None:
        """What our record says; a change is published at once (except to a peer whose
        publishing is failing: it keeps its backoff)."""
        if content == self._content:
            return
        self._content = content
        for state in self._peers.values():
            if state.publish.failures == 0 and state.published != content:
                state.publish.due = min(_due(state.publish), now)

    # -- outcomes -------------------------------------------------------------------

    def published(self, command: PublishRecord, now: float) -> None:
        """The record of `command` is stored: due again before it expires, at the next
        epoch, or at once if our content changed meanwhile."""
        state = self._peers.get(command.peer)
        if state is None:
            return
        state.published = command.content
        due = min(now + self._republish, (command.epoch + 1) * EPOCH)
        if command.content != self._content:
            due = now
        state.publish = _Schedule(due, self._first_backoff)

    def publish_failed(self, command: PublishRecord, now: float) -> None:
        """Publishing `command` failed: retry after the backoff."""
        state = self._peers.get(command.peer)
        if state is not None:
            self._failed(state.publish, now)

    def looked_up(self, command: LookupPeer, now: float) -> None:
        """The lookup ran (found or not): the next one in an interval."""
        state = self._peers.get(command.peer)
        if state is not None and state.lookup.due is not None:
            state.lookup = _Schedule(now + self._lookup_every, self._first_backoff)

    def lookup_failed(self, command: LookupPeer, now: float) -> None:
        """The lookup failed: retry after the backoff."""
        state = self._peers.get(command.peer)
        if state is not None and state.lookup.due is not None:
            self._failed(state.lookup, now)

    # -- timers ---------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When `handle_timer` has something to do next, or None."""
        dues = [s.due for p in self._peers.values() for s in (p.publish, p.lookup)
                if s.due is not None]
        return min(dues, default=None)

    def handle_timer(self, now: float) -> list[Command]:
        """The commands due at `now` (nothing to publish before our content is known)."""
        commands: list[Command] = []
        epoch = epoch_of(now)
        for peer, state in sorted(self._peers.items()):
            if self._content is not None and _is_due(state.publish, now):
                commands.append(PublishRecord(peer, epoch, self._content))
                self._attempted(state.publish, now)
            if _is_due(state.lookup, now):
                commands.append(LookupPeer(peer, lookup_epochs(now)))
                self._attempted(state.lookup, now)
        return commands

    def _attempted(self, schedule: _Schedule, now: float) -> None:
        schedule.due = now + schedule.backoff  # provisional, until the outcome is reported

    def _failed(self, schedule: _Schedule, now: float) -> None:
        schedule.failures += 1
        schedule.due = now + schedule.backoff
        schedule.backoff = min(schedule.backoff * 2, self._max_backoff)


def _is_due(schedule: _Schedule, now: float) -> bool:
    return schedule.due is not None and schedule.due <= now


def _due(schedule: _Schedule) -> float:
    return float("inf") if schedule.due is None else schedule.due
