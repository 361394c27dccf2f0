"""Where the two halves of a relayed connection meet, sans-I/O.

`SpliceMatcher`: both sides of a ready session open a splice with their one-time key;
the first to arrive waits (up to `wait` seconds) for the other, the second is matched
to it. States of a splice: waiting → matched, or waiting → expired (or left).

`Mailboxes`: pairing across networks. An inviter waits in a box named by its
nameplate; a joiner opening the same box is matched to it, a joiner finding nobody is
told the box is absent. A newer inviter replaces an older one in the same box. Boxes
are bounded in number, overall and per client IP, and an inviter waits at most `wait`
seconds. States of a box: waiting → matched | replaced | expired (or left).

Both are generic over the adapter's connection handle `C`, which they only hold and
hand back. Deadlines sit in a heap: `get_timer()` / `handle_timer(now)`.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Expired", "Mailboxes", "Refused", "Replaced", "SpliceMatcher"]

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Expired(Generic[C]):
    """`conn` waited in `key` past its deadline: nobody came."""

    key: str
    conn: C


@dataclass(frozen=True, slots=True)
class Replaced(Generic[C]):
    """A newer inviter took the box: `old` waits no more."""

    old: C


@dataclass(frozen=True, slots=True)
class Refused:
    """The box was not opened; `reason` is counted in the metrics."""

    reason: str


@dataclass(slots=True)
class _Waiter(Generic[C]):
    conn: C
    ip: str
    deadline: float
    ticket: int


class _WaitingRoom(Generic[C]):
    """One waiter per key, each with a deadline; the shared part of both cores."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self._waiting: dict[str, _Waiter[C]] = {}
        self._per_ip: Counter[str] = Counter()
        self._deadlines: list[tuple[float, int, str]] = []
        self._tickets = itertools.count()

    def __len__(self) -> int:
        return len(self._waiting)

    def _add(self, key: str, conn: C, ip: str, now: float) -> None:
        waiter = _Waiter(conn, ip, now + self.wait, next(self._tickets))
        self._waiting[key] = waiter
        self._per_ip[ip] += 1
        heapq.heappush(self._deadlines, (waiter.deadline, waiter.ticket, key))

    def _take(self, key: str) -> C | None:
        waiter = self._waiting.pop(key, None)
        if waiter is None:
            return None
        self._per_ip[waiter.ip] -= 1
        if not self._per_ip[waiter.ip]:
            del self._per_ip[waiter.ip]
        return waiter.conn

    def leave(self, key: str, conn: C) -> None:
        """`conn` stopped waiting in `key` (it closed); a no-op once matched or expired."""
        waiter = self._waiting.get(key)
        if waiter is not None and waiter.conn is conn:
            self._take(key)

    def get_timer(self) -> float | None:
        """When `handle_timer` has work next (stale entries included), or None."""
        return self._deadlines[0][0] if self._deadlines else None

    def handle_timer(self, now: float) -> list[Expired[C]]:
        """Expire the waiters whose deadline is at or before `now`."""
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, ticket, key = heapq.heappop(self._deadlines)
            waiter = self._waiting.get(key)
            if waiter is not None and waiter.ticket == ticket:
                self._take(key)
                expired.append(Expired(key, waiter.conn))
        return expired


class SpliceMatcher(_WaitingRoom[C]):
    """Pairs the two sides of a relayed session by its session ID."""

    def arrive(self, sid: str, conn: C, now: float) -> C | None:
        """The side already waiting for `sid` (now matched to `conn`), or None: `conn`
        waits until the other side arrives or `now + wait`."""
        partner = self._take(sid)
        if partner is None:
            self._add(sid, conn, "", now)
        return partner


class Mailboxes(_WaitingRoom[C]):
    """Pairing mailboxes: inviters wait in boxes, joiners are matched to them."""

    def __init__(self, wait: float, max_boxes: int, max_boxes_per_ip: int) -> None:
        super().__init__(wait)
        self.max_boxes = max_boxes
        self.max_boxes_per_ip = max_boxes_per_ip

    def invite(self, box: str, conn: C, ip: str, now: float) -> Refused | Replaced[C] | None:
        """Let `conn` (from `ip`) wait in `box`: None, or Replaced(old inviter), or
        Refused when the relay or this IP has no box left."""
        old = self._waiting.get(box)
        if old is None and len(self._waiting) >= self.max_boxes:
            return Refused("mailboxes_full")
        freed = 1 if old is not None and old.ip == ip else 0
        if self._per_ip[ip] - freed >= self.max_boxes_per_ip:
            return Refused("ip_mailboxes")
        replaced = self._take(box)
        self._add(box, conn, ip, now)
        return None if replaced is None else Replaced(replaced)

    def join(self, box: str) -> C | None:
        """The inviter waiting in `box` (now matched), or None: nobody is there."""
        return self._take(box)
