"""Rate limits with time passed in (a leaf module: the API and the relay both use it).

`RateLimiter` is a token bucket per key (requests per second, with a burst);
`ByteBucket` paces a byte stream: it says how long to wait before `n` more bytes
may pass. Neither reads a clock or sleeps: the caller passes `now` and waits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ByteBucket", "RateLimiter"]


@dataclass(slots=True)
class _Tokens:
    tokens: float
    stamp: float


@dataclass(slots=True)
class RateLimiter:
    """`rate` requests per second on average per key, bursts of up to `burst`."""

    rate: float
    burst: int
    _buckets: dict[str, _Tokens] = field(default_factory=dict)
    _prune_at: int = 1024

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str, now: float) -> float:
        """Take one request for `key`; return 0, or the seconds to wait before retrying."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:  # many keys: forget the full buckets
                self.prune(now)
                self._prune_at = max(1024, 2 * len(self._buckets))
            bucket = self._buckets[key] = _Tokens(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def take(self, key: str, now: float) -> bool:
        """Take one request for `key` if one is available now."""
        return self.acquire(key, now) == 0.0

    def prune(self, now: float) -> None:
        """Forget the keys whose bucket is full again at `now` (a new one starts full)."""
        full = [key for key, b in self._buckets.items()
                if b.tokens + (now - b.stamp) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]


@dataclass(slots=True)
class ByteBucket:
    """`rate` bytes per second, with `burst` seconds' worth passing without a wait."""

    rate: float
    burst: float = 0.05
    _level: float = field(default=0.0, init=False)
    _stamp: float | None = field(default=None, init=False)

    def delay(self, n: int, now: float) -> float:
        """Count `n` bytes sent at `now`; return the seconds to wait before sending more."""
        elapsed = 0.0 if self._stamp is None else max(0.0, now - self._stamp)
        self._level = max(0.0, self._level - elapsed * self.rate) + n
        self._stamp = now
        excess = self._level - self.rate * self.burst
        return excess / self.rate if excess > 0 else 0.0
