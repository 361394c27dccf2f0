"""The relay operator's limits, sans-I/O: per-IP admission and bytes per second.

`IpAdmission` allows at most `max_connections` open connections and `accept_rate`
new connections per second from one client IP (`client_ip` believes X-Forwarded-For
only from a trusted proxy). `Throughput` paces every splice direction at
`session_rate` bytes/s and all of them together at `global_rate`: a `Meter` says how
long the adapter waits, given `now`, before it forwards more; signalling is charged
to the same relay-wide bucket (`Throughput.charge`). `SignalLimits` bounds signalling
messages per sender, per sender→target pair and per target, whether the target is
attached or not (so the limits say nothing about who is online). Time is an argument.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from p2pgate.ratelimit import ByteBucket, RateLimiter

__all__ = ["IpAdmission", "Meter", "SignalLimits", "Throughput", "client_ip"]


def client_ip(peer: str, forwarded_for: str | None, trusted_proxies: tuple[str, ...]) -> str:
    """The client's IP: the last X-Forwarded-For hop if `peer` is a trusted proxy."""
    if forwarded_for and _is_trusted(peer, trusted_proxies):
        return forwarded_for.split(",")[-1].strip()
    return peer


def _is_trusted(ip: str, networks: tuple[str, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(n, strict=False) for n in networks)


class IpAdmission:
    """Open connections and accept rate per client IP."""

    def __init__(self, max_connections: int, accept_rate: float) -> None:
        self.max_connections = max_connections
        self._accepts = RateLimiter(accept_rate, max(1, int(accept_rate)))
        self._open: Counter[str] = Counter()

    def open_connections(self, ip: str) -> int:
        """How many admitted connections from `ip` are still open."""
        return self._open[ip]

    def admit(self, ip: str, now: float) -> str | None:
        """Count a new connection from `ip` and return None, or the refusal reason."""
        if self._open[ip] >= self.max_connections:
            return "ip_connections"
        if not self._accepts.take(ip, now):
            return "ip_accept_rate"
        self._open[ip] += 1
        return None

    def release(self, ip: str) -> None:
        """An admitted connection from `ip` closed."""
        self._open[ip] -= 1
        if self._open[ip] <= 0:
            del self._open[ip]


class Meter:
    """One direction of one splice: its own bucket and the relay-wide one."""

    def __init__(self, own: ByteBucket, shared: ByteBucket) -> None:
        self._own = own
        self._shared = shared

    def delay(self, n: int, now: float) -> float:
        """Count `n` bytes forwarded at `now`; the seconds to wait before forwarding more."""
        return max(self._own.delay(n, now), self._shared.delay(n, now))


class Throughput:
    """Per-session and global bytes per second."""

    def __init__(self, session_rate: float, global_rate: float) -> None:
        self.session_rate = session_rate
        self._global = ByteBucket(global_rate)

    def set_rates(self, session_rate: float, global_rate: float) -> None:
        """New rates: the global one at once, the session one for new splices."""
        self.session_rate = session_rate
        self._global.rate = global_rate

    def meter(self) -> Meter:
        """A meter for a new splice direction: the current session rate, the shared bucket."""
        return Meter(ByteBucket(self.session_rate), self._global)

    def charge(self, n: int, now: float) -> float:
        """Count `n` bytes sent outside a splice (signalling) against the global rate;
        the seconds of backlog the relay-wide bucket now holds."""
        return self._global.delay(n, now)


class SignalLimits:
    """Signalling messages/s per sender, per sender→target pair and per target.

    A WebRTC connection attempt takes an offer, an answer and a few dozen ICE
    candidates: the bursts let that through at once; a flood gets the rates.
    """

    def __init__(self, pair_rate: float = 10.0, pair_burst: int = 40,
                 sender_rate: float = 40.0, sender_burst: int = 160,
                 target_rate: float = 40.0, target_burst: int = 160) -> None:
        self._pairs = RateLimiter(pair_rate, pair_burst)
        self._senders = RateLimiter(sender_rate, sender_burst)
        self._targets = RateLimiter(target_rate, target_burst)

    def admit(self, sender: str, target: str, now: float) -> bool:
        """Count one message from `sender` to `target` at `now`: whether it may pass."""
        return (self._senders.take(sender, now) and self._pairs.take(f"{sender}>{target}", now)
                and self._targets.take(target, now))
