"""The pairing handshake, sans-I/O: SPAKE2, explicit key confirmation, then identities.

    joiner  -> inviter : HELLO    {nameplate, kind, pake: SPAKE2_A message}
    inviter -> joiner  : PAKE     {pake: SPAKE2_B message}   (or FAIL {reason})
    joiner  -> inviter : CONFIRM  HMAC(K, "confirm" ‖ "joiner" ‖ transcript)
    inviter -> joiner  : CONFIRM' HMAC(K, "confirm" ‖ "inviter" ‖ transcript)
                         + SEALED(inviter identity)  (or FAIL "wrong code")
    joiner  -> inviter : SEALED(joiner identity)

`spake2` has no key confirmation: with a wrong code both sides simply derive
different keys, so each side proves K before anything secret travels. SEALED is
ChaCha20-Poly1305 under a key derived from K and the sender's role and carries
the certificate, name, half of the pair-secret material and the discovery key.
Both sides then hold the same `K_pair` and show the same verification string.

States (both roles): start → pake → confirmed → done | failed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_A, SPAKE2_B

from p2pgate.errors import RemoteProtocolError
from p2pgate.identity.deviceid import DeviceID

__all__ = ["PairingIdentity", "PairingResult", "Role", "derive", "open_sealed", "seal"]

_IDS = {"idA": b"p2pgate-joiner", "idB": b"p2pgate-inviter"}



@dataclass(frozen=True, slots=True)
class PairingIdentity:
    """What one side tells the other once the code is confirmed."""

    cert_der: bytes
    name: str
    k_part: bytes
    disc_key: bytes

    @property
    def device_id(self) -> DeviceID:
        """The device ID the certificate pins."""
        return DeviceID.from_certificate(self.cert_der)

    def encode(self) -> bytes:
        """The identity as JSON bytes (what SEALED carries)."""
        return json.dumps({"cert": _b64(self.cert_der), "name": self.name,
                           "k": _b64(self.k_part), "disc": _b64(self.disc_key)}).encode()

    @classmethod
    def decode(cls, data: bytes) -> PairingIdentity:
        """Read what `encode` wrote; raises RemoteProtocolError if malformed."""
        try:
            d = json.loads(data)
            ident = cls(_unb64(d["cert"]), str(d["name"])[:64], _unb64(d["k"]),
                        _unb64(d["disc"]))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise RemoteProtocolError(f"bad pairing identity: {type(exc).__name__}") from None
        if len(ident.k_part) != 32 or len(ident.disc_key) != 32:
            raise RemoteProtocolError("bad pairing key material")
        return ident


@dataclass(frozen=True, slots=True)
class PairingResult:
    """What pairing yields: the peer's identity, K_pair and the verification string."""

    peer: PairingIdentity
    k_pair: bytes
    verification: str


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s, validate=True)


def _hkdf(key: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=salt, info=info).derive(key)


class Role:
    """One side's PAKE and the keys that follow from it."""

    def __init__(self, joiner: bool, password: bytes) -> None:
        self.joiner = joiner
        self.name = b"joiner" if joiner else b"inviter"
        self._pake = (SPAKE2_A if joiner else SPAKE2_B)(password, **_IDS)
        self.message = self._pake.start()
        self.key: bytes | None = None
        self.transcript = b""

    def finish(self, peer_message: bytes) -> None:
        """Complete the PAKE with the peer's message; raises RemoteProtocolError on junk."""
        try:
            self.key = self._pake.finish(peer_message)
        except Exception as exc:  # spake2 raises assorted errors on junk
            raise RemoteProtocolError(f"bad PAKE message: {type(exc).__name__}") from None
        first, second = ((self.message, peer_message) if self.joiner
                         else (peer_message, self.message))
        self.transcript = hashlib.sha256(first + second).digest()

    def confirmation(self, of_joiner: bool) -> bytes:
        """The CONFIRM tag of the joiner's or the inviter's side (only after `finish`)."""
        assert self.key is not None  # noqa: S101 (after finish)
        who = b"joiner" if of_joiner else b"inviter"
        return hmac.new(self.key, b"confirm" + who + self.transcript, hashlib.sha256).digest()

    def check(self, tag: bytes) -> bool:
        """Whether `tag` is the peer's CONFIRM tag (constant-time)."""
        return hmac.compare_digest(self.confirmation(not self.joiner), tag)


def seal(role: Role, identity: PairingIdentity) -> bytes:
    """SEALED: `identity` encrypted under our role's key, bound to the transcript."""
    assert role.key is not None  # noqa: S101
    nonce = os.urandom(12)
    key = _hkdf(role.key, b"p2pgate pairing seal " + role.name)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, identity.encode(), role.transcript)


def open_sealed(role: Role, data: bytes) -> PairingIdentity:
    """Open the peer's SEALED message; raises RemoteProtocolError if it does not open."""
    assert role.key is not None  # noqa: S101
    other = b"inviter" if role.joiner else b"joiner"
    key = _hkdf(role.key, b"p2pgate pairing seal " + other)
    try:
        plain = ChaCha20Poly1305(key).decrypt(data[:12], data[12:], role.transcript)
    except (InvalidTag, ValueError):
        raise RemoteProtocolError("sealed pairing message does not open") from None
    return PairingIdentity.decode(plain)


def derive(role: Role, mine: PairingIdentity, peer: PairingIdentity) -> PairingResult:
    """K_pair from K and both halves; the verification string both sides show."""
    assert role.key is not None  # noqa: S101
    joiner, inviter = (mine, peer) if role.joiner else (peer, mine)
    k_pair = _hkdf(role.key, b"p2pgate k_pair", salt=inviter.k_part + joiner.k_part)
    digest = _hkdf(role.key, b"p2pgate verify" + role.transcript)
    number = int.from_bytes(digest[:4], "big") % 1_000_000
    return PairingResult(peer, k_pair, f"{number:06d}")
