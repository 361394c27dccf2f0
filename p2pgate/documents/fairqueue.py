"""Fair shares of the database thread between writers (sans-I/O: costs are passed in).

The documents service runs writes in group commits on one thread. A write's cost
grows with its document, so serving writes in arrival order lets one app's costly
writes delay everybody's cheap ones. `FairQueue` keeps one queue per writer (an
app's token) and forms each group by deficit round robin (Shreedhar and Varghese):
every writer with work earns `quantum` seconds per round and spends the estimated
cost of each write it gets in; the estimate follows what that writer's writes
measured (at once upward, as a moving average downward). A cheap writer gets many
writes into the next group, a costly one a write every few groups, so each active
writer gets about the same database time and a cheap write waits behind at most one
costly write per writer.
An idle writer keeps no credit, but its estimate (one entry per writer: writers
are the node's tokens).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["FairQueue"]

T = TypeVar("T")

QUANTUM = 0.010  # seconds of database time a writer earns per round
GROUP_BUDGET = 0.025  # a group closes once its estimated cost reaches this
FIRST_GUESS = 0.002  # the estimated cost of a writer's first write
SMOOTHING = 0.3  # weight of the newest measurement in the moving average


@dataclass(slots=True)
class _Writer(Generic[T]):
    items: deque[T] = field(default_factory=deque)
    estimate: float = FIRST_GUESS
    credit: float = 0.0


class FairQueue(Generic[T]):
    """Items per writer, handed out in groups by deficit round robin on their cost."""

    def __init__(self, quantum: float = QUANTUM, budget: float = GROUP_BUDGET) -> None:
        self.quantum = quantum
        self.budget = budget
        self._writers: dict[str, _Writer[T]] = {}
        self._active: deque[str] = deque()  # writers with items, in round-robin order
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def queued(self, writer: str) -> int:
        """How many items `writer` has waiting."""
        entry = self._writers.get(writer)
        return 0 if entry is None else len(entry.items)

    def push(self, writer: str, item: T) -> None:
        """Queue `item` behind `writer`'s earlier ones."""
        entry = self._writers.get(writer)
        if entry is None:
            entry = self._writers[writer] = _Writer()
        if not entry.items:
            self._active.append(writer)
        entry.items.append(item)
        self._len += 1

    def charge(self, writer: str, seconds: float) -> None:
        """One of `writer`'s items took `seconds`: update its estimate (it rises at once
        to a costlier measurement, and comes down as a moving average)."""
        entry = self._writers.get(writer)
        if entry is None:
            return
        if seconds >= entry.estimate:
            entry.estimate = seconds
        else:
            entry.estimate += SMOOTHING * (seconds - entry.estimate)

    def next_group(self) -> list[tuple[str, T]]:
        """The next group: one round of the writers in turn, up to the budget (at least
        one item: when nobody has earned one, rounds go on without work)."""
        group: list[tuple[str, T]] = []
        spent = 0.0
        while self._active and not group:  # rounds until someone has earned a write
            for _ in range(len(self._active)):
                writer = self._active.popleft()
                entry = self._writers[writer]
                entry.credit += self.quantum
                while entry.items and entry.estimate <= entry.credit and spent < self.budget:
                    entry.credit -= entry.estimate
                    spent += entry.estimate
                    group.append((writer, entry.items.popleft()))
                    self._len -= 1
                if entry.items:
                    self._active.append(writer)
                else:
                    entry.credit = 0.0
                if spent >= self.budget:
                    break
        return group
