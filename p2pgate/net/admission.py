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
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass

from p2pgate.identity.deviceid import DeviceID

__all__ = [
    "ADMIT_MAGIC", "PAIR_MAGIC", "Admitted", "AdmissionListener", "Challenge", "NeedMore",
    "Pairing", "Refused", "admission_hello", "admission_tag",
]

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
