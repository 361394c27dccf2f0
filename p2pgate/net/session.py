"""A session between two trusted devices: the asyncio adapter of `SessionCore`.

It owns one pinned `TlsStream`: a reader task feeds received bytes to the core,
a timer drives its liveness checks (see `p2pgate.net.frames`), and DATA payloads
queue up for `receive()`. A suspect or recovered path is reported to the
`on_suspect` callbacks. Errors of the transport end the session with a reason;
they never escape into the loop, and closing never waits on a dead peer for
longer than `CLOSE_GRACE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from p2pgate.errors import P2PGateError, RemoteProtocolError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.net.frames import (
    DEFAULT_DEAD_AFTER,
    DEFAULT_KEEPALIVE,
    DEFAULT_MAX_FRAME,
    ClosedEvent,
    DataReceived,
    HelloReceived,
    PathRecovered,
    PathSuspect,
    PeerHello,
    SessionCore,
)
from p2pgate.net.tls import TlsStream
from p2pgate.stream import CLOSE_GRACE, StreamClosed

__all__ = ["Session", "SessionError", "SessionOptions"]

log = logging.getLogger("p2pgate.net")

HELLO_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """The idle-ping interval and how long an unanswered PING may take before the
    session ends (seconds), and the largest frame (bytes) of a session."""

    keepalive: float = DEFAULT_KEEPALIVE
    dead_after: float = DEFAULT_DEAD_AFTER
    max_frame: int = DEFAULT_MAX_FRAME


class SessionError(P2PGateError):
    """The session has ended; `str()` says why."""


class Session:
    """A running session with a trusted device; made by `establish`, used in one event loop.

    `peer_name`, `version`, `capabilities`, `relays` and `disc_key` come from the peer's
    Hello; `path` and `remote_address` from the stream; byte counts include framing.
    `session_id` is shared by both ends; `replaces` is the ID of the session the peer
    means this one to replace (b"": none).
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
        self.replaces = hello.replaces
        self.session_id = core.session_id
        self.path = stream.path
        self.remote_address = stream.remote_address
        self.bytes_sent = 0
        self.bytes_received = 0
        self.close_reason: str | None = None
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closed = asyncio.Event()
        self._rearm = asyncio.Event()  # the core's timer may be earlier now (a PING went out)
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._on_close: list[Callable[[Session], None]] = []
        self._on_suspect: list[Callable[[Session, bool], None]] = []
        self._closer: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"Session({self.peer.short}, {self.path})"

    @property
    def rtt(self) -> float | None:
        """The last measured round-trip time in seconds, or None before the first PONG."""
        return self._core.rtt

    @property
    def suspect(self) -> bool:
        """Whether a PING is overdue (the path may be dead; see `p2pgate.net.frames`)."""
        return self._core.suspect

    @property
    def closed(self) -> bool:
        """Whether the session has ended (`close_reason` says why)."""
        return self._closed.is_set()

    # -- set-up --------------------------------------------------------------------------

    @classmethod
    async def establish(cls, stream: TlsStream, hello: PeerHello,
                        options: SessionOptions = SessionOptions()) -> Session:  # noqa: B008
        """Exchange Hellos over a pinned stream; the session is then running."""
        hello = dataclasses.replace(hello, nonce=os.urandom(16))
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

    def on_suspect(self, callback: Callable[[Session, bool], None]) -> None:
        """Call `callback(session, True)` when the path turns suspect, `(session, False)`
        when it recovers."""
        self._on_suspect.append(callback)

    # -- use -------------------------------------------------------------------------

    async def send(self, payload: bytes) -> None:
        """Send one DATA payload; SessionError once ended, ValueError if over the frame limit."""
        if self.closed:
            raise SessionError(self.close_reason or "closed")
        try:
            self._core.send(payload, time.monotonic())
        except RemoteProtocolError as exc:
            raise SessionError(str(exc)) from None
        self._rearm.set()
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
            with contextlib.suppress(StreamClosed, RemoteProtocolError, TimeoutError):
                async with asyncio.timeout(CLOSE_GRACE):  # a dead peer reads nothing
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
        """Write what the core queued, and what it queues meanwhile (PINGs, PONGs)."""
        async with self._write_lock:
            while data := self._core.data_to_send():
                await self._stream.write(data)
                self.bytes_sent += len(data)

    async def _kick(self) -> None:
        """Flush unless a write is under way (the writer takes our bytes along): the
        reader and the timer never wait on a stream that does not drain."""
        if not self._write_lock.locked():
            await self._flush()

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
        self._dispatch()
        with contextlib.suppress(StreamClosed):
            await self._kick()  # PINGs, PONGs, CLOSE after a protocol error

    def _dispatch(self) -> None:
        while (event := self._core.next_event()) is not None:
            if isinstance(event, DataReceived):
                self._inbox.put_nowait(event.payload)
            elif isinstance(event, ClosedEvent):
                if event.error:
                    log.info("session with %s closed: %s", self.peer.short, event.reason)
                self._end(event.reason)
            elif isinstance(event, PathSuspect):
                log.info("path to %s (%s) is suspect: no answer for %.1f s",
                         self.peer.short, self.path, event.after)
                for callback in self._on_suspect:
                    callback(self, True)
            elif isinstance(event, PathRecovered):
                for callback in self._on_suspect:
                    callback(self, False)

    async def _timer_loop(self) -> None:
        while not self.closed:
            when = self._core.get_timer()
            if when is None:
                return
            self._rearm.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, when - time.monotonic())):
                    await self._rearm.wait()
                    continue  # a write moved the timer: compute it again
            self._core.handle_timer(time.monotonic())
            self._dispatch()
            when = self._core.get_timer()
            # a stream that does not drain must not hold up the next check (the
            # bytes stay queued in the transport: cancelling the wait loses nothing)
            with contextlib.suppress(StreamClosed, TimeoutError):
                async with asyncio.timeout(None if when is None else
                                           max(0.05, when - time.monotonic())):
                    await self._kick()

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
