"""Device login to a relay, sans-I/O: the relay's proof, what a device signs, the check.

The relay has an Ed25519 key of its own; its relay ID is SHA-256 of the raw public
key, written like a device ID (`RelayID`). The device dials with a random challenge;
the relay's hello carries a nonce, its public key and a signature over (proof
context ‖ challenge ‖ nonce), which `check_relay_proof` verifies (and, when the URL
pins `?id=RELAYID`, that the key is that relay's). The device answers with its
certificate, the time and an Ed25519 signature over (context ‖ relay URL ‖ relay
key ‖ nonce ‖ time), so a login is bound to one relay, its key and one connection.
The relay checks that signature against its OWN identity: its key, and its URL
(`relay_url_for`: `public_url`, else the address the connection reached, never the
request's Host header), so a relay that forwards a login it was given cannot log
in elsewhere as the device. It checks the time against its own (within `max_skew`:
phone clocks are wrong) and names the device by SHA-256 of the certificate DER.
Then the operator's access rule applies (`open`, an allowlist, or access tokens).
Time is an argument. The client and the server both use this module; neither
imports the other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key

from p2pgate.errors import P2PGateError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.relay.access_tokens import TokenRefused, verify_token
from p2pgate.urls import canonical_relay_url

__all__ = ["AUTH_CONTEXT", "PROOF_CONTEXT", "AuthRefused", "RelayID", "auth_payload",
           "certificate_key", "check_access", "check_relay_proof", "key_text", "login_message",
           "proof_payload", "relay_hello", "relay_url_for", "verify_login"]

AUTH_CONTEXT = b"p2pgate-relay-auth/2"  # /2: the relay's key is part of what is signed
PROOF_CONTEXT = b"p2pgate-relay-proof"
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{16,128}")


@dataclass(frozen=True, order=True, slots=True)
class RelayID(DeviceID):
    """A relay's identity: SHA-256 of its raw Ed25519 public key, shown like a device ID.

    Never equal to a `DeviceID` with the same digest: they name different things.
    """

    @classmethod
    def of_key(cls, public_raw: bytes) -> RelayID:
        """The relay ID of a raw (32-byte) Ed25519 public key."""
        return cls(hashlib.sha256(public_raw).digest())

    @classmethod
    def parse(cls, text: str) -> RelayID:
        """Parse a relay ID as a person may have typed it (InvalidDeviceID if it is not)."""
        return cls(DeviceID.parse(text).digest)

    def __repr__(self) -> str:
        return f"RelayID({self.short})"


class AuthRefused(P2PGateError):
    """A login the relay refuses; `reason` is the short word sent back and counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def key_text(public_raw: bytes) -> str:
    """A raw public key as sent in a hello (unpadded base64url)."""
    return base64.urlsafe_b64encode(public_raw).decode().rstrip("=")


def _key_bytes(text: Any) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]{43}", text):
        raise ValueError("not a base64url Ed25519 key")
    return base64.urlsafe_b64decode(text + "=")


# -- the relay proves its key ----------------------------------------------------------


def proof_payload(challenge: str, nonce: str) -> bytes:
    """What the relay signs in its hello: the device's challenge and its own nonce."""
    return b"\x00".join([PROOF_CONTEXT, challenge.encode(), nonce.encode()])


def relay_hello(nonce: str, public_raw: bytes, sign: Callable[[bytes], bytes],
                challenge: str | None) -> dict[str, Any]:
    """The relay's hello: its nonce and key, and (for a device's challenge) its proof.

    AuthRefused("malformed") for a challenge that is not 16-128 base64url characters.
    """
    hello: dict[str, Any] = {"t": "hello", "v": 1, "nonce": nonce,
                             "relay_key": key_text(public_raw)}
    if challenge is not None:
        if not _CHALLENGE.fullmatch(challenge):
            raise AuthRefused("malformed")
        hello["proof"] = base64.b64encode(sign(proof_payload(challenge, nonce))).decode()
    return hello


