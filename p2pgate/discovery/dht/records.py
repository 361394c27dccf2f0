"""Private DHT records: where a device can be reached, readable only by one peer.

For each paired peer and each 24 h epoch, the publishing device derives an
ephemeral Ed25519 key E from the pair secret (`HKDF(K_pair, "dht" ‖ publisher ‖
epoch)`). The DHT key is SHA-1(E.pub), so only the two devices of the pair can
compute it, and it changes every day. The value is

    version(1) ‖ E.pub(32) ‖ seq(8) ‖ expiry(8) ‖ nonce(12) ‖ AEAD(...) ‖ sig_E(64)

where the AEAD (ChaCha20-Poly1305 under a key derived from K_pair) hides the
addresses and relays, signed inside by the publisher's device key, and sig_E
covers everything before it. Any storing node can check a value against its key
(`validate`) without learning anything; only the peer can `open` it.

A record lives `RECORD_LIFETIME` (3 h) minus a random jitter of up to
`EXPIRY_JITTER` (30 min), so records sealed in one pass do not share an expiry; the
owner republishes hourly. `seq` orders the records of one key (newest wins): it is
`seq_offset` (secret, per pair, publisher and epoch, in [2^61, 2^62)) plus a counter
that only grows, across restarts too (`p2pgate.discovery.dht.seq`), so it says
nothing about the wall time and nothing links two records of one device.
`validate` still accepts lifetimes up to two epochs (records of older versions);
storing nodes hold any record at most `MAX_HOLD` after it was stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from p2pgate.errors import RemoteProtocolError
from p2pgate.identity.deviceid import DeviceID

__all__ = [
    "EPOCH", "EXPIRY_JITTER", "MAX_HOLD", "MAX_RECORD", "RECORD_LIFETIME", "SEQ_COUNTER_MAX",
    "Record", "RecordContent", "dht_key", "epoch_of", "open_record", "seal_record",
    "seq_offset", "validate",
]

VERSION = 1
EPOCH = 86_400
MAX_RECORD = 1024
MAX_LIFETIME = 2 * EPOCH  # what `validate` accepts (older versions sealed 24 h records)
RECORD_LIFETIME = 3 * 3600  # what we seal: republished hourly, so two republishes may fail
EXPIRY_JITTER = 1800  # up to this much is taken off each record's lifetime, at random
MAX_HOLD = 4 * 3600  # a storing node drops a record this long after it stored it
SEQ_COUNTER_MAX = 1 << 62  # seq = seq_offset (< 2^62) + counter (< 2^62) fits in 8 bytes
_HEAD = struct.Struct(">B32sQQ12s")
_SIG = 64
_CONTEXT = b"p2pgate dht record v1"


def epoch_of(now: float) -> int:
    """The number of the 24 h epoch that Unix time `now` falls in."""
    return int(now // EPOCH)


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(secret)


def ephemeral_key(k_pair: bytes, publisher: DeviceID, epoch: int) -> Ed25519PrivateKey:
    seed = _hkdf(k_pair, b"dht" + publisher.digest + epoch.to_bytes(8, "big"))
    return Ed25519PrivateKey.from_private_bytes(seed)


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def dht_key(k_pair: bytes, publisher: DeviceID, epoch: int) -> bytes:
    """The 20-byte DHT key of `publisher`'s record for this pair and epoch."""
    return hashlib.sha1(_raw(ephemeral_key(k_pair, publisher, epoch).public_key())).digest()  # noqa: S324 (Kademlia's key space)


def seq_offset(k_pair: bytes, publisher: DeviceID, epoch: int) -> int:
    """The secret base of `publisher`'s seq numbers under this pair's key for `epoch`, in
    [2^61, 2^62): above any wall-time seq of older versions, unrelated across keys."""
    raw = _hkdf(k_pair, b"dht seq" + publisher.digest + epoch.to_bytes(8, "big"))
    return (1 << 61) + int.from_bytes(raw[:8], "big") % (1 << 61)


@dataclass(frozen=True, slots=True)
class RecordContent:
    """What a peer learns from a record."""

    addresses: tuple[str, ...]
    relays: tuple[str, ...]
    observed: str | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """A value as a storing node sees it: checkable, not readable."""

    key: bytes
    seq: int
    expiry: int
    value: bytes


