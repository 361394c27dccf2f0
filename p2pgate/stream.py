"""The one byte-pipe interface every transport implements (a leaf module).

A `Stream` moves bytes in order between two ends: a TCP connection, a relay
splice, later a WebRTC data channel, or an in-memory pair in tests. Errors are
our own `StreamClosed`, never a raw `OSError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Protocol

from p2pgate.errors import P2PGateError

CONNECT_TIMEOUT = 5.0  # a TCP connect that has not completed by then has failed
CLOSE_GRACE = 1.0  # close() waits this long for buffered bytes to leave, then aborts

__all__ = [
    "CLOSE_GRACE", "CONNECT_TIMEOUT", "FailingStream", "SlowStream", "Stream", "StreamClosed",
    "TcpStream", "map_errors", "memory_pair",
]


class StreamClosed(P2PGateError):
    """The other end closed, the connection broke, or we closed it."""


class Stream(Protocol):
    """An ordered, reliable byte pipe to one other end; errors are StreamClosed."""

    path: str  # "direct", "relay", "webrtc", "memory"

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Up to `max_bytes` bytes; b"" once the other end has closed."""
        ...

    async def write(self, data: bytes) -> None:
        """Send all of `data`; raises StreamClosed if the stream is closed or broke."""
        ...

    async def close(self) -> None:
        """Close our end; the other end then reads b""."""
        ...

    @property
    def remote_address(self) -> str | None:
        """HOST:PORT of the other end, or None if the transport has none."""
        ...


@contextlib.contextmanager
def map_errors() -> Iterator[None]:
    """Socket and OS errors at the boundary become `StreamClosed`."""
    try:
        yield
    except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
        raise StreamClosed(str(exc) or type(exc).__name__) from None


class TcpStream:
    """A plain TCP connection as a `Stream`."""

    path = "direct"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        peer = writer.get_extra_info("peername")
        self._remote = None if peer is None else f"{peer[0]}:{peer[1]}"

    @classmethod
    async def connect(cls, host: str, port: int) -> TcpStream:
        """Connect to `host`:`port`; raises StreamClosed if that fails or takes longer
        than `CONNECT_TIMEOUT`."""
        try:
            with map_errors():
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            raise StreamClosed(f"no answer within {CONNECT_TIMEOUT:.0f} s") from None
        return cls(reader, writer)

    @property
    def remote_address(self) -> str | None:
        """See `Stream.remote_address`."""
        return self._remote

    async def read(self, max_bytes: int = 65536) -> bytes:
        """See `Stream.read`."""
        with map_errors():
            return await self._reader.read(max_bytes)

    async def write(self, data: bytes) -> None:
        """See `Stream.write`; waits until the socket buffer drains."""
        if self._writer.is_closing():
            raise StreamClosed("stream closed")
        with map_errors():
            self._writer.write(data)
            await self._writer.drain()

    async def close(self) -> None:
        """Close the connection; errors while closing are ignored, and bytes a dead peer
        does not take are dropped after `CLOSE_GRACE`."""
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_GRACE):
                await self._writer.wait_closed()
                return
        self._writer.transport.abort()


class _MemoryEnd:
    path = "memory"
    remote_address = "memory"

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.peer: _MemoryEnd | None = None
        self.closed = False

    async def read(self, max_bytes: int = 65536) -> bytes:
        if self.closed:
            return b""
        data = await self._inbox.get()
        if len(data) > max_bytes:
            self._inbox._queue.appendleft(data[max_bytes:])  # type: ignore[attr-defined]  # noqa: SLF001
            data = data[:max_bytes]
        return data

    async def write(self, data: bytes) -> None:
        if self.closed or self.peer is None or self.peer.closed:
            raise StreamClosed("memory stream closed")
        if data:
            self.peer._inbox.put_nowait(bytes(data))  # noqa: SLF001

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._inbox.put_nowait(b"")
            if self.peer is not None and not self.peer.closed:
                self.peer._inbox.put_nowait(b"")  # noqa: SLF001 (end of stream for the peer)


def memory_pair() -> tuple[_MemoryEnd, _MemoryEnd]:
    """Two connected in-memory stream ends."""
    a, b = _MemoryEnd(), _MemoryEnd()
    a.peer, b.peer = b, a
    return a, b


class SlowStream:
    """Wraps a stream, delaying every read and write (for cancellation tests)."""

    def __init__(self, inner: Stream, delay: float) -> None:
        self._inner, self._delay = inner, delay
        self.path = inner.path

    @property
    def remote_address(self) -> str | None:
        """See `Stream.remote_address`."""
        return self._inner.remote_address

    async def read(self, max_bytes: int = 65536) -> bytes:
        """See `Stream.read`, after the delay."""
        await asyncio.sleep(self._delay)
        return await self._inner.read(max_bytes)

    async def write(self, data: bytes) -> None:
        """See `Stream.write`, after the delay."""
        await asyncio.sleep(self._delay)
        await self._inner.write(data)

    async def close(self) -> None:
        """See `Stream.close`."""
        await self._inner.close()


class FailingStream:
    """Wraps a stream and breaks after `fail_after` bytes have been written."""

    def __init__(self, inner: Stream, fail_after: int) -> None:
        self._inner, self._left = inner, fail_after
        self.path = inner.path

    @property
    def remote_address(self) -> str | None:
        """See `Stream.remote_address`."""
        return self._inner.remote_address

    async def read(self, max_bytes: int = 65536) -> bytes:
        """See `Stream.read`."""
        return await self._inner.read(max_bytes)

    async def write(self, data: bytes) -> None:
        """See `Stream.write`; past `fail_after` bytes in all, closes and raises StreamClosed."""
        if len(data) > self._left:
            await self._inner.write(data[: self._left])
            self._left = 0
            await self._inner.close()
            raise StreamClosed("connection reset (FailingStream)")
        self._left -= len(data)
        await self._inner.write(data)

    async def close(self) -> None:
        """See `Stream.close`."""
        await self._inner.close()
