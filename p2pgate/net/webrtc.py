"""The WebRTC path: an aiortc data channel as a `Stream` (path "webrtc").

Admission and pinned mutual TLS then run inside it unchanged (`peers.dial(stream=…)`,
`Listener.handle(stream)`), as on the relay path. aiortc is imported lazily and
by this module only.

`PeerAttempt` sets up one RTCPeerConnection with a pre-negotiated, ordered channel
(`negotiated=True, id=0`: no message can arrive before our handler is attached).
aiortc has no trickle ICE, so the local SDP after `setLocalDescription` holds
every candidate: one offer and one answer is the whole exchange. `iceServers` is
never left to aiortc's default (a public server): `[]`, or the relay's `stun:` URL.

Messages are `MESSAGE_SIZE` bytes, a whole number of SCTP packets: aiortc sends one
DATA chunk per packet, so a message's short last fragment costs a full packet, and
the per-packet work in aiortc's Python SCTP (a SACK for every packet) is what limits
a data channel. The ICE sockets get larger UDP buffers (`enlarge_socket_buffers`):
with the default ones a receiver that loses the CPU briefly drops datagrams, and
every drop halves SCTP's congestion window.

Flow control both ways. Sending waits while the channel's `bufferedAmount` is above
`HIGH_WATER` (until `bufferedamountlow`). aiortc's receiver takes every message at
once, so the receiver bounds its buffer itself with credit: a sender may have at
most `RECEIVE_WINDOW` bytes beyond what the reader has consumed; the reader grants
more in a text message `"credit N"` as it consumes. A peer that overruns the
window breaks the stream.

Clean close: close the channel (an SCTP stream reset, sent after the data already
queued), wait for its `close`, then `pc.close()` — closing the connection first
would abort data in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from p2pgate.errors import P2PGateError
from p2pgate.stream import StreamClosed

if TYPE_CHECKING:
    from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection

__all__ = [
    "CONNECT_DEADLINE", "HIGH_WATER", "MESSAGE_SIZE", "RECEIVE_WINDOW", "SOCKET_BUFFER",
    "PeerAttempt", "WebRtcFailed", "WebRtcStream", "enlarge_socket_buffers", "load_aiortc",
    "rtc_configuration",
]

log = logging.getLogger("p2pgate.net.webrtc")

CONNECT_DEADLINE = 10.0  # seconds for gathering, ICE, DTLS and SCTP until the channel opens
CLOSE_WAIT = 5.0  # seconds close() waits for the channel's reset to complete
SCTP_PAYLOAD = 1160  # user data in one SCTP packet (aiortc's USERDATA_MAX_LENGTH)
MESSAGE_SIZE = 56 * SCTP_PAYLOAD  # bytes per message: whole packets, under RFC 8841's 64 KiB
HIGH_WATER = 1 << 20  # writes wait while more than this is buffered in the channel
LOW_WATER = 256 << 10  # ... until it is down to this (`bufferedamountlow`)
RECEIVE_WINDOW = 4 << 20  # bytes a sender may have in flight beyond what was consumed
SOCKET_BUFFER = 2 << 20  # SO_RCVBUF/SO_SNDBUF asked for on the ICE sockets (the kernel caps it)
_CREDIT = "credit "


class WebRtcFailed(P2PGateError):
    """No data channel came up (deadline, ICE failure, bad SDP)."""


async def load_aiortc() -> None:
    """Import aiortc in a worker thread: its first import reads files and runs
    `ldconfig`, which must not stall the event loop."""
    await asyncio.to_thread(importlib.import_module, "aiortc")


def rtc_configuration(stun_url: str | None = None) -> RTCConfiguration:
    """The RTCConfiguration we use: no ICE server, or just the relay's `stun:` URL."""
    from aiortc import RTCConfiguration, RTCIceServer

    servers = [RTCIceServer(urls=stun_url)] if stun_url else []
    return RTCConfiguration(iceServers=servers)