def seal_record(
    content: RecordContent, *, k_pair: bytes, publisher: DeviceID, device_key: Ed25519PrivateKey,
    seq: int, now: float, lifetime: int = RECORD_LIFETIME, jitter: int = EXPIRY_JITTER,
) -> Record:
    """Build the value `publisher` stores for its peer in the current epoch; it expires
    `lifetime` minus a random part of `jitter` seconds from `now`."""
    epoch = epoch_of(now)
    e_key = ephemeral_key(k_pair, publisher, epoch)
    e_pub = _raw(e_key.public_key())
    lifetime = min(lifetime, MAX_LIFETIME)
    expiry = int(now) + lifetime - secrets.randbelow(min(jitter, lifetime - 1) + 1)
    body = json.dumps({"a": list(content.addresses), "r": list(content.relays),
                       "o": content.observed, "s": seq}, separators=(",", ":")).encode()
    inner = body + device_key.sign(_CONTEXT + e_pub + body)
    nonce = os.urandom(12)
    head = _HEAD.pack(VERSION, e_pub, seq, expiry, nonce)
    sealed = ChaCha20Poly1305(_hkdf(k_pair, b"dht aead")).encrypt(nonce, inner, head)
    value = head + sealed
    value += e_key.sign(value)
    if len(value) > MAX_RECORD:
        raise ValueError(f"record of {len(value)} bytes exceeds {MAX_RECORD}; list fewer "
                         "addresses or relays")
    return Record(hashlib.sha1(e_pub).digest(), seq, expiry, value)  # noqa: S324


def validate(key: bytes, value: bytes, now: float) -> Record:
    """What a storing node checks: size, key binding, signature, expiry."""
    if not isinstance(value, bytes) or not _HEAD.size + 16 + _SIG <= len(value) <= MAX_RECORD:
        raise RemoteProtocolError("record size out of bounds")
    version, e_pub, seq, expiry, _ = _HEAD.unpack_from(value)
    if version != VERSION:
        raise RemoteProtocolError(f"unknown record version {version}")
    if hashlib.sha1(e_pub).digest() != key:  # noqa: S324
        raise RemoteProtocolError("record does not belong to this key")
    try:
        Ed25519PublicKey.from_public_bytes(e_pub).verify(value[-_SIG:], value[:-_SIG])
    except (InvalidSignature, ValueError):
        raise RemoteProtocolError("record signature does not verify") from None
    if expiry <= now:
        raise RemoteProtocolError("record expired")
    if expiry > now + MAX_LIFETIME + 3600:
        raise RemoteProtocolError("record lives too long")
    return Record(key, seq, expiry, value)


def open_record(value: bytes, *, k_pair: bytes, publisher: DeviceID,
                publisher_key: Ed25519PublicKey, now: float) -> tuple[int, RecordContent]:
    """Decrypt and check a peer's record; returns (seq, content)."""
    head = value[:_HEAD.size]
    _, e_pub, seq, _, nonce = _HEAD.unpack(head)
    epochs = {epoch_of(now) + d for d in (-1, 0, 1)}
    if not any(_raw(ephemeral_key(k_pair, publisher, e).public_key()) == e_pub for e in epochs):
        raise RemoteProtocolError("record is not from this peer in a current epoch")
    validate(hashlib.sha1(e_pub).digest(), value, now)  # noqa: S324
    try:
        inner = ChaCha20Poly1305(_hkdf(k_pair, b"dht aead")).decrypt(
            nonce, value[_HEAD.size:-_SIG], head)
    except InvalidTag:
        raise RemoteProtocolError("record does not decrypt") from None
    body, sig = inner[:-_SIG], inner[-_SIG:]
    try:
        publisher_key.verify(sig, _CONTEXT + e_pub + body)
        data = json.loads(body)
        content = RecordContent(tuple(map(str, data["a"])), tuple(map(str, data["r"])),
                                None if data["o"] is None else str(data["o"]))
    except (InvalidSignature, ValueError, KeyError, TypeError):
        raise RemoteProtocolError("record content is not signed by the peer") from None
    if data.get("s") != seq:
        raise RemoteProtocolError("record sequence was tampered with")
    return seq, content
