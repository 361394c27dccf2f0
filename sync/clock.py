"""Hybrid logical clock (Kulkarni et al., 2014), packed into one integer.

A timestamp is `(milliseconds << 8) | counter`: 45 bits of Unix milliseconds (enough
until the year 3084) and an 8-bit logical counter, 53 bits in all, so a packed
stamp stays below 2**53 and survives the libSQL binding (which loses precision
above it) and JSON numbers. When more than 256 events share one millisecond the
counter carries into the millisecond part: the clock runs slightly ahead of the
wall clock for as long as that rate lasts, which the HLC bounds allow.

Time is always passed in (`now`, seconds since the Unix epoch as a float).
"""

from __future__ import annotations

from sync.errors import LocalProtocolError

__all__ = ["COUNTER_BITS", "MAX_HLC", "HybridClock", "hlc_millis", "millis_to_hlc"]

COUNTER_BITS = 8
MAX_HLC = 2**53 - 1


def millis_to_hlc(millis: int) -> int:
    """The smallest stamp at this wall-clock millisecond."""
    return millis << COUNTER_BITS


def hlc_millis(hlc: int) -> int:
    """The physical (millisecond) part of a stamp."""
    return hlc >> COUNTER_BITS


class HybridClock:
    """One device's hybrid logical clock.

    `tick` stamps a local event; `observe` merges a remote stamp so that every later
    local stamp is greater than everything this device has seen.
    """

    __slots__ = ("last",)

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def tick(self, now: float) -> int:
        """Stamp a local event happening at wall time `now`."""
        wall = int(now * 1000) << COUNTER_BITS
        last = self.last + 1
        stamp = wall if wall > last else last
        if stamp > MAX_HLC:
            raise LocalProtocolError("clock beyond the 53-bit HLC range")
        self.last = stamp
        return stamp

    def observe(self, remote: int, now: float) -> int:
        """Merge a received stamp (already checked against the skew bound)."""
        if remote >= self.last:
            self.last = remote
        return self.tick(now)

    @staticmethod
    def ahead_by(remote: int, now: float) -> float:
        """Seconds by which `remote` lies ahead of the wall clock (negative: behind)."""
        return ((remote >> COUNTER_BITS) - int(now * 1000)) / 1000
