"""STUN Binding responder core (RFC 8489), sans-I/O: a datagram in, an answer or nothing out.

A device asks the relay's STUN port "what address do you see me at?"; the answer's
XOR-MAPPED-ADDRESS is its address outside its NAT (WebRTC server-reflexive candidates).
Only Binding requests are answered, per source IP within a `RateLimiter`; anything else
(malformed, an indication, another method, a flood) gets no answer and no log line.
The codec is the few bytes a Binding needs: `aioice.stun` loads asyncio, which no core
may, so the tests check this one against it.
"""

from __future__ import annotations

import binascii
import ipaddress
import struct
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from p2pgate.ratelimit import RateLimiter

__all__ = ["STUN_BURST", "STUN_RATE", "StunResponder", "binding_success", "stun_address"]

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E
HEADER = struct.Struct("!HHI12s")
MAX_REQUEST = 548  # a Binding request fits in the minimum IPv4 MTU; larger is not one of ours

STUN_RATE = 10.0  # answers per second per source IP on average ...
STUN_BURST = 20   # ... after a burst of this many (ICE gathering sends a few per device)


@dataclass(slots=True)
class StunResponder:
    """Answers Binding requests; `answered` / `dropped` count datagrams by outcome."""

    rate: float = STUN_RATE
    burst: int = STUN_BURST
    answered: int = 0
    dropped: int = 0
    _limits: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self._limits = RateLimiter(self.rate, self.burst)

    def answer(self, datagram: bytes, source: tuple[str, int], now: float) -> bytes | None:
        """The response to send back to `source`, or None (drop silently)."""
        transaction = _binding_request(datagram)
        if transaction is None or not self._limits.take(source[0], now):
            self.dropped += 1
            return None
        try:
            response = binding_success(transaction, source)
        except ValueError:  # not an IP address (cannot happen for a UDP source)
            self.dropped += 1
            return None
        self.answered += 1
        return response


def _binding_request(data: bytes) -> bytes | None:
    """The transaction ID of a well-formed Binding request, else None."""
    if not HEADER.size <= len(data) <= MAX_REQUEST:
        return None
    kind, length, cookie, transaction = HEADER.unpack_from(data)
    if kind != BINDING_REQUEST or cookie != MAGIC_COOKIE or length != len(data) - HEADER.size:
        return None
    offset = HEADER.size
    while offset < len(data):  # the attributes must tile the body exactly
        if offset + 4 > len(data):
            return None
        _attr, attr_length = struct.unpack_from("!HH", data, offset)
        offset += 4 + attr_length + (-attr_length % 4)
    return transaction if offset == len(data) else None


def binding_success(transaction: bytes, source: tuple[str, int]) -> bytes:
    """A Binding success response carrying `source` as XOR-MAPPED-ADDRESS, fingerprinted."""
    address = ipaddress.ip_address(source[0].split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    pad = struct.pack("!I", MAGIC_COOKIE) + transaction
    raw = address.packed
    xored = bytes(b ^ p for b, p in zip(raw, pad, strict=False))
    value = struct.pack("!BBH", 0, 1 if address.version == 4 else 2,
                        source[1] ^ (MAGIC_COOKIE >> 16)) + xored
    attrs = struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value
    # FINGERPRINT: CRC-32 of everything before it, with the length already counting it
    head = HEADER.pack(BINDING_SUCCESS, len(attrs) + 8, MAGIC_COOKIE, transaction)
    crc = (binascii.crc32(head + attrs) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return head + attrs + struct.pack("!HHI", FINGERPRINT, 4, crc)


def stun_address(public_url: str | None, local: tuple[str, int] | None, port: int,
                 bound: str | None = None) -> str | None:
    """The "HOST:PORT" devices should send STUN requests to, told on one connection.

    The host is public_url's when the operator set one (the name devices dial), else the
    address the STUN port is `bound` to unless that is a wildcard, else the address this
    connection reached (as for the relay's own URL); None if none is known.
    """
    host = urlsplit(public_url).hostname if public_url is not None else None
    if host is None and bound is not None and not ipaddress.ip_address(bound).is_unspecified:
        host = bound
    if host is None and local is not None:
        address = ipaddress.ip_address(local[0].split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        host = address.compressed
    if not host:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
