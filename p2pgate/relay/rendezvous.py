"""Where the two halves of a relayed connection meet, sans-I/O.

`SpliceMatcher`: both sides of a ready session open a splice with their one-time key;
the first to arrive waits (up to `wait` seconds) for the other, the second is matched
to it. States of a splice: waiting → matched, or waiting → expired (or left).

`Mailboxes`: pairing across networks, as Magic Wormhole's mailbox server does it. An
inviter's connection *holds* a box for one offer: the relay allocates its nameplate
(never one another open box shows; 1–99 first, longer ones only when those are all
taken, and not one the inviter asks it to `avoid`), or the inviter claims the
nameplate it already shows if it is free here, and the box may also carry the URI's
secret-derived name. States of a box: open → closed (its connection closed: box and
slot are freed at once) | expired (after at most `wait` seconds). A joiner is matched
to an open box; nobody is ever matched to a closed one.

Squatting and burning: open boxes are capped overall and per source, a source being
an IPv4 address or an IPv6 /64 (`source_of`). Every joiner request costs its source a
token of `join_rate` (a scan of the nameplates is slow), and a source may reach one
box at most `tries_per_box` times, fewer than the 3 wrong codes that burn an offer:
one source alone cannot burn anybody's code.

Both are generic over the adapter's connection handle `C`, which they only hold and
hand back. Deadlines sit in a heap: `get_timer()` / `handle_timer(now)`.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import secrets
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from p2pgate.ratelimit import RateLimiter

__all__ = ["NAMEPLATE_RANGES", "Expired", "Mailboxes", "Opened", "Refused", "SpliceMatcher",
           "source_of"]

C = TypeVar("C")

NAMEPLATE_RANGES = ((1, 99), (100, 999), (1000, 9999))  # a code's nameplate is 1..9999


def source_of(ip: str) -> str:
    """Who is counted for `ip`: an IPv4 address itself, an IPv6 address by its /64."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


@dataclass(frozen=True, slots=True)
class Expired(Generic[C]):
    """`conn` waited in `key` past its deadline: nobody came (or its box's time ran out)."""

    key: str
    conn: C


@dataclass(frozen=True, slots=True)
class Refused:
    """Not done; `reason` is sent to the client and counted in the metrics."""

    reason: str


@dataclass(frozen=True, slots=True)
class Opened:
    """The box is open; it shows `nameplate` (None: only the URI's box)."""

    nameplate: int | None


@dataclass(slots=True)
class _Waiter(Generic[C]):
    conn: C
    ip: str
    deadline: float
    ticket: int


