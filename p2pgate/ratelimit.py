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

    def acquire(self, key: str, now: float) -> float:
        """Take one request for `key`; return 0, or the seconds to wait before retrying."""
        bucket = self._buckets.get(key)
        if bucket is None:
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