class WebRtcStream:
    """An open data channel as a `Stream` (see the module docstring for flow control)."""

    path = "webrtc"

    def __init__(self, pc: RTCPeerConnection, channel: RTCDataChannel,
                 early: Sequence[bytes | str] = ()) -> None:
        """`early`: messages that arrived before the stream existed, in order."""
        self._pc, self._channel = pc, channel
        self._inbox: deque[bytes] = deque()
        self._buffered = 0  # bytes in the inbox
        self._consumed = 0  # bytes read since our last credit grant
        self._credit = RECEIVE_WINDOW  # bytes we may still send
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()  # credit and channel room
        self._writable.set()
        self._ended = False  # the channel or connection closed
        self._broken: str | None = None
        self._closed = asyncio.Event()
        self._remote = _selected_remote(pc)
        if SOCKET_BUFFER:
            enlarge_socket_buffers(pc, SOCKET_BUFFER)
        channel.bufferedAmountLowThreshold = LOW_WATER
        channel.on("message", self._on_message)
        channel.on("bufferedamountlow", self._update_writable)
        channel.on("close", self._on_close)
        pc.on("connectionstatechange", self._on_state)
        for message in early:
            self._on_message(message)
        if channel.readyState in ("closing", "closed"):
            self._on_close()

    @property
    def remote_address(self) -> str | None:
        """The selected remote ICE candidate as HOST:PORT, if known."""
        return self._remote

    def _on_message(self, message: bytes | str) -> None:
        if isinstance(message, str):
            amount = message[len(_CREDIT):]
            if message.startswith(_CREDIT) and amount.isdigit() and len(amount) <= 12:
                self._credit += int(amount)
                self._update_writable()
            else:
                self._break("unknown control message on the data channel")
            return
        if self._buffered + len(message) > RECEIVE_WINDOW:
            self._break("peer overran the receive window")
            return
        self._inbox.append(message)
        self._buffered += len(message)
        self._readable.set()

    def _update_writable(self) -> None:
        room = (self._credit > 0 and self._channel.bufferedAmount <= HIGH_WATER)
        if room or self._ended:
            self._writable.set()
        else:
            self._writable.clear()

    def _on_close(self) -> None:
        self._ended = True
        self._closed.set()
        self._readable.set()
        self._writable.set()

    def _on_state(self) -> None:
        if self._pc.connectionState in ("failed", "closed"):
            self._on_close()

    def _break(self, reason: str) -> None:
        log.info("webrtc stream broken: %s", reason)
        self._broken = reason
        self._inbox.clear()
        self._buffered = 0
        self._on_close()
        with contextlib.suppress(Exception):
            self._channel.close()

    async def read(self, max_bytes: int = 65536) -> bytes:
        """See `Stream.read`."""
        while not self._inbox:
            if self._broken is not None:
                raise StreamClosed(self._broken)
            if self._ended:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._inbox.popleft()
        if len(data) > max_bytes:
            self._inbox.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        self._buffered -= len(data)
        self._consumed += len(data)
        if self._consumed >= RECEIVE_WINDOW // 4 and not self._ended:
            grant, self._consumed = self._consumed, 0
            with contextlib.suppress(Exception):  # a closing channel: nothing to grant
                self._channel.send(f"{_CREDIT}{grant}")
        return data

    async def write(self, data: bytes) -> None:
        """See `Stream.write`: waits for the peer's credit and room in the channel."""
        view = memoryview(data)
        while view:
            while True:
                if self._ended or self._channel.readyState != "open":
                    raise StreamClosed(self._broken or "webrtc stream closed")
                self._update_writable()
                if self._writable.is_set():
                    break
                await self._writable.wait()
            size = min(len(view), MESSAGE_SIZE, self._credit)
            try:
                self._channel.send(bytes(view[:size]))
            except Exception as exc:  # aiortc raises InvalidStateError and others
                raise StreamClosed(f"webrtc send failed: {exc}") from None
            self._credit -= size
            view = view[size:]

    async def close(self) -> None:
        """Close the channel (data already sent still arrives), wait for its close, then
        close the connection."""
        if self._channel.readyState not in ("closing", "closed"):
            self._channel.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT):
                await self._closed.wait()
        self._ended = True
        self._readable.set()
        self._writable.set()
        await self._pc.close()


def _has_data_channel(sdp: str) -> bool:
    """Whether `sdp` offers or accepts an SCTP data channel (aiortc takes any text)."""
    return any(line.startswith("m=application ") and "webrtc-datachannel" in line
               for line in sdp.splitlines())


def enlarge_socket_buffers(pc: RTCPeerConnection, size: int = SOCKET_BUFFER) -> int:
    """Ask for `size` bytes of UDP buffer both ways on the connection's ICE sockets; the
    number of sockets changed.

    SCTP in aiortc keeps up to 1 MiB in flight, about 900 datagrams; the default
    receive buffer (208 KiB) holds a fraction of that, so a receiver that loses the CPU
    for a few milliseconds drops datagrams, and each drop halves SCTP's congestion
    window. The kernel caps `size` at `net.core.rmem_max`/`wmem_max` (no error).
    """
    changed = 0
    for sock in _ice_sockets(pc) or ():
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            changed += 1
    return changed


