"""Session framing and Hello, sans-I/O.

    frame = length:u32 (of what follows) type:u8 payload

A session starts with both sides sending HELLO (JSON: device, name, versions,
capabilities, relays, discovery key); each picks the highest version both speak,
or closes with a clear reason. Then DATA frames carry the protocols above (sync),
PING/PONG keep it alive and measure RTT, CLOSE ends it with a reason.

States: hello (waiting for the peer's HELLO) → open → closed.

Liveness follows the traffic. A DATA frame sent while no PING is outstanding is
followed at once by a PING, and a PONG that arrives after more DATA went out sends
the next one: every byte we send is soon acknowledged. An idle session pings after
`keepalive` seconds without sending (a battery-friendly 30 s by default), so an
idle cut is found by that ping or by the first write after the cut, whichever
comes first. A PING unanswered for `suspect_after()` — max(1 s, 4 × smoothed RTT),
plus the time the DATA sent before it needs at a floor rate of 1 Mbit/s — makes
the path *suspect* (`PathSuspect`: the adapter starts an alternative path and
keeps this one); its PONG clears that (`PathRecovered`). A PING unanswered for
max(`dead_after`, 2 × that allowance) closes the session.

Each side's HELLO carries a random nonce; both derive the same `session_id` from
the two, so a replacement session can name the one it replaces (`replaces`).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import deque
from dataclasses import dataclass, field

from p2pgate.errors import RemoteProtocolError

__all__ = [
    "DEFAULT_DEAD_AFTER", "DEFAULT_KEEPALIVE", "DEFAULT_MAX_FRAME", "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS", "ClosedEvent", "DataReceived", "HelloReceived", "PathRecovered",
    "PathSuspect", "PeerHello", "SessionCore",
]

PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = (PROTOCOL_VERSION, PROTOCOL_VERSION - 1)  # we speak N and N-1
DEFAULT_MAX_FRAME = (4 << 20) + 1024  # a sync message is at most 4 MiB
HELLO, DATA, PING, PONG, CLOSE = 1, 2, 3, 4, 5
DEFAULT_KEEPALIVE = 30.0  # an idle session pings this often (half a common 60 s proxy timeout)
DEFAULT_DEAD_AFTER = 20.0  # a PING unanswered this long ends the session
MIN_SUSPECT = 1.0  # a PING unanswered this long (at least) makes the path suspect
FLOOR_RATE = 125_000.0  # bytes/s: DATA ahead of a PING may take this long to arrive
_HEAD = struct.Struct(">IB")


@dataclass(frozen=True, slots=True)
class PeerHello:
    """What each side announces first: who it is, what it speaks, where else to reach it."""

    device: str
    name: str
    versions: tuple[int, ...] = SUPPORTED_VERSIONS
    capabilities: tuple[str, ...] = ()
    relays: tuple[str, ...] = ()
    disc_key: bytes = b""  # the sender's current discovery key (it rotates on revoke)
    nonce: bytes = b""  # random per session: with the peer's, it makes the session ID
    replaces: bytes = b""  # the ID of the session this one replaces (its path went quiet)

    def encode(self) -> bytes:
        """The HELLO frame's payload (JSON)."""
        return json.dumps({"device": self.device, "name": self.name,
                           "versions": list(self.versions), "caps": list(self.capabilities),
                           "relays": list(self.relays), "disc": self.disc_key.hex(),
                           "nonce": self.nonce.hex(), "replaces": self.replaces.hex()}).encode()

    @classmethod
    def decode(cls, payload: bytes) -> PeerHello:
        """Parse a HELLO payload (the name cut to 128 chars); RemoteProtocolError if malformed."""
        try:
            d = json.loads(payload)
            hello = cls(str(d["device"]), str(d["name"])[:128],
                        tuple(int(v) for v in d["versions"]),
                        tuple(str(c) for c in d.get("caps", ())),
                        tuple(str(r) for r in d.get("relays", ())),
                        bytes.fromhex(str(d.get("disc", ""))),
                        bytes.fromhex(str(d.get("nonce", ""))),
                        bytes.fromhex(str(d.get("replaces", ""))))
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError,
                RecursionError) as exc:  # whatever JSON a peer sends ends here
            raise RemoteProtocolError(f"malformed Hello: {type(exc).__name__}") from None
        if len(hello.disc_key) not in (0, 32):
            raise RemoteProtocolError("malformed Hello: bad discovery key")
        if len(hello.nonce) > 32 or len(hello.replaces) > 32:
            raise RemoteProtocolError("malformed Hello: bad session nonce")
        if not hello.versions or len(hello.versions) > 16:
            raise RemoteProtocolError("Hello lists no protocol versions")
        return hello


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """The peer's Hello arrived; `version` is the highest one both sides speak."""

    hello: PeerHello
    version: int


