"""Sealed WebRTC signalling between two trusted devices (sans-I/O core).

The relay carries our offers and answers but must not read them (the SDP lists LAN
addresses) nor forge them (a forged candidate or fingerprint would steer the data
channel). Each message's SDP is sealed with ChaCha20-Poly1305 under a key derived
from the pair secret:

    key  = HKDF-SHA256(K_pair, info="p2pgate-rtc-signal v1")
    data = {"v": 1, "kind": offer|answer|bye, "to": receiver ID, "attempt": 16 bytes hex,
            "nonce": 12 bytes b64, "box": b64(AEAD(key, nonce, plaintext, ad))}
    ad   = "p2pgate-rtc-signal" ‖ 1 ‖ sender ‖ receiver ‖ attempt ‖ kind
    plaintext = JSON {"sdp": SDP ("" for a bye), "at": the sender's wall-clock time}

so a message the relay alters, re-labels, sends to another device or back to its
sender does not open. A sealed message older (or newer) than `FRESHNESS` by the
receiver's clock is refused, and within that window each offer opens once
(attempt IDs are remembered): a replayed offer, an answer or bye for no live
attempt are refused with `RemoteProtocolError`.

Attempt states (one live attempt per peer):

    offering  --(answer)-->  connecting --(connected)--> done
    answering --(answered)-> connecting --(connected)--> done
    any live state --(bye | ATTEMPT_DEADLINE past | superseded)--> gone

Simultaneous offers: the lower device ID's offer wins (`offer_wins`); the higher
device drops its own attempt and answers the other one.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pgate.errors import LocalProtocolError, RemoteProtocolError
from p2pgate.identity.deviceid import DeviceID

__all__ = [
    "ATTEMPT_DEADLINE", "FRESHNESS", "KINDS", "MAX_SEALED", "Answered", "Attempt", "AttemptState",
    "Ended", "Offered", "RtcSignaller", "Sealed", "Superseded", "offer_wins", "open_sealed",
    "seal", "signal_key",
]

ATTEMPT_DEADLINE = 10.0  # seconds from the offer until the data channel must be open
FRESHNESS = 300.0  # seconds a sealed message stays acceptable either side of our clock
MAX_SEALED = 8192  # bytes of JSON a relay forwards in one signal (relay.wire.MAX_SIGNAL)
MAX_REMEMBERED = 4096  # attempt IDs remembered against replay (oldest forgotten first)
KINDS = ("offer", "answer", "bye")
VERSION = 1
ATTEMPT_BYTES = 16
_NONCE = 12
_INFO = b"p2pgate-rtc-signal v1"
_AD_CONTEXT = b"p2pgate-rtc-signal"


def signal_key(k_pair: bytes) -> bytes:
    """The signalling key of a pair: HKDF-SHA256 of `K_pair` (never K_pair itself)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(k_pair)


def _ad(sender: DeviceID, receiver: DeviceID, attempt: bytes, kind: str) -> bytes:
    return (_AD_CONTEXT + bytes([VERSION]) + sender.digest + receiver.digest + attempt
            + kind.encode())


def offer_wins(mine: DeviceID, theirs: DeviceID) -> bool:
    """Both sides offered at once: whether our offer stands (the lower device ID's)."""
    return mine.digest < theirs.digest


@dataclass(frozen=True, slots=True)
class Sealed:
    """One opened signalling message."""

    kind: str
    attempt: bytes
    sdp: str
    sent_at: float


def seal(key: bytes, sender: DeviceID, receiver: DeviceID, kind: str, attempt: bytes,
         sdp: str, wall: float, nonce: bytes | None = None) -> dict[str, Any]:
    """The `signal` data for one message (JSON-ready)."""
    if kind not in KINDS or len(attempt) != ATTEMPT_BYTES:
        raise LocalProtocolError(f"cannot seal a {kind!r} for attempt {attempt.hex()}")
    nonce = nonce or os.urandom(_NONCE)
    plain = json.dumps({"sdp": sdp, "at": wall}).encode()
    box = ChaCha20Poly1305(key).encrypt(nonce, plain, _ad(sender, receiver, attempt, kind))
    data = {"v": VERSION, "kind": kind, "to": str(receiver), "attempt": attempt.hex(),
            "nonce": base64.b64encode(nonce).decode(), "box": base64.b64encode(box).decode()}
    if len(json.dumps(data)) > MAX_SEALED:  # the relay would drop our control connection
        raise LocalProtocolError(f"a sealed {kind} over {MAX_SEALED} bytes (too many candidates)")
    return data


