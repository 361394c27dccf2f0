"""The relay's matchmaking core, sans-I/O: who is here, who asked for whom.

A device attaches with one control connection. `request(a, b)` invites b if b is
attached, within the invitation rates and both session limits; the invitation lives
until the *answer deadline* (`unavailable_delay` after the request). Invitations are
rate-limited per (requester, target) pair and per requester, so no device can use up
the invitations another device's peers need. b accepts or refuses. Accepting makes
the session `ready` at once and both sides get a one-time splice key; refusing,
absence, rate limits and the deadline all look the same to a: one `unavailable` at
the deadline, never earlier. A ready session whose keys nobody claims within
`splice_wait` expires; once claimed it lives until its splice closes
(`close_session`).

States of a session: inviting → ready → spliced (a key claimed) → (closed), or
inviting → (unavailable), or ready → (expired).
"""

from __future__ import annotations

import heapq
import secrets
from dataclasses import dataclass, field

from p2pgate.identity.deviceid import DeviceID
from p2pgate.ratelimit import RateLimiter

__all__ = ["Broker", "Send", "SpliceRequest"]


@dataclass(frozen=True, slots=True)
class Send:
    """Send `message` on the control connection of `to`."""

    to: DeviceID
    message: dict[str, object]


@dataclass(slots=True)
class SpliceRequest:
    """One request for a relayed session, from invitation to its splice's end."""

    sid: str
    requester: DeviceID
    target: DeviceID
    req: int
    deadline: float
    keys: dict[str, DeviceID] = field(default_factory=dict)  # splice key -> side
    ready: bool = False
    refused: bool = False
    splice_by: float = 0.0  # a ready session expires then unless a key was claimed

    @property
    def claimed(self) -> int:
        """How many of the two splice keys were claimed."""
        return 2 - len(self.keys) if self.ready else 0


class Broker:
    """Who is attached, who asked for whom: invitations, answers, splice keys."""

    def __init__(self, *, unavailable_delay: float, invite_rate: float,
                 max_sessions_per_device: int, splice_wait: float = 30.0) -> None:
        self.unavailable_delay = unavailable_delay
        self.max_sessions = max_sessions_per_device
        self.splice_wait = splice_wait
        # per (requester, target): `invite_rate`; per requester, over all its targets: 4x
        self._invites = RateLimiter(invite_rate, max(1, int(invite_rate * 2)))
        self._requesters = RateLimiter(4 * invite_rate, max(4, int(invite_rate * 16)))
        self.expired = 0  # ready sessions nobody spliced in time
        self._attached: set[DeviceID] = set()
        self._sessions: dict[str, SpliceRequest] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._count: dict[DeviceID, int] = {}

    @property
    def attached(self) -> int:
        """How many devices have a control connection."""
        return len(self._attached)

    @property
    def sessions(self) -> int:
        """How many sessions are ready and not yet closed."""
        return sum(1 for s in self._sessions.values() if s.ready)

    @property
    def spliced(self) -> int:
        """How many sessions have both sides in their splice (what a drain waits for)."""
        return sum(1 for s in self._sessions.values() if s.claimed == 2)

    def is_attached(self, device: DeviceID) -> bool:
        """Whether `device` has a control connection."""
        return device in self._attached

    def attach(self, device: DeviceID) -> None:
        """`device` logged in on a control connection."""
        self._attached.add(device)

    def detach(self, device: DeviceID) -> None:
        """`device`'s control connection closed."""
        self._attached.discard(device)

    def request(self, requester: DeviceID, target: DeviceID, req: int, now: float) -> list[Send]:
        """`requester` asks for a session to `target` (request `req`): the invitation
        to send, if any (a refusal is answered at the deadline, like any other)."""
        sid = secrets.token_urlsafe(12)
        session = SpliceRequest(sid, requester, target, req, now + self.unavailable_delay)
        self._sessions[sid] = session
        heapq.heappush(self._deadlines, (session.deadline, sid))
        if (
            not self._requesters.take(str(requester), now)
            or target == requester
            or target not in self._attached
            or self._count.get(requester, 0) >= self.max_sessions
            or self._count.get(target, 0) >= self.max_sessions
            or not self._invites.take(f"{requester}>{target}", now)
        ):
            session.refused = True  # answered at the deadline like any refusal
            return []
        return [Send(target, {"t": "invite", "sid": sid, "from": str(requester)})]

    def answer(self, target: DeviceID, sid: str, accept: bool, now: float) -> list[Send]:
        """`target` accepted or refused invitation `sid` at `now`: the `ready` messages to
        send to both sides on acceptance (its keys must be claimed within `splice_wait`)."""
        session = self._sessions.get(sid)
        if session is None or session.target != target or session.ready or session.refused:
            return []
        if not accept:
            session.refused = True
            return []
        session.ready = True
        session.splice_by = now + self.splice_wait
        heapq.heappush(self._deadlines, (session.splice_by, sid))
        for side in (session.requester, session.target):
            self._count[side] = self._count.get(side, 0) + 1
        key_a, key_b = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        session.keys = {key_a: session.requester, key_b: session.target}
        return [
            Send(session.requester, {"t": "ready", "req": session.req, "sid": sid,
                                     "key": key_a, "peer": str(target)}),
            Send(session.target, {"t": "ready", "sid": sid, "key": key_b,
                                  "peer": str(session.requester)}),
        ]

    def claim(self, sid: str, key: str) -> DeviceID | None:
        """The side a splice key belongs to (each key works once), or None."""
        session = self._sessions.get(sid)
        if session is None or not session.ready:
            return None
        return session.keys.pop(key, None)

    def close_session(self, sid: str) -> None:
        """The splice of `sid` ended (or never started)."""
        session = self._sessions.pop(sid, None)
        if session is not None and session.ready:
            for side in (session.requester, session.target):
                self._count[side] -= 1
                if not self._count[side]:
                    del self._count[side]

    def get_timer(self) -> float | None:
        """The next answer or splice deadline, or None."""
        return self._deadlines[0][0] if self._deadlines else None

    def handle_timer(self, now: float) -> list[Send]:
        """The `unavailable` answers due at `now`; ready sessions nobody spliced by
        `now` expire (silently: both sides were told `ready`)."""
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, sid = heapq.heappop(self._deadlines)
            session = self._sessions.get(sid)
            if session is None:
                continue
            if session.ready:
                if session.claimed == 0 and session.splice_by <= now:
                    self.expired += 1
                    self.close_session(sid)
                continue
            del self._sessions[sid]
            if session.requester in self._attached:
                out.append(Send(session.requester, {"t": "unavailable", "req": session.req}))
        return out
