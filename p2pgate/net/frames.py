"""Session framing and Hello, sans-I/O.

    frame = length:u32 (of what follows) type:u8 payload

A session starts with both sides sending HELLO (JSON: device, name, versions,
capabilities, relays, discovery key); each picks the highest version both speak,
or closes with a clear reason. Then DATA frames carry the protocols above (sync),
PING/PONG keep it alive and measure RTT, CLOSE ends it with a reason.

States: hello (waiting for the peer's HELLO) → open → closed. Timers: a PING
after `keepalive` seconds without sending, the peer declared dead after
`dead_after` seconds without receiving.
"""

from __future__ import annotations

import json
import struct
from collections import deque
from dataclasses import dataclass, field

from p2pgate.errors import RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME", "PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "ClosedEvent", "DataReceived",
    "HelloReceived", "PeerHello", "SessionCore",
]

PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = (PROTOCOL_VERSION, PROTOCOL_VERSION - 1)  # we speak N and N-1
DEFAULT_MAX_FRAME = (4 << 20) + 1024  # a sync message is at most 4 MiB
HELLO, DATA, PING, PONG, CLOSE = 1, 2, 3, 4, 5
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

    def encode(self) -> bytes:
        """The HELLO frame's payload (JSON)."""
        return json.dumps({"device": self.device, "name": self.name,
                           "versions": list(self.versions), "caps": list(self.capabilities),
                           "relays": list(self.relays), "disc": self.disc_key.hex()}).encode()

    @classmethod
    def decode(cls, payload: bytes) -> PeerHello:
        """Parse a HELLO payload (the name cut to 128 chars); RemoteProtocolError if malformed."""
        try:
            d = json.loads(payload)
            hello = cls(str(d["device"]), str(d["name"])[:128],
                        tuple(int(v) for v in d["versions"]),
                        tuple(str(c) for c in d.get("caps", ())),
                        tuple(str(r) for r in d.get("relays", ())),
                        bytes.fromhex(str(d.get("disc", ""))))
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError,
                RecursionError) as exc:  # whatever JSON a peer sends ends here
            raise RemoteProtocolError(f"malformed Hello: {type(exc).__name__}") from None
        if len(hello.disc_key) not in (0, 32):
            raise RemoteProtocolError("malformed Hello: bad discovery key")
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


Event = HelloReceived | DataReceived | ClosedEvent


@dataclass
class SessionCore:
    """One side of a session: bytes in, bytes and events out; time passed in."""

    hello: PeerHello
    now: float
    keepalive: float = 15.0
    dead_after: float = 45.0
    max_frame: int = DEFAULT_MAX_FRAME
    state: str = "hello"
    version: int | None = None
    rtt: float | None = None
    _in: bytearray = field(default_factory=bytearray)
    _out: bytearray = field(default_factory=bytearray)
    _events: deque[Event] = field(default_factory=deque)
    _last_rx: float = 0.0
    _last_tx: float = 0.0
    _ping_sent: float | None = None

    def __post_init__(self) -> None:
        self._last_rx = self._last_tx = self.now
        self._frame(HELLO, self.hello.encode(), self.now)

    # -- output ----------------------------------------------------------------------

    def _frame(self, kind: int, payload: bytes, now: float) -> None:
        self._out += _HEAD.pack(len(payload) + 1, kind)
        self._out += payload
        self._last_tx = now

    def send(self, payload: bytes, now: float) -> None:
        """Queue a DATA frame; RemoteProtocolError unless open, ValueError if over `max_frame`."""
        if self.state != "open":
            raise RemoteProtocolError(f"cannot send: session is {self.state}")
        if len(payload) + 1 > self.max_frame:
            raise ValueError(f"payload of {len(payload)} bytes exceeds the frame limit")
        self._frame(DATA, payload, now)

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
        self._last_rx = now
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
            self._events.append(HelloReceived(hello, self.version))
        elif kind == DATA:
            self._events.append(DataReceived(payload))
        elif kind == PING:
            self._frame(PONG, payload, now)
        elif kind == PONG:
            if self._ping_sent is not None:
                self.rtt = now - self._ping_sent
                self._ping_sent = None
        elif kind == CLOSE:
            self._finish(payload.decode(errors="replace") or "closed by peer", by_peer=True)
        else:
            raise RemoteProtocolError(f"unknown frame type {kind}")

    def _finish(self, reason: str, by_peer: bool, error: bool = False) -> None:
        self.state = "closed"
        self._events.append(ClosedEvent(reason, by_peer, error))

    # -- timers ----------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When `handle_timer` is due next (the keepalive or the dead-peer time), or None."""
        if self.state == "closed":
            return None
        return min(self._last_tx + self.keepalive, self._last_rx + self.dead_after)

    def handle_timer(self, now: float) -> None:
        """Close if nothing came for `dead_after` seconds, else PING after `keepalive` idle."""
        if self.state == "closed":
            return
        if now >= self._last_rx + self.dead_after:
            self._frame(CLOSE, b"keepalive timeout", now)
            self._finish("peer stopped answering (keepalive timeout)", by_peer=False,
                         error=True)
            return
        if now >= self._last_tx + self.keepalive and self.state == "open":
            self._ping_sent = now
            self._frame(PING, b"", now)