class _WaitingRoom(Generic[C]):
    """One waiter per key, each with a deadline."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self._waiting: dict[str, _Waiter[C]] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        self._tickets = itertools.count()

    def __len__(self) -> int:
        return len(self._waiting)

    def _add(self, key: str, conn: C, ip: str, now: float) -> None:
        waiter = _Waiter(conn, ip, now + self.wait, next(self._tickets))
        self._waiting[key] = waiter
        heapq.heappush(self._deadlines, (waiter.deadline, waiter.ticket, key))

    def take(self, key: str) -> C | None:
        """The connection waiting in `key` (it waits no more), or None."""
        waiter = self._waiting.pop(key, None)
        return None if waiter is None else waiter.conn

    def leave(self, key: str, conn: C) -> None:
        """`conn` stopped waiting in `key` (it closed); a no-op once matched or expired."""
        waiter = self._waiting.get(key)
        if waiter is not None and waiter.conn is conn:
            self.take(key)

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
                self.take(key)
                expired.append(Expired(key, waiter.conn))
        return expired


class SpliceMatcher(_WaitingRoom[C]):
    """Pairs the two sides of a relayed session by its session ID."""

    def arrive(self, sid: str, conn: C, now: float) -> C | None:
        """The side already waiting for `sid` (now matched to `conn`), or None: `conn`
        waits until the other side arrives or `now + wait`."""
        partner = self.take(sid)
        if partner is None:
            self._add(sid, conn, "", now)
        return partner


@dataclass(slots=True)
class _Box(Generic[C]):
    conn: C
    source: str
    nameplate: int | None
    name: str | None  # the URI's box
    deadline: float
    tries: Counter[str] = field(default_factory=Counter)  # joiner source -> times matched


class Mailboxes(Generic[C]):
    """Pairing mailboxes: inviters' connections hold boxes, joiners are matched to them."""

    def __init__(self, wait: float, max_boxes: int, max_boxes_per_source: int,
                 join_rate: float, join_burst: int, tries_per_box: int,
                 pick: Callable[[Sequence[int]], int] = secrets.choice) -> None:
        self.wait = wait
        self.max_boxes = max_boxes
        self.max_boxes_per_source = max_boxes_per_source
        self.tries_per_box = tries_per_box
        self._joins = RateLimiter(join_rate, join_burst)
        self._pick = pick
        self._boxes: dict[int, _Box[C]] = {}  # by ticket
        self._by_conn: dict[int, int] = {}  # id(conn) -> ticket
        self._by_nameplate: dict[int, int] = {}
        self._by_name: dict[str, int] = {}
        self._per_source: Counter[str] = Counter()
        self._deadlines: list[tuple[float, int]] = []
        self._tickets = itertools.count()

    def __len__(self) -> int:
        return len(self._boxes)

    def boxes_of(self, ip: str) -> int:
        """How many open boxes `ip`'s source holds."""
        return self._per_source[source_of(ip)]

    def open(self, conn: C, ip: str, now: float, *, nameplate: int | None = None,
             allocate: bool = False, avoid: Collection[int] = (), name: str | None = None,
             ttl: float | None = None) -> Opened | Refused:
        """Let `conn` (from `ip`) hold a box until it closes or `ttl` (at most `wait`)
        seconds pass: with a nameplate the relay allocates (`allocate`) or the one it
        claims (`nameplate`, if free here), and/or the URI's box `name`."""
        source = source_of(ip)
        if id(conn) in self._by_conn:
            return Refused("malformed")
        if len(self._boxes) >= self.max_boxes:
            return Refused("mailboxes_full")
        if self._per_source[source] >= self.max_boxes_per_source:
            return Refused("ip_mailboxes")
        if name is not None and name in self._by_name:
            return Refused("box_taken")
        if allocate:
            nameplate = self._allocate(set(avoid))
            if nameplate is None:
                return Refused("nameplates_full")
        elif nameplate is not None and nameplate in self._by_nameplate:
            return Refused("nameplate_taken")
        if nameplate is None and name is None:
            return Refused("malformed")
        ticket = next(self._tickets)
        deadline = now + min(self.wait, self.wait if ttl is None else max(0.0, ttl))
        self._boxes[ticket] = _Box(conn, source, nameplate, name, deadline)
        self._by_conn[id(conn)] = ticket
        if nameplate is not None:
            self._by_nameplate[nameplate] = ticket
        if name is not None:
            self._by_name[name] = ticket
        self._per_source[source] += 1
        heapq.heappush(self._deadlines, (deadline, ticket))
        return Opened(nameplate)

    def _allocate(self, avoid: set[int]) -> int | None:
        """A free nameplate with as few digits as possible, not in `avoid` if it can be."""
        for avoiding in (avoid, set()):
            for low, high in NAMEPLATE_RANGES:
                free = [n for n in range(low, high + 1)
                        if n not in self._by_nameplate and n not in avoiding]
                if free:
                    return self._pick(free)
        return None

    def close(self, conn: C) -> None:
        """`conn` closed: its box and its source's slot are freed at once (no-op if none)."""
        ticket = self._by_conn.get(id(conn))
        if ticket is not None:
            self._drop(ticket)

    def _drop(self, ticket: int) -> _Box[C] | None:
        box = self._boxes.pop(ticket, None)
        if box is None:
            return None
        del self._by_conn[id(box.conn)]
        if box.nameplate is not None:
            del self._by_nameplate[box.nameplate]
        if box.name is not None:
            del self._by_name[box.name]
        self._per_source[box.source] -= 1
        if not self._per_source[box.source]:
            del self._per_source[box.source]
        return box

    def join(self, ip: str, now: float, *, nameplate: int | None = None,
             name: str | None = None) -> C | Refused:
        """The connection holding the box a joiner from `ip` asks for, or why not:
        `join_rate` (this source asks too often), `absent` (no such open box),
        `box_tries` (this source reached that box `tries_per_box` times already)."""
        source = source_of(ip)
        if not self._joins.take(source, now):
            return Refused("join_rate")
        ticket = (self._by_nameplate.get(nameplate) if nameplate is not None
                  else self._by_name.get(name) if name is not None else None)
        box = None if ticket is None else self._boxes[ticket]
        if box is None:
            return Refused("absent")
        if box.tries[source] >= self.tries_per_box:
            return Refused("box_tries")
        box.tries[source] += 1
        return box.conn

    def get_timer(self) -> float | None:
        """When `handle_timer` has work next (stale entries included), or None."""
        return self._deadlines[0][0] if self._deadlines else None

    def handle_timer(self, now: float) -> list[Expired[C]]:
        """Close the boxes whose time ran out; the adapter closes their connections."""
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, ticket = heapq.heappop(self._deadlines)
            box = self._drop(ticket)
            if box is not None:
                expired.append(Expired(str(box.nameplate or box.name), box.conn))
        return expired
