"""Admission before TLS: a stranger learns nothing about this device.

The listener says nothing until the dialer proves it holds the pair secret
`K_pair` of one of this device's trusted peers:

    dialer   -> listener : "P2PG-ADMIT" version(1) dialer_nonce(16)
    listener -> dialer   : challenge(16)            (fresh random bytes, every time)
    dialer   -> listener : HMAC-SHA256(K_pair, "p2pgate-admit" ‖ challenge ‖ nonce)

The listener tries every trusted `K_pair` (constant-time compares). A match
admits that device and TLS starts; anything else — garbage, silence, a wrong or
replayed tag (the challenge is new per connection) — is closed without a byte of
certificate, ID or name. Connections that start with "P2PG-PAIR" go to pairing.

Listener states: start → (read hello) challenged → (read tag) admitted | refused;
start → pairing (magic seen).

`ConnectionCaps` bounds the connections nobody has authenticated yet (in admission,
or pairing): at most `MAX_UNADMITTED` in all and `UNADMITTED_PER_SOURCE` from one
source (an IPv4 address, an IPv6 /64). A newcomer always gets in: past a cap the
oldest connection of the source holding the most is pushed out, so a stranger who
fills the caps cannot keep a real dialer or joiner out, and the node never holds
more descriptors for strangers than the caps.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from p2pgate.identity.deviceid import DeviceID

__all__ = [
    "ADMIT_MAGIC", "MAX_UNADMITTED", "PAIR_MAGIC", "UNADMITTED_PER_SOURCE", "Admitted",
    "AdmissionListener", "Challenge", "ConnectionCaps", "NeedMore", "Pairing", "Refused",
    "admission_hello", "admission_tag", "source_of",
]

MAX_UNADMITTED = 128
UNADMITTED_PER_SOURCE = 16

ADMIT_MAGIC = b"P2PG-ADMIT"
PAIR_MAGIC = b"P2PG-PAIR"
VERSION = 1
NONCE = 16
TAG = 32
_HELLO = len(ADMIT_MAGIC) + 1 + NONCE
_CONTEXT = b"p2pgate-admit"


def admission_hello(nonce: bytes | None = None) -> tuple[bytes, bytes]:
    """The dialer's first bytes and the nonce they carry."""
    nonce = nonce or os.urandom(NONCE)
    return ADMIT_MAGIC + bytes([VERSION]) + nonce, nonce


def admission_tag(k_pair: bytes, challenge: bytes, nonce: bytes) -> bytes:
    """The dialer's answer: HMAC-SHA256 under `k_pair` over the challenge and its nonce."""
    return hmac.new(k_pair, _CONTEXT + challenge + nonce, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class NeedMore:
    """Nothing decided yet: the bytes so far are a valid start; feed more."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """The dialer's hello was read: send it `data`, then feed its tag."""

    data: bytes  # send this to the dialer


@dataclass(frozen=True, slots=True)
class Admitted:
    """A trusted pair secret matched: run TLS expecting `device_id`, starting with `rest`."""

    device_id: DeviceID
    rest: bytes  # bytes after the tag (the start of the TLS handshake)


@dataclass(frozen=True, slots=True)
class Pairing:
    """The dialer wants to pair, not to be admitted: hand the connection to pairing."""

    data: bytes  # everything after the magic


@dataclass(frozen=True, slots=True)
class Refused:
    """Close the connection without sending anything."""

    reason: str  # for our log only; the dialer is told nothing


Outcome = NeedMore | Challenge | Admitted | Pairing | Refused


class AdmissionListener:
    """The listener's side, sans-I/O: feed bytes, act on the outcome."""

    def __init__(self, keys: Sequence[tuple[DeviceID, bytes]],
                 challenge: bytes | None = None) -> None:
        self._keys = list(keys)
        self._challenge = challenge or os.urandom(NONCE)
        self._buffer = b""
        self._nonce: bytes | None = None
        self._done = False

    def receive(self, data: bytes) -> Outcome:
        """Feed bytes from the dialer; the outcome says what to do next.

        Admitted, Pairing and Refused are final: any later call returns Refused.
        """
        if self._done:
            return Refused("admission already decided")
        self._buffer += data
        buf = self._buffer
        if self._nonce is None:
            for magic in (PAIR_MAGIC, ADMIT_MAGIC):
                if not magic.startswith(buf[: len(magic)]):
                    continue
                if len(buf) < len(magic):
                    return NeedMore()
                if magic == PAIR_MAGIC:
                    self._done = True
                    return Pairing(buf[len(magic):])
                if len(buf) < _HELLO:
                    return NeedMore()
                if buf[len(magic)] != VERSION:
                    return self._refuse(f"admission version {buf[len(magic)]}")
                self._nonce = buf[len(magic) + 1 : _HELLO]
                self._buffer = buf[_HELLO:]
                if self._buffer:
                    return self._refuse("tag sent before the challenge")
                return Challenge(self._challenge)
            return self._refuse("not a p2pgate connection")
        if len(buf) < TAG:
            return NeedMore()
        tag, rest = buf[:TAG], buf[TAG:]
        self._done = True
        found = None
        for device_id, k_pair in self._keys:  # no early exit: timing does not tell which
            if hmac.compare_digest(admission_tag(k_pair, self._challenge, self._nonce), tag):
                found = device_id
        if found is None:
            return Refused("no trusted pair secret matches")
        return Admitted(found, rest)

    def _refuse(self, reason: str) -> Refused:
        self._done = True
        return Refused(reason)


def source_of(host: str) -> str:
    """The key per-source limits count under: an IPv4 address (also IPv4-mapped IPv6),
    the /64 of an IPv6 address; anything else as it is."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


Conn = TypeVar("Conn", bound=Hashable)


class ConnectionCaps(Generic[Conn]):
    """Unauthenticated connections by source, with caps in all and per source (sans-I/O:
    the caller closes what `enter` pushes out)."""

    def __init__(self, total: int = MAX_UNADMITTED,
                 per_source: int = UNADMITTED_PER_SOURCE) -> None:
        self.total, self.per_source = total, per_source
        self._by_source: dict[str, dict[Conn, int]] = {}  # source -> conn -> arrival
        self._source: dict[Conn, str] = {}
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._source)

    def __contains__(self, conn: object) -> bool:
        return conn in self._source

    def count(self, source: str) -> int:
        """Connections held from `source` now."""
        return len(self._by_source.get(source, ()))

    def enter(self, source: str, conn: Conn) -> Conn | None:
        """A new connection from `source`; returns the one pushed out to make room, if any."""
        pushed = None
        if self.count(source) >= self.per_source:
            pushed = self._oldest(source)
        elif len(self._source) >= self.total:
            heaviest = max(self._by_source, key=lambda s: (len(self._by_source[s]),
                                                             -min(self._by_source[s].values())))
            pushed = self._oldest(heaviest)
        if pushed is not None:
            self.leave(pushed)
        self._arrivals += 1
        self._by_source.setdefault(source, {})[conn] = self._arrivals
        self._source[conn] = source
        return pushed

    def leave(self, conn: Conn) -> None:
        """The connection closed or was authenticated (a no-op if it is not held)."""
        source = self._source.pop(conn, None)
        if source is None:
            return
        held = self._by_source[source]
        del held[conn]
        if not held:
            del self._by_source[source]

    def _oldest(self, source: str) -> Conn:
        held = self._by_source[source]
        return min(held, key=held.__getitem__)
