"""Relay access tokens: EdDSA-signed JWTs, checked without shared state.

An operator makes a signing key once (`p2pgate relay keygen`), gives every relay of
the fleet its public key, and hands devices tokens (`p2pgate relay token --device ID
--ttl 7d`). A token is accepted only if its header is exactly `alg: EdDSA` with a
known `kid`, its signature verifies, `sub` is the device ID that authenticated,
`aud` is this fleet, and it has not expired; lifetimes above 30 days are refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from p2pgate.errors import P2PGateError
from p2pgate.identity.deviceid import DeviceID

__all__ = [
    "MAX_TTL", "AccessToken", "TokenRefused", "issue_token", "key_id", "public_key_text",
    "token_expiry",
    "verify_token",
]

MAX_TTL = 30 * 24 * 3600
MAX_TOKEN_BYTES = 2048
_LEEWAY = 60


class TokenRefused(P2PGateError):
    """An access token that must not be honoured; `reason` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A verified token: the device and fleet it admits, until `expires_at` (Unix seconds)."""

    device_id: DeviceID
    audience: str
    expires_at: int
    key_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """The `kid` of a signing key: base64url of the first 9 bytes of its SHA-256."""
    return _b64(hashlib.sha256(_raw(key)).digest()[:9])


def public_key_text(key: Ed25519PublicKey) -> str:
    """The raw public key in base64url, as a relay's `token_keys` holds it."""
    return _b64(_raw(key))


def issue_token(key: Ed25519PrivateKey, device: DeviceID, audience: str, ttl: int,
                now: float) -> str:
    """A compact JWT letting `device` use fleet `audience` for `ttl` seconds from `now`.

    `now` is Unix time; ValueError unless 0 < ttl <= MAX_TTL.
    """
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"a token lives 1 s to 30 days, not {ttl} s")
    header = {"alg": "EdDSA", "typ": "JWT", "kid": key_id(key.public_key())}
    claims = {"sub": str(device), "aud": audience, "iat": int(now), "exp": int(now) + ttl}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(key.sign(signing_input.encode()))}"


def _json_part(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_unb64(text))
    except (ValueError, UnicodeDecodeError):
        raise TokenRefused("malformed", f"token {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise TokenRefused("malformed", f"token {what} is not an object")
    return value


def verify_token(token: str, keys: dict[str, Ed25519PublicKey], audience: str,
                 device: DeviceID, now: float) -> AccessToken:
    """Check everything DESIGN asks of a relay token; raise `TokenRefused` otherwise."""
    if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        raise TokenRefused("malformed", "not a compact JWT")
    head_b64, claims_b64, sig_b64 = token.split(".")
    header = _json_part(head_b64, "header")
    if header.get("alg") != "EdDSA":
        raise TokenRefused("bad_alg", "token algorithm must be EdDSA")
    key = keys.get(str(header.get("kid")))
    if key is None:
        raise TokenRefused("unknown_key", "token signed by a key this relay does not know")
    try:
        key.verify(_unb64(sig_b64), f"{head_b64}.{claims_b64}".encode())
    except (InvalidSignature, ValueError):
        raise TokenRefused("bad_signature", "token signature does not verify") from None
    claims = _json_part(claims_b64, "claims")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int) or not isinstance(iat, int):
        raise TokenRefused("malformed", "token needs integer iat and exp")
    if claims.get("aud") != audience:
        raise TokenRefused("wrong_audience", "token is for another relay fleet")
    if exp - iat > MAX_TTL or exp - now > MAX_TTL + _LEEWAY:
        raise TokenRefused("too_long", "token lifetime exceeds 30 days")
    if now >= exp + _LEEWAY:
        raise TokenRefused("expired", "token expired")
    if claims.get("sub") != str(device):
        raise TokenRefused("wrong_device", "token was issued to another device")
    return AccessToken(device, audience, exp, str(header["kid"]))


def token_expiry(token: str) -> int | None:
    """The `exp` claim of a token, read WITHOUT verifying it (for status displays:
    only the relay can verify), or None if the token does not carry one."""
    try:
        if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            return None
        exp = _json_part(token.split(".")[1], "claims").get("exp")
    except TokenRefused:
        return None
    return exp if isinstance(exp, int) and not isinstance(exp, bool) else None
