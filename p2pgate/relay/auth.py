"""Device login to a relay, sans-I/O: what a device signs, and the relay's check.

The relay's hello carries a nonce; the device answers with its certificate, the time
and an Ed25519 signature over (context ‖ relay URL ‖ nonce ‖ time), so a login is
bound to one relay and one connection. The relay checks the time against its own
(within `max_skew`: phone clocks are wrong), the signature with the certificate's
key, and names the device by SHA-256 of the certificate DER. Then the operator's
access rule applies (`open`, an allowlist, or access tokens). Time is an argument.
The client and the server both use this module; neither imports the other.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key

from p2pgate.errors import P2PGateError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.relay.access_tokens import TokenRefused, verify_token

__all__ = ["AUTH_CONTEXT", "AuthRefused", "auth_payload", "certificate_key", "check_access",
           "login_message", "verify_login"]

AUTH_CONTEXT = b"p2pgate-relay-auth"


class AuthRefused(P2PGateError):
    """A login the relay refuses; `reason` is the short word sent back and counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def auth_payload(relay_url: str, nonce: str, timestamp: int) -> bytes:
    """What a device signs to log in: bound to this relay's URL and nonce."""
    return b"\x00".join([AUTH_CONTEXT, relay_url.encode(), nonce.encode(),
                         str(timestamp).encode()])


def login_message(cert_der: bytes, sign: Callable[[bytes], bytes], relay_url: str,
                  nonce: str, now: float, token: str | None) -> dict[str, Any]:
    """The device's `auth` message answering a hello with `nonce`, signed at `now`."""
    stamp = int(now)
    return {"t": "auth", "cert": base64.b64encode(cert_der).decode(), "time": stamp,
            "sig": base64.b64encode(sign(auth_payload(relay_url, nonce, stamp))).decode(),
            "token": token}


def verify_login(message: Mapping[str, Any], relay_url: str, nonce: str, now: float,
                 max_skew: float) -> DeviceID:
    """The device that signed `message` for this relay and nonce, or AuthRefused."""
    try:
        if message.get("t") != "auth":
            raise AuthRefused("malformed")
        cert_der = base64.b64decode(message["cert"], validate=True)
        timestamp = int(message["time"])
        if abs(now - timestamp) > max_skew:
            raise AuthRefused("clock")
        key = certificate_key(cert_der)
        signature = base64.b64decode(message["sig"])
    except (ValueError, TypeError, KeyError, AttributeError):
        raise AuthRefused("malformed") from None
    try:
        key.verify(signature, auth_payload(relay_url, nonce, timestamp))
    except InvalidSignature:
        raise AuthRefused("bad_signature") from None
    return DeviceID(hashlib.sha256(cert_der).digest())


def check_access(device: DeviceID, token: str | None, *, access: str,
                 allowlist: tuple[str, ...], token_keys: Mapping[str, str], audience: str,
                 now: float) -> None:
    """Raise AuthRefused unless the operator's rule lets `device` use the relay."""
    try:
        if access == "allowlist" and not any(DeviceID.parse(d) == device for d in allowlist):
            raise AuthRefused("not_allowed")
        if access == "token":
            if not token:
                raise AuthRefused("token_missing")
            keys = {kid: _public_key(text) for kid, text in token_keys.items()}
            verify_token(str(token or ""), keys, audience, device, now)
    except TokenRefused as exc:
        raise AuthRefused(f"token_{exc.reason}") from None
    except ValueError:
        raise AuthRefused("malformed") from None


def _public_key(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(
        base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


# -- the certificate's key, read from its DER (strict, definite lengths only) ----------
# (cryptography.x509 would do, but it imports the email package and with it `socket`.)


def certificate_key(cert_der: bytes) -> Ed25519PublicKey:
    """The Ed25519 key of an X.509 certificate, or AuthRefused("bad_certificate")."""
    try:
        tag, start, end = _element(cert_der, 0)
        if tag != 0x30 or end != len(cert_der):
            raise ValueError("not one SEQUENCE")
        tag, start, end = _element(cert_der, start)  # tbsCertificate
        fields = []
        while start < end:
            field_tag, content, field_end = _element(cert_der, start)
            fields.append((field_tag, start, field_end))
            start = field_end
        if fields and fields[0][0] == 0xA0:  # [0] version
            fields = fields[1:]
        # serial, signature algorithm, issuer, validity, subject, subjectPublicKeyInfo
        spki_tag, spki_start, spki_end = fields[5]
        if tag != 0x30 or spki_tag != 0x30:
            raise ValueError("not a certificate")
        key = load_der_public_key(cert_der[spki_start:spki_end])
    except (ValueError, IndexError):
        raise AuthRefused("bad_certificate") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuthRefused("bad_certificate")
    return key


def _element(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at `pos`."""
    if pos + 2 > len(der):
        raise ValueError("truncated")
    tag, first, pos = der[pos], der[pos + 1], pos + 2
    if first < 0x80:
        length = first
    else:
        size = first & 0x7F
        if not 0 < size <= 4 or pos + size > len(der) or der[pos] == 0:
            raise ValueError("bad length")
        length, pos = int.from_bytes(der[pos:pos + size], "big"), pos + size
    if pos + length > len(der):
        raise ValueError("truncated")
    return tag, pos, pos + length