def open_sealed(key: bytes, sender: DeviceID, receiver: DeviceID, data: object,
                wall: float) -> Sealed:
    """Open `data` sent by `sender` to `receiver`; RemoteProtocolError unless it is a
    well-formed, fresh message sealed under `key` for exactly these two devices."""
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise RemoteProtocolError("not a p2pgate signalling message")
    kind, to = data.get("kind"), data.get("to")
    if kind not in KINDS:
        raise RemoteProtocolError(f"unknown signalling kind {kind!r}")
    if to != str(receiver):
        raise RemoteProtocolError("signalling message sealed for another device")
    try:
        attempt = bytes.fromhex(str(data.get("attempt")))
        nonce = base64.b64decode(str(data.get("nonce")), validate=True)
        box = base64.b64decode(str(data.get("box")), validate=True)
    except (ValueError, binascii.Error):
        raise RemoteProtocolError("malformed signalling message") from None
    if len(attempt) != ATTEMPT_BYTES or len(nonce) != _NONCE:
        raise RemoteProtocolError("malformed signalling message")
    try:
        plain = ChaCha20Poly1305(key).decrypt(nonce, box, _ad(sender, receiver, attempt, kind))
    except InvalidTag:
        raise RemoteProtocolError("sealed signalling message does not open") from None
    try:
        body = json.loads(plain)
        sdp, sent_at = body["sdp"], float(body["at"])
    except (ValueError, KeyError, TypeError):
        raise RemoteProtocolError("malformed sealed signalling message") from None
    if not isinstance(sdp, str):
        raise RemoteProtocolError("malformed sealed signalling message")
    if abs(wall - sent_at) > FRESHNESS:
        raise RemoteProtocolError("stale signalling message (replayed, or clocks apart)")
    return Sealed(kind, attempt, sdp, sent_at)


class AttemptState(Enum):
    """Where one WebRTC attempt stands."""

    OFFERING = "offering"  # our offer is out, awaiting the answer
    ANSWERING = "answering"  # their offer is in, our answer is being made
    CONNECTING = "connecting"  # offer and answer exchanged, ICE/DTLS/SCTP under way
    DONE = "done"  # the data channel opened: the deadline no longer applies


@dataclass(slots=True)
class Attempt:
    """One WebRTC attempt with one peer."""

    peer: DeviceID
    attempt_id: bytes
    ours: bool  # we sent the offer
    state: AttemptState
    deadline: float  # monotonic time past which it has failed
    signalled: bool = False  # the peer has heard of it (our offer went out, or theirs came)


@dataclass(frozen=True, slots=True)
class Offered:
    """The peer offers: answer `sdp` (then call `answered`)."""

    attempt: Attempt
    sdp: str


@dataclass(frozen=True, slots=True)
class Answered:
    """The peer answered our offer: apply `sdp` and connect."""

    attempt: Attempt
    sdp: str


@dataclass(frozen=True, slots=True)
class Ended:
    """The attempt is over without a data channel (bye, deadline): close its connection."""

    attempt: Attempt
    reason: str


@dataclass(frozen=True, slots=True)
class Superseded:
    """Their simultaneous offer won over ours: close ours, then answer theirs."""

    ended: Ended
    offered: Offered


Outcome = Offered | Answered | Ended | Superseded | None  # None: their offer lost to ours


