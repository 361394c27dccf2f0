"""The sync driver core: what one peer session needs done, and when (sans-I/O).

The connection manager owns the socket; `Documents.peer_step` hands this core what
the peer sent and the current time, and gets back what to send, whether the
session ended, and when to come back. The core decides the rest: it runs the
session's retransmit timer and the replica's quarantine timer when they are due,
reports that the peer holds everything we hold (an acknowledgement to record, for
garbage collection), and measures the peer's backlog.

States:

    RUNNING --the session closed (Close received, protocol error, close())--> CLOSED

RUNNING: every `step` feeds the received messages, runs due timers and collects
  what to send. CLOSED: a step only flushes what the session still has to send
  (its Close) and reports the end; there is no timer.

Timers are absolute times (Unix seconds) or None. A timer in the past, 0.0
included ("more to send, run again at once"), is due: it is a value, never "no
timer".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from sync.replica import Replica
from sync.session import PeerSession

__all__ = ["BacklogMeasured", "DriverEvent", "PeerCaughtUp", "Stepped", "SyncDriver"]


@dataclass(frozen=True, slots=True)
class PeerCaughtUp:
    """The peer holds everything we hold (version-vector session): record that it
    acknowledged `version_vector` at `at`."""

    peer_id: str
    version_vector: dict[str, int]
    at: float


@dataclass(frozen=True, slots=True)
class BacklogMeasured:
    """After a step: the peer lacks `lacking` of the `total` changes we hold."""

    peer_id: str
    lacking: int
    total: int


DriverEvent = PeerCaughtUp | BacklogMeasured


@dataclass(frozen=True, slots=True)
class Stepped:
    """What one step produced: messages for the peer, whether the session ended,
    and when to step again (None: only when something arrives)."""

    messages: list[bytes]
    closed: bool
    timer: float | None


class SyncDriver:
    """Drives one `PeerSession` of `replica`: call `step` on every wake-up."""

    def __init__(self, replica: Replica, session: PeerSession) -> None:
        self.replica = replica
        self.session = session
        self._events: deque[DriverEvent] = deque()

    @property
    def peer_id(self) -> str:
        """The peer's device ID."""
        return self.session.peer_id

    @property
    def closed(self) -> bool:
        """Whether the session has ended."""
        return self.session.closed

    def step(self, received: list[bytes], now: float) -> Stepped:
        """Feed `received`, run due timers, and return what to send and when to return."""
        session = self.session
        if session.closed:
            return Stepped(session.messages_to_send(now), True, None)
        for data in received:
            session.receive(data, now)
        self.handle_timer(now)
        out = session.messages_to_send(now)
        self._measure(now)
        return Stepped(out, session.closed, self.get_timer())

    def get_timer(self) -> float | None:
        """The earliest of the session's and the replica's timers, or None.

        A due timer is returned as it is, even 0.0: the caller runs again at once."""
        timers = [t for t in (self.session.get_timer(), self.replica.get_timer())
                  if t is not None]
        return min(timers) if timers else None

    def due(self, now: float) -> bool:
        """Whether to step again at `now` already (more to send, or a timer ran out)."""
        timer = self.get_timer()
        return timer is not None and timer <= now

    def handle_timer(self, now: float) -> None:
        """Run the session's and the replica's timers if they are due at `now`."""
        timer = self.session.get_timer()
        if timer is not None and timer <= now:
            self.session.handle_timer(now)
        held = self.replica.get_timer()
        if held is not None and held <= now:
            self.replica.handle_timer(now)

    def next_event(self) -> DriverEvent | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def _measure(self, now: float) -> None:
        ours = self.replica.version_vector()
        theirs = self.session.peer_version_vector()
        if self.session.by_state is None and ours == theirs:
            self._events.append(PeerCaughtUp(self.peer_id, theirs, now))
        self._events.append(BacklogMeasured(self.peer_id, _lacking(ours, theirs),
                                            sum(ours.values())))


def _lacking(ours: Mapping[str, int], theirs: Mapping[str, int]) -> int:
    return sum(max(0, seq - theirs.get(origin, 0)) for origin, seq in ours.items())
