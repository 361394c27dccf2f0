"""A session between two trusted devices: the asyncio adapter of `SessionCore`.

It owns one pinned `TlsStream`: a reader task feeds received bytes to the core,
a timer drives keepalives, and DATA payloads queue up for `receive()`. Errors of
the transport end the session with a reason; they never escape into the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from p2pgate.errors import P2PGateError, RemoteProtocolError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.net.frames import (
    DEFAULT_MAX_FRAME,
    ClosedEvent,
    DataReceived,
    HelloReceived,
    PeerHello,
    SessionCore,
)
from p2pgate.net.tls import TlsStream
from p2pgate.stream import StreamClosed

__all__ = ["Session", "SessionError", "SessionOptions"]

log = logging.getLogger("p2pgate.net")

HELLO_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """Keepalive and dead-peer delays (seconds) and the largest frame (bytes) of a session."""

    keepalive: float = 15.0
    dead_after: float = 45.0
    max_frame: int = DEFAULT_MAX_FRAME


class SessionError(P2PGateError):
    """The session has ended; `str()` says why."""


class Session:
    """A running session with a trusted device; made by `establish`, used in one event loop.

    `peer_name`, `version`, `capabilities`, `relays` and `disc_key` come from the peer's
    Hello; `path` and `remote_address` from the stream; byte counts include framing.
    """

    def __init__(self, stream: TlsStream, core: SessionCore, hello: PeerHello) -> None:
        self._stream = stream
        self._core = core
        self.peer: DeviceID = stream.peer
        self.peer_name = hello.name
        self.version = core.version
        self.capabilities = hello.capabilities
        self.relays = hello.relays
        self.disc_key = hello.disc_key
        self.path = stream.path
        self.remote_address = stream.remote_address
        self.bytes_sent = 0
        self.bytes_received = 0
        self.close_reason: str | None = None
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closed = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._on_close: list[Callable[[Session], None]] = []
        self._closer: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"Session({self.peer.short}, {self.path})"

    @property
    def rtt(self) -> float | None:
        """The last measured round-trip time in seconds, or None before the first PONG."""
        return self._core.rtt

    @property
    def closed(self) -> bool:
        """Whether the session has ended (`close_reason` says why)."""
        return self._closed.is_set()

    # -- set-up --------------------------------------------------------------------------

    @classmethod
    async def establish(cls, stream: TlsStream, hello: PeerHello,
                        options: SessionOptions = SessionOptions()) -> Session:  # noqa: B008
        """Exchange Hellos over a pinned stream; the session is then running."""
        core = SessionCore(hello, time.monotonic(), options.keepalive, options.dead_after,
                           options.max_frame)
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                await stream.write(core.data_to_send())
                peer_hello = None
                while peer_hello is None:
                    data = await stream.read()
                    if not data:
                        raise SessionError("peer closed before Hello")
                    core.receive(data, time.monotonic())
                    await stream.write(core.data_to_send())
                    event = core.next_event()
                    if isinstance(event, ClosedEvent):
                        raise SessionError(f"refused: {event.reason}")
                    if isinstance(event, HelloReceived):
                        peer_hello = event.hello
        except (TimeoutError, StreamClosed, RemoteProtocolError) as exc:
            await stream.close()
            raise SessionError(f"no session: {exc or 'Hello timed out'}") from None
        except BaseException:
            await stream.close()
            raise
        if peer_hello.device != str(stream.peer):
            await stream.close()
            raise SessionError("peer's Hello names another device than its certificate")
        session = cls(stream, core, peer_hello)
        leftover = []
        while (event := core.next_event()) is not None:
            if isinstance(event, DataReceived):
                leftover.append(event.payload)
        for payload in leftover:
            session._inbox.put_nowait(payload)
        session._tasks = [asyncio.ensure_future(session._read_loop()),
                          asyncio.ensure_future(session._timer_loop())]
        return session

    def on_close(self, callback: Callable[[Session], None]) -> None:
        """Call `callback(session)` when the session ends (never, if it already has)."""
        self._on_close.append(callback)

    # -- use -------------------------------------------------------------------------

    async def send(self, payload: bytes) -> None:
        """Send one DATA payload; SessionError once ended, ValueError if over the frame limit."""
        if self.closed:
            raise SessionError(self.close_reason or "closed")
        try:
            self._core.send(payload, time.monotonic())
        except RemoteProtocolError as exc:
            raise SessionError(str(exc)) from None
        await self._flush()

    async def receive(self) -> bytes:
        """The next DATA payload; SessionError once the session has ended."""
        payload = await self._inbox.get()
        if payload is None:
            self._inbox.put_nowait(None)
            raise SessionError(self.close_reason or "closed")
        return payload

    async def close(self, reason: str = "closed") -> None:
        """Tell the peer `reason` (best effort), end the session and wait for it to wind down."""
        if not self.closed:
            self._core.close(reason, time.monotonic())
            with contextlib.suppress(StreamClosed, RemoteProtocolError):
                await self._flush()
            self._end(reason)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the session has ended, its tasks are gone and its stream is closed."""
        await self._closed.wait()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._closer is not None:
            await self._closer

    # -- internals -----------------------------------------------------------------------

    async def _flush(self) -> None:
        data = self._core.data_to_send()
        if data:
            async with self._write_lock:
                await self._stream.write(data)
            self.bytes_sent += len(data)

    async def _read_loop(self) -> None:
        try:
            while not self.closed:
                data = await self._stream.read()
                if not data:
                    self._core.receive_eof()
                else:
                    self.bytes_received += len(data)
                    self._core.receive(data, time.monotonic())
                await self._drain_events()
        except (StreamClosed, RemoteProtocolError) as exc:
            self._end(f"connection lost: {exc}")
        finally:
            self._end("connection lost")

    async def _drain_events(self) -> None:
        with contextlib.suppress(StreamClosed):
            await self._flush()  # PONGs, CLOSE after a protocol error
        while (event := self._core.next_event()) is not None:
            if isinstance(event, DataReceived):
                self._inbox.put_nowait(event.payload)
            elif isinstance(event, ClosedEvent):
                if event.error:
                    log.info("session with %s closed: %s", self.peer.short, event.reason)
                self._end(event.reason)

    async def _timer_loop(self) -> None:
        while not self.closed:
            when = self._core.get_timer()
            if when is None:
                return
            await asyncio.sleep(max(0.0, when - time.monotonic()))
            self._core.handle_timer(time.monotonic())
            await self._drain_events()

    def _end(self, reason: str) -> None:
        if self.closed:
            return
        self.close_reason = reason
        self._closed.set()
        self._inbox.put_nowait(None)
        for callback in self._on_close:
            callback(self)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._closer = asyncio.ensure_future(self._stream.close())