@dataclass(frozen=True, slots=True)
class DataReceived:
    """The peer sent a DATA frame with `payload`."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class ClosedEvent:
    """The session is closed: `by_peer` if the peer ended it, `error` unless it ended cleanly.

    An error is a protocol violation, an end of stream without CLOSE, or a keepalive timeout.
    """

    reason: str
    by_peer: bool
    error: bool = False


@dataclass(frozen=True, slots=True)
class PathSuspect:
    """A PING has gone unanswered for `after` seconds: the path may be dead."""

    after: float


@dataclass(frozen=True, slots=True)
class PathRecovered:
    """The PING of a suspect path was answered."""


Event = HelloReceived | DataReceived | ClosedEvent | PathSuspect | PathRecovered


@dataclass
class SessionCore:
    """One side of a session: bytes in, bytes and events out; time passed in."""

    hello: PeerHello
    now: float
    keepalive: float = DEFAULT_KEEPALIVE
    dead_after: float = DEFAULT_DEAD_AFTER
    max_frame: int = DEFAULT_MAX_FRAME
    state: str = "hello"
    version: int | None = None
    rtt: float | None = None  # the last measured round trip
    srtt: float | None = None  # smoothed (RFC 6298: 7/8 old + 1/8 new)
    suspect: bool = False
    session_id: bytes = b""  # from both nonces, once the peer's Hello is in (b"": none)
    _in: bytearray = field(default_factory=bytearray)
    _out: bytearray = field(default_factory=bytearray)
    _events: deque[Event] = field(default_factory=deque)
    _last_tx: float = 0.0
    _ping_sent: float | None = None  # the outstanding PING (one at a time)
    _data_sent: int = 0  # bytes of DATA framed so far
    _data_at_ping: int = 0  # ... when the outstanding PING was sent
    _data_acked: int = 0  # ... before the last answered PING

    def __post_init__(self) -> None:
        self._last_tx = self.now
        self._frame(HELLO, self.hello.encode(), self.now)

    # -- output ----------------------------------------------------------------------

    def _frame(self, kind: int, payload: bytes, now: float) -> None:
        self._out += _HEAD.pack(len(payload) + 1, kind)
        self._out += payload
        self._last_tx = now

    def _ping(self, now: float) -> None:
        self._ping_sent, self._data_at_ping = now, self._data_sent
        self._frame(PING, b"", now)

    def send(self, payload: bytes, now: float) -> None:
        """Queue a DATA frame (and a PING if none is outstanding, so it is acknowledged);
        RemoteProtocolError unless open, ValueError if over `max_frame`."""
        if self.state != "open":
            raise RemoteProtocolError(f"cannot send: session is {self.state}")
        if len(payload) + 1 > self.max_frame:
            raise ValueError(f"payload of {len(payload)} bytes exceeds the frame limit")
        self._frame(DATA, payload, now)
        self._data_sent += len(payload) + 5
        if self._ping_sent is None:
            self._ping(now)

    def close(self, reason: str, now: float) -> None:
        """Queue CLOSE with `reason` (cut to 200 bytes) and end the session; no-op once closed."""
        if self.state != "closed":
            self._frame(CLOSE, reason.encode()[:200], now)
            self._finish(reason, by_peer=False)

    def data_to_send(self) -> bytes:
        """The bytes queued for the peer since the last call (possibly b"")."""
        data, self._out = bytes(self._out), bytearray()
        return data

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    # -- input -----------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """Feed bytes read from the peer; ignored once closed.

        A protocol violation does not raise: it queues CLOSE and ends the session with an error.
        """
        if self.state == "closed":
            return
        self._in += data
        try:
            self._parse(now)
        except RemoteProtocolError as exc:
            self._frame(CLOSE, str(exc).encode()[:200], now)
            self._finish(str(exc), by_peer=False, error=True)

    def receive_eof(self) -> None:
        """The peer's stream ended: close with an error, unless already closed."""
        if self.state != "closed":
            self._finish("connection closed by peer", by_peer=True, error=True)

    def _parse(self, now: float) -> None:
        buf = self._in
        while self.state != "closed" and len(buf) >= _HEAD.size:
            length, kind = _HEAD.unpack_from(buf)
            if length == 0 or length > self.max_frame:
                raise RemoteProtocolError(f"frame of {length} bytes (limit {self.max_frame})")
            if len(buf) < 4 + length:
                return
            payload = bytes(buf[5 : 4 + length])
            del buf[: 4 + length]
            self._on_frame(kind, payload, now)

    def _on_frame(self, kind: int, payload: bytes, now: float) -> None:
        if self.state == "hello":
            if kind != HELLO:
                raise RemoteProtocolError("expected Hello first")
            hello = PeerHello.decode(payload)
            common = set(hello.versions) & set(SUPPORTED_VERSIONS)
            if not common:
                raise RemoteProtocolError(
                    f"no common protocol version: peer speaks {sorted(hello.versions)}, "
                    f"we speak {sorted(SUPPORTED_VERSIONS)}")
            self.version = max(common)
            self.state = "open"
            if self.hello.nonce and hello.nonce:
                low, high = sorted((self.hello.nonce, hello.nonce))
                self.session_id = hashlib.sha256(b"p2pgate session\0" + low + high).digest()[:16]
            self._events.append(HelloReceived(hello, self.version))
        elif kind == DATA:
            self._events.append(DataReceived(payload))
        elif kind == PING:
            self._frame(PONG, payload, now)
        elif kind == PONG:
            self._answered(now)
        elif kind == CLOSE:
            self._finish(payload.decode(errors="replace") or "closed by peer", by_peer=True)
        else:
            raise RemoteProtocolError(f"unknown frame type {kind}")

    def _finish(self, reason: str, by_peer: bool, error: bool = False) -> None:
        self.state = "closed"
        self._events.append(ClosedEvent(reason, by_peer, error))

    def _answered(self, now: float) -> None:
        if self._ping_sent is None:
            return  # a PONG we did not ask for
        self.rtt = now - self._ping_sent
        self.srtt = self.rtt if self.srtt is None else 0.875 * self.srtt + 0.125 * self.rtt
        self._ping_sent, self._data_acked = None, self._data_at_ping
        if self.suspect:
            self.suspect = False
            self._events.append(PathRecovered())
        if self._data_sent > self._data_acked and self.state == "open":
            self._ping(now)  # DATA went out after that PING: have it acknowledged too

    # -- timers ----------------------------------------------------------------------

    def suspect_after(self) -> float:
        """How long the outstanding PING may go unanswered before the path is suspect."""
        base = max(MIN_SUSPECT, 4 * self.srtt) if self.srtt is not None else MIN_SUSPECT
        return base + (self._data_at_ping - self._data_acked) / FLOOR_RATE

    def _dead_at(self, ping_sent: float) -> float:
        return ping_sent + max(self.dead_after, 2 * self.suspect_after())

    def get_timer(self) -> float | None:
        """When `handle_timer` is due next (suspect, dead, or the idle PING), or None."""
        if self.state == "closed":
            return None
        if self._ping_sent is None:
            return self._last_tx + self.keepalive
        if not self.suspect:
            return self._ping_sent + self.suspect_after()
        return self._dead_at(self._ping_sent)

    def handle_timer(self, now: float) -> None:
        """PING an idle session; mark the path suspect, or close it, when a PING goes
        unanswered (see the module docstring)."""
        if self.state == "closed":
            return
        sent = self._ping_sent
        if sent is None:
            if now >= self._last_tx + self.keepalive and self.state == "open":
                self._ping(now)
            return
        if now >= self._dead_at(sent):
            self._frame(CLOSE, b"keepalive timeout", now)
            self._finish(f"peer stopped answering (no answer for {now - sent:.0f} s)",
                         by_peer=False, error=True)
        elif not self.suspect and now >= sent + self.suspect_after():
            self.suspect = True
            self._events.append(PathSuspect(round(now - sent, 3)))