def check_relay_proof(hello: Mapping[str, Any], challenge: str, pinned: RelayID | None
                      ) -> bytes:
    """The raw key the relay proved it holds in `hello` (for our `challenge`), or
    AuthRefused: `no_relay_proof` (an older relay, or no proof), `bad_relay_proof`,
    `wrong_relay_key` (the key is not the one `pinned` by the URL's `?id=`)."""
    if "relay_key" not in hello or "proof" not in hello:
        raise AuthRefused("no_relay_proof")
    try:
        public_raw = _key_bytes(hello["relay_key"])
        signature = base64.b64decode(str(hello["proof"]), validate=True)
        Ed25519PublicKey.from_public_bytes(public_raw).verify(
            signature, proof_payload(challenge, str(hello["nonce"])))
    except (ValueError, TypeError, KeyError, binascii.Error, InvalidSignature):
        raise AuthRefused("bad_relay_proof") from None
    if pinned is not None and RelayID.of_key(public_raw) != pinned:
        raise AuthRefused("wrong_relay_key")
    return public_raw


def relay_url_for(public_url: str | None, secure: bool, local: tuple[str, int] | None,
                  host_header: str | None) -> str:
    """The URL this relay checks logins against on one connection.

    `public_url` when the operator set one; otherwise the address the connection
    reached (`local`, the socket's own address) — never the client's `Host` header,
    which only decides the refusal: a device that reached us by a DNS name signed a
    URL we cannot know, so AuthRefused("public_url_unset") tells the operator to set
    public_url.
    """
    if public_url is not None:
        return public_url
    if host_header and not _names_an_address(host_header):
        raise AuthRefused("public_url_unset")
    if local is None:
        raise AuthRefused("public_url_unset")
    address = ipaddress.ip_address(local[0].split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    host = f"[{address.compressed}]" if address.version == 6 else address.compressed
    return canonical_relay_url(f"{'wss' if secure else 'ws'}://{host}:{local[1]}")


def _names_an_address(host_header: str) -> bool:
    """Whether a Host header names an IP address (not a DNS name)."""
    host = host_header.strip()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- the device logs in ------------------------------------------------------------------


def auth_payload(relay_url: str, relay_key: bytes, nonce: str, timestamp: int) -> bytes:
    """What a device signs to log in: bound to this relay's URL, key and nonce."""
    return b"\x00".join([AUTH_CONTEXT, relay_url.encode(), key_text(relay_key).encode(),
                         nonce.encode(), str(timestamp).encode()])


def login_message(cert_der: bytes, sign: Callable[[bytes], bytes], relay_url: str,
                  relay_key: bytes, nonce: str, now: float, token: str | None
                  ) -> dict[str, Any]:
    """The device's `auth` message answering a hello with `nonce`, signed at `now`.

    `url` and `relay_key` repeat what was signed, so that a refusal can say which
    one differs; the relay never checks against them.
    """
    stamp = int(now)
    payload = auth_payload(relay_url, relay_key, nonce, stamp)
    return {"t": "auth", "cert": base64.b64encode(cert_der).decode(), "time": stamp,
            "sig": base64.b64encode(sign(payload)).decode(), "url": relay_url,
            "relay_key": key_text(relay_key), "token": token}


def verify_login(message: Mapping[str, Any], relay_url: str, relay_key: bytes, nonce: str,
                 now: float, max_skew: float) -> DeviceID:
    """The device that signed `message` for this relay (its own URL and key) and nonce,
    or AuthRefused (`wrong_url`, `wrong_key`, `bad_signature`, `clock`, `malformed`)."""
    try:
        if message.get("t") != "auth":
            raise AuthRefused("malformed")
        cert_der = base64.b64decode(message["cert"], validate=True)
        timestamp = int(message["time"])
        if abs(now - timestamp) > max_skew:
            raise AuthRefused("clock")
        key = certificate_key(cert_der)
        signature = base64.b64decode(message["sig"])
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        raise AuthRefused("malformed") from None
    try:
        key.verify(signature, auth_payload(relay_url, relay_key, nonce, timestamp))
    except InvalidSignature:
        if isinstance(message.get("url"), str) and message["url"] != relay_url:
            raise AuthRefused("wrong_url") from None
        if isinstance(message.get("relay_key"), str) and \
                message["relay_key"] != key_text(relay_key):
            raise AuthRefused("wrong_key") from None
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
