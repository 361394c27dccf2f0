"""STUN probe core (sans-I/O): does our relay's STUN port answer, and where does it see us?

A `BindingProbe` is one Binding transaction (RFC 8489): the request goes out at once
and again on `RETRANSMITS` (250 ms, then 500 ms later), and the probe gives up
`GIVE_UP` (1.5 s) after the start; the first success response for our transaction
carrying a (XOR-)MAPPED-ADDRESS ends it. Anything else that arrives is ignored.

`StunStatus` remembers the last probe of one relay's STUN address: whether it
answered, our server-reflexive address, and when. `use_stun()` says whether WebRTC
should list the STUN server (never after a failed probe: aiortc would spend 5 s
gathering per side); `needs_probe(now)` says when to probe again (never probed, a
failure older than `RETRY_FAILED`, a success older than `RECHECK_OK`, or marked
stale by a network change).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Literal

from p2pgate.relay.stun import BINDING_REQUEST, BINDING_SUCCESS, HEADER, MAGIC_COOKIE

__all__ = ["GIVE_UP", "BindingProbe", "ProbeResult", "StunState", "StunStatus",
           "parse_address"]

StunState = Literal["ok", "failed", "unknown"]

MAPPED_ADDRESS = 0x0001
XOR_MAPPED_ADDRESS = 0x0020
RETRANSMITS = (0.25, 0.75)  # seconds after the start: the request again
GIVE_UP = 1.5  # seconds after the start: no answer, the probe failed
# a failed probe is tried again before an attempt once this old: below the 30 s backoff
# between failed attempts, so each of them probes again (STUN may be back: a firewall
# that opened, a relay restarted); quick retries (a sighting) reuse the result
RETRY_FAILED = 20.0
RECHECK_OK = 600.0  # a probe that answered is checked again before an attempt after this


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """How a probe ended: `reflexive` is "HOST:PORT" as the server saw us (None: failed)."""

    ok: bool
    reflexive: str | None = None
    rtt: float | None = None  # seconds from the first request to the answer


class BindingProbe:
    """One Binding transaction with retransmissions; `result` is set once it has ended."""

    def __init__(self, transaction: bytes, now: float) -> None:
        if len(transaction) != 12:
            raise ValueError("a STUN transaction ID has 12 bytes")
        self.transaction = transaction
        self.request = HEADER.pack(BINDING_REQUEST, 0, MAGIC_COOKIE, transaction)
        self.started = now
        self.result: ProbeResult | None = None
        self._sends = [now, *(now + t for t in RETRANSMITS)]
        self._give_up = now + GIVE_UP

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """The requests due by `now` (each sent once)."""
        if self.result is not None:
            return []
        due = [s for s in self._sends if s <= now]
        self._sends = [s for s in self._sends if s > now]
        return [self.request] * len(due)

    def get_timer(self) -> float | None:
        """When to call `handle_timer` next (None: the probe has ended)."""
        if self.result is not None:
            return None
        return min([*self._sends, self._give_up])

    def handle_timer(self, now: float) -> None:
        """Give up once `GIVE_UP` has passed without an answer."""
        if self.result is None and now >= self._give_up:
            self.result = ProbeResult(False)

    def receive(self, datagram: bytes, now: float) -> None:
        """A datagram from the server: a success for our transaction ends the probe."""
        if self.result is not None:
            return
        reflexive = _mapped_address(datagram, self.transaction)
        if reflexive is not None:
            self.result = ProbeResult(True, reflexive, max(0.0, now - self.started))


def _mapped_address(data: bytes, transaction: bytes) -> str | None:
    """The "HOST:PORT" of a Binding success for `transaction`, else None."""
    if len(data) < HEADER.size:
        return None
    kind, length, cookie, tid = HEADER.unpack_from(data)
    if (kind != BINDING_SUCCESS or cookie != MAGIC_COOKIE or tid != transaction
            or length != len(data) - HEADER.size):
        return None
    found: str | None = None
    offset = HEADER.size
    while offset + 4 <= len(data):
        attr, size = struct.unpack_from("!HH", data, offset)
        value = data[offset + 4:offset + 4 + size]
        if len(value) < size:
            return None
        if attr == XOR_MAPPED_ADDRESS:
            return _address(value, struct.pack("!I", MAGIC_COOKIE) + transaction)
        if attr == MAPPED_ADDRESS and found is None:
            found = _address(value, bytes(16))
        offset += 4 + size + (-size % 4)
    return found


def _address(value: bytes, pad: bytes) -> str | None:
    """A (XOR-)MAPPED-ADDRESS value as "HOST:PORT" (`pad` all zero for the plain one)."""
    if len(value) < 4:
        return None
    family, port = value[1], struct.unpack_from("!H", value, 2)[0] ^ (
        struct.unpack_from("!H", pad)[0])
    raw = value[4:]
    if (family, len(raw)) not in ((1, 4), (2, 16)):
        return None
    address = ipaddress.ip_address(bytes(b ^ p for b, p in zip(raw, pad, strict=False)))
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def parse_address(text: str) -> tuple[str, int]:
    """"HOST:PORT" or "[V6]:PORT" as (host, port); ValueError if it is neither."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not HOST:PORT: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


@dataclass(slots=True)
class StunStatus:
    """The last probe of one relay's STUN address (None: the relay runs no STUN)."""

    address: str | None = None
    ok: bool | None = None  # None: not probed yet
    reflexive: str | None = None
    probed_at: float | None = None
    stale: bool = field(default=False)  # a network change: probe before the next attempt

    def probed(self, result: ProbeResult, now: float) -> bool:
        """Remember `result`; True if it changed whether the server answers."""
        changed = self.ok != result.ok
        self.ok, self.reflexive, self.probed_at = result.ok, result.reflexive, now
        self.stale = False
        return changed

    def needs_probe(self, now: float) -> bool:
        """Whether to probe before the next WebRTC attempt."""
        if self.address is None:
            return False
        if self.ok is None or self.probed_at is None or self.stale:
            return True
        return now - self.probed_at >= (RECHECK_OK if self.ok else RETRY_FAILED)

    def use_stun(self) -> bool:
        """Whether WebRTC should list this STUN server (only once a probe answered)."""
        return self.address is not None and bool(self.ok)

    @property
    def state(self) -> StunState | None:
        """"ok", "failed", "unknown" (not probed yet), or None (no STUN server)."""
        if self.address is None:
            return None
        return "unknown" if self.ok is None else "ok" if self.ok else "failed"
