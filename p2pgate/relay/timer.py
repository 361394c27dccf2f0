"""One event-loop timer that follows the earliest deadline of the sans-I/O cores it
serves (the broker, the splice rendezvous, the pairing mailboxes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

__all__ = ["CoreTimer"]


class CoreTimer:
    """Calls `on_due(now)` at the earliest of `deadlines()` (loop time), then re-arms;
    call `rearm()` whenever an input may have moved a deadline."""

    def __init__(self, deadlines: Callable[[], Iterable[float | None]],
                 on_due: Callable[[float], None]) -> None:
        self._deadlines = deadlines
        self._on_due = on_due
        self._handle: asyncio.TimerHandle | None = None

    def rearm(self) -> None:
        """Cancel the pending call and schedule one for the earliest deadline, if any."""
        self.cancel()
        times = [t for t in self._deadlines() if t is not None]
        if times:
            self._handle = asyncio.get_running_loop().call_at(min(times), self._fire)

    def cancel(self) -> None:
        """No more calls until the next `rearm()` (at shutdown)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._on_due(asyncio.get_running_loop().time())
        self.rearm()
