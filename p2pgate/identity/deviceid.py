"""Device IDs: SHA-256 of the device certificate, written for humans.

Like Syncthing: base32 (no padding) of the 32-byte digest, split in four chunks of
13 characters, each followed by a Luhn mod 32 check character, shown in eight
dash-separated groups of seven. Parsing forgives case, dashes, spaces and the
look-alikes 0/O, 1/I and 8/B; a wrong check character names the groups to look at.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from p2pgate.errors import LocalProtocolError

__all__ = ["DeviceID", "InvalidDeviceID"]

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
_LOOKALIKES = str.maketrans({"0": "O", "1": "I", "8": "B"})
_CHUNK = 13
_CHUNKS = 4
_GROUP = 7
_LENGTH = _CHUNKS * (_CHUNK + 1)


class InvalidDeviceID(LocalProtocolError, ValueError):
    """Text that is not a valid device ID."""


def _luhn32(chars: str) -> str:
    """Luhn mod 32 check character: catches every single-character substitution."""
    factor, total = 2, 0
    for ch in reversed(chars):
        addend = factor * _INDEX[ch]
        total += addend // 32 + addend % 32
        factor = 3 - factor
    return _ALPHABET[-total % 32]


def _group(text: str, size: int) -> str:
    return "-".join(text[i : i + size] for i in range(0, len(text), size))


@dataclass(frozen=True, order=True, slots=True)
class DeviceID:
    """A device's identity: the SHA-256 digest of its certificate DER."""

    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != 32:
            raise InvalidDeviceID("a device ID is a 32-byte SHA-256 digest")

    @classmethod
    def from_certificate(cls, cert_der: bytes) -> DeviceID:
        """The device ID a certificate (DER bytes) pins."""
        return cls(hashlib.sha256(cert_der).digest())

    @classmethod
    def parse(cls, text: str) -> DeviceID:
        """Parse a device ID as a person may have typed it."""
        cleaned = "".join(text.split()).replace("-", "").upper().translate(_LOOKALIKES)
        if len(cleaned) != _LENGTH:
            raise InvalidDeviceID(
                f"a device ID has {_LENGTH} letters and digits (8 groups of 7), "
                f"got {len(cleaned)}"
            )
        bad = sorted({c for c in cleaned if c not in _INDEX})
        if bad:
            raise InvalidDeviceID(f"a device ID has no character {''.join(bad)!r}")
        data = []
        for n in range(_CHUNKS):
            chunk = cleaned[n * (_CHUNK + 1) : (n + 1) * (_CHUNK + 1)]
            if _luhn32(chunk[:-1]) != chunk[-1]:
                first = 2 * n + 1
                raise InvalidDeviceID(
                    f"device ID groups {first}-{first + 1} ({_group(chunk, _GROUP)}) "
                    "contain a typo: their check character does not match"
                )
            data.append(chunk[:-1])
        return cls(base64.b32decode("".join(data) + "====")[:32])

    def __str__(self) -> str:
        plain = base64.b32encode(self.digest).decode().rstrip("=")
        chunks = (plain[i : i + _CHUNK] for i in range(0, len(plain), _CHUNK))
        return _group("".join(c + _luhn32(c) for c in chunks), _GROUP)

    def __repr__(self) -> str:
        return f"DeviceID({self.short})"

    @property
    def short(self) -> str:
        """Seven characters for display; never use it to look a device up."""
        return str(self)[:_GROUP]