def _ice_sockets(pc: RTCPeerConnection) -> list[socket.socket] | None:
    """The UDP sockets ICE gathered on, None if this aiortc keeps them elsewhere (aioice
    exports neither its connection nor its protocols)."""
    try:
        ice: Any = pc.sctp.transport.transport  # type: ignore[union-attr]
        protocols = list(ice._connection._protocols)  # noqa: SLF001
    except Exception:  # noqa: BLE001 (a different aiortc: keep the defaults)
        return None
    sockets = []
    for protocol in protocols:
        transport = getattr(protocol, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            sockets.append(sock)
    return sockets


def _selected_remote(pc: RTCPeerConnection) -> str | None:
    """HOST:PORT of the nominated remote candidate (aioice keeps it unexported)."""
    try:
        ice: Any = pc.sctp.transport.transport  # type: ignore[union-attr]
        pair = ice._connection._nominated.get(1)  # noqa: SLF001
        candidate = pair.remote_candidate
        return f"{candidate.host}:{candidate.port}"
    except Exception:  # noqa: BLE001 (a different aiortc: the address is optional)
        return None


class PeerAttempt:
    """One RTCPeerConnection being set up, with its pre-negotiated channel."""

    def __init__(self, pc: RTCPeerConnection, channel: RTCDataChannel) -> None:
        self.pc, self.channel = pc, channel
        self._open = asyncio.Event()
        # the peer may send as soon as its end is open, before our `opened()` resumes:
        # keep those messages for the stream (aiortc drops what no handler takes)
        self._early: list[bytes | str] | None = []
        self._early_bytes, self._early_overrun = 0, False
        channel.on("message", self._keep_early)
        channel.on("open", self._open.set)
        channel.on("close", self._open.set)
        pc.on("connectionstatechange", self._state_changed)
        self.local_sdp = ""

    def _keep_early(self, message: bytes | str) -> None:
        if self._early is not None and not self._early_overrun:
            self._early_bytes += len(message)
            self._early_overrun = self._early_bytes > RECEIVE_WINDOW  # the stream breaks
            if not self._early_overrun:
                self._early.append(message)

    def _state_changed(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._open.set()

    @classmethod
    async def _new(cls, stun_url: str | None) -> PeerAttempt:
        await load_aiortc()
        from aiortc import RTCPeerConnection

        pc = RTCPeerConnection(rtc_configuration(stun_url))
        channel = pc.createDataChannel("p2pgate", negotiated=True, id=0, ordered=True)
        return cls(pc, channel)

    @classmethod
    async def offer(cls, stun_url: str | None = None) -> PeerAttempt:
        """A new connection with our offer in `local_sdp` (all candidates gathered)."""
        attempt = await cls._new(stun_url)
        try:
            async with asyncio.timeout(CONNECT_DEADLINE):
                await attempt.pc.setLocalDescription(await attempt.pc.createOffer())
        except BaseException as exc:
            await attempt.abort()
            if isinstance(exc, Exception):
                raise WebRtcFailed(f"no offer: {exc or type(exc).__name__}") from None
            raise
        attempt.local_sdp = attempt.pc.localDescription.sdp
        return attempt

    @classmethod
    async def answer(cls, offer_sdp: str, stun_url: str | None = None) -> PeerAttempt:
        """A new connection answering `offer_sdp`; our answer is in `local_sdp`."""
        await load_aiortc()
        from aiortc import RTCSessionDescription

        if not _has_data_channel(offer_sdp):
            raise WebRtcFailed("the offer has no data channel")
        attempt = await cls._new(stun_url)
        try:
            async with asyncio.timeout(CONNECT_DEADLINE):
                await attempt.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=offer_sdp, type="offer"))
                await attempt.pc.setLocalDescription(await attempt.pc.createAnswer())
        except BaseException as exc:
            await attempt.abort()
            if isinstance(exc, Exception):
                raise WebRtcFailed(f"cannot answer: {exc or type(exc).__name__}") from None
            raise
        attempt.local_sdp = attempt.pc.localDescription.sdp
        return attempt

    async def accept_answer(self, answer_sdp: str) -> None:
        """Apply the peer's answer to our offer."""
        from aiortc import RTCSessionDescription

        if not _has_data_channel(answer_sdp):
            await self.abort()
            raise WebRtcFailed("the answer has no data channel")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp,
                                                                     type="answer"))
        except Exception as exc:  # noqa: BLE001 (aiortc raises ValueError and others)
            await self.abort()
            raise WebRtcFailed(f"bad answer: {exc or type(exc).__name__}") from None

    async def opened(self, within: float = CONNECT_DEADLINE) -> WebRtcStream:
        """The stream once the channel is open; WebRtcFailed (connection closed) if it
        does not open within `within` seconds."""
        try:
            async with asyncio.timeout(within):
                await self._open.wait()
        except TimeoutError:
            await self.abort()
            raise WebRtcFailed(f"no data channel within {within:.0f} s") from None
        except asyncio.CancelledError:
            await self.abort()
            raise
        if self.channel.readyState != "open":
            await self.abort()
            raise WebRtcFailed(f"connection {self.pc.connectionState}")
        early, self._early = self._early, None
        stream = WebRtcStream(self.pc, self.channel, early or ())
        if self._early_overrun:
            stream._break("peer overran the receive window")  # noqa: SLF001
        return stream

    async def abort(self) -> None:
        """Give up this connection (nothing is open on it yet)."""
        with contextlib.suppress(Exception):
            await self.pc.close()