class RtcSignaller:
    """Our side of every WebRTC attempt, sans-I/O: seal what we send, open and judge
    what arrives. `key_of` gives a trusted peer's K_pair (None: not trusted); `now` is
    monotonic time (deadlines), `wall` the wall clock (freshness)."""

    def __init__(self, me: DeviceID, key_of: Callable[[DeviceID], bytes | None]) -> None:
        self.me = me
        self._key_of = key_of
        self.attempts: dict[DeviceID, Attempt] = {}
        self._seen: OrderedDict[tuple[DeviceID, bytes], float] = OrderedDict()

    def _key(self, peer: DeviceID) -> bytes:
        k_pair = self._key_of(peer)
        if k_pair is None:
            raise RemoteProtocolError(f"signalling from untrusted device {peer.short}")
        return signal_key(k_pair)

    def _seal(self, attempt: Attempt, kind: str, sdp: str, wall: float) -> dict[str, Any]:
        return seal(self._key(attempt.peer), self.me, attempt.peer, kind, attempt.attempt_id,
                    sdp, wall)

    def _remember(self, peer: DeviceID, attempt_id: bytes, wall: float) -> None:
        for key, until in list(self._seen.items()):
            if until >= wall and len(self._seen) < MAX_REMEMBERED:
                break
            del self._seen[key]
        self._seen[(peer, attempt_id)] = wall + 2 * FRESHNESS

    def begin(self, peer: DeviceID, now: float, attempt_id: bytes | None = None) -> Attempt:
        """Start an attempt with `peer` before its offer exists (gathering takes time; an
        offer of theirs meanwhile meets the tie-break). A live attempt with that peer
        is a LocalProtocolError."""
        if peer in self.attempts:
            raise LocalProtocolError(f"an attempt with {peer.short} is already under way")
        attempt = Attempt(peer, attempt_id or os.urandom(ATTEMPT_BYTES), True,
                          AttemptState.OFFERING, now + ATTEMPT_DEADLINE)
        self.attempts[peer] = attempt
        return attempt

    def offered(self, attempt: Attempt, sdp: str, wall: float) -> dict[str, Any]:
        """Our offer `sdp` for `attempt`: the data to signal."""
        if self.attempts.get(attempt.peer) is not attempt or attempt.state is not \
                AttemptState.OFFERING:
            raise LocalProtocolError("that attempt is no longer ours to offer")
        data = self._seal(attempt, "offer", sdp, wall)
        self._remember(attempt.peer, attempt.attempt_id, wall)
        attempt.signalled = True
        return data

    def offer(self, peer: DeviceID, sdp: str, now: float, wall: float,
              attempt_id: bytes | None = None) -> tuple[Attempt, dict[str, Any]]:
        """`begin` and `offered` at once (no attempt is left if the offer cannot be made)."""
        attempt = self.begin(peer, now, attempt_id)
        try:
            return attempt, self.offered(attempt, sdp, wall)
        except LocalProtocolError:
            del self.attempts[peer]
            raise

    def answered(self, attempt: Attempt, sdp: str, wall: float) -> dict[str, Any]:
        """We answer their offer with `sdp`: the data to signal."""
        if self.attempts.get(attempt.peer) is not attempt or attempt.state is not \
                AttemptState.ANSWERING:
            raise LocalProtocolError("no offer to answer in that attempt")
        data = self._seal(attempt, "answer", sdp, wall)
        attempt.state = AttemptState.CONNECTING
        return data

    def connected(self, attempt: Attempt) -> None:
        """The data channel opened: the attempt is done (its deadline no longer counts)."""
        if self.attempts.get(attempt.peer) is attempt:
            attempt.state = AttemptState.DONE
            del self.attempts[attempt.peer]

    def bye(self, attempt: Attempt, wall: float) -> dict[str, Any] | None:
        """We give up `attempt`: the data to signal (None if it is no longer live or
        the peer never heard of it)."""
        if self.attempts.get(attempt.peer) is not attempt:
            return None
        del self.attempts[attempt.peer]
        return self._seal(attempt, "bye", "", wall) if attempt.signalled else None

    def expire(self, now: float) -> list[Ended]:
        """Attempts whose deadline has passed by `now` (they are gone)."""
        ended = [Ended(a, f"no data channel within {ATTEMPT_DEADLINE:.0f} s")
                 for a in self.attempts.values() if now >= a.deadline]
        for end in ended:
            del self.attempts[end.attempt.peer]
        return ended

    def next_deadline(self) -> float | None:
        """The earliest deadline of a live attempt (for the adapter's timer)."""
        return min((a.deadline for a in self.attempts.values()), default=None)

    def receive(self, peer: DeviceID, data: object, now: float, wall: float) -> Outcome:
        """Judge one signalling message from `peer`; RemoteProtocolError refuses it (and
        changes nothing)."""
        self.expire(now)
        message = open_sealed(self._key(peer), peer, self.me, data, wall)
        live = self.attempts.get(peer)
        if message.kind == "offer":
            if (peer, message.attempt) in self._seen:
                raise RemoteProtocolError("replayed offer")
            self._remember(peer, message.attempt, wall)
            theirs = Attempt(peer, message.attempt, False, AttemptState.ANSWERING,
                             now + ATTEMPT_DEADLINE, signalled=True)
            if live is not None and live.ours and live.state is AttemptState.OFFERING:
                if offer_wins(self.me, peer):
                    return None  # they answer ours
                self.attempts[peer] = theirs
                return Superseded(Ended(live, "superseded by the peer's offer"),
                                  Offered(theirs, message.sdp))
            if live is not None:  # the peer starts over: its old attempt is gone
                self.attempts[peer] = theirs
                return Superseded(Ended(live, "the peer started a new attempt"),
                                  Offered(theirs, message.sdp))
            self.attempts[peer] = theirs
            return Offered(theirs, message.sdp)
        if live is None or live.attempt_id != message.attempt:
            raise RemoteProtocolError(f"{message.kind} for no attempt under way")
        if message.kind == "answer":
            if not live.ours or live.state is not AttemptState.OFFERING:
                raise RemoteProtocolError("answer out of turn")
            live.state = AttemptState.CONNECTING
            return Answered(live, message.sdp)
        del self.attempts[peer]
        return Ended(live, "the peer ended the attempt")
