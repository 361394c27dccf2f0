"""`WebRtcStream` flow control and close over a scripted data channel (the real aiortc
channel is in tests/netns/test_netns_webrtc.py; aioice needs namespaces)."""

from __future__ import annotations

import asyncio

import pytest

from p2pgate.net import webrtc
from p2pgate.net.webrtc import HIGH_WATER, MESSAGE_SIZE, RECEIVE_WINDOW, WebRtcStream
from p2pgate.stream import StreamClosed


class FakeEmitter:
    def __init__(self):
        self.handlers = {}

    def on(self, event, handler):
        self.handlers.setdefault(event, []).append(handler)

    def emit(self, event, *args):
        for handler in self.handlers.get(event, []):
            handler(*args)


class FakeChannel(FakeEmitter):
    """Sent messages wait in `queue` (counted in bufferedAmount) until `flush()`."""

    def __init__(self, log):
        super().__init__()
        self.readyState = "open"
        self.bufferedAmountLowThreshold = 0
        self.queue: list[bytes | str] = []
        self.peer: FakeChannel | None = None
        self.log = log
        self.auto = True

    @property
    def bufferedAmount(self):
        return sum(len(m) for m in self.queue)

    def send(self, message):
        if self.readyState != "open":
            raise RuntimeError("channel not open")
        self.queue.append(message)
        if self.auto:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self):
        before = self.bufferedAmount
        queue, self.queue = self.queue, []
        for message in queue:
            self.peer.emit("message", message)
        if before > self.bufferedAmountLowThreshold:
            self.emit("bufferedamountlow")
        if self.readyState == "closing" and self.peer.readyState == "open":
            self._closed()

    def close(self):
        self.log.append("channel.close")
        if self.readyState == "open":
            self.readyState = "closing"
            asyncio.get_running_loop().call_soon(self.flush)

    def _closed(self):
        for end in (self, self.peer):
            end.readyState = "closed"
            end.emit("close")


class FakePc(FakeEmitter):
    def __init__(self, log):
        super().__init__()
        self.connectionState = "connected"
        self.sctp = None
        self.log = log

    async def close(self):
        self.log.append("pc.close")
        self.connectionState = "closed"


def stream_pair():
    log: list[str] = []
    ca, cb = FakeChannel(log), FakeChannel(log)
    ca.peer, cb.peer = cb, ca
    return WebRtcStream(FakePc(log), ca), WebRtcStream(FakePc(log), cb), ca, cb, log


async def read_exactly(stream, n):
    got = bytearray()
    while len(got) < n:
        data = await stream.read()
        assert data, "stream ended early"
        got += data
    return bytes(got)


async def test_bytes_arrive_in_order_and_read_respects_max_bytes():
    a, b, *_ = stream_pair()
    await a.write(b"hello " * 10_000)
    assert await b.read(5) == b"hello"
    assert await read_exactly(b, 60_000 - 5) == (b"hello " * 10_000)[5:]
    assert a.path == "webrtc" and a.remote_address is None


async def test_a_reader_that_does_not_read_stops_the_writer_at_the_window():
    a, b, _, cb, _ = stream_pair()
    data = bytes(range(256)) * ((2 * RECEIVE_WINDOW) // 256)
    writer = asyncio.ensure_future(a.write(data))
    await asyncio.sleep(0.1)
    assert not writer.done()  # no credit left: the writer waits
    assert b._buffered <= RECEIVE_WINDOW  # the receive buffer stays bounded
    got = await read_exactly(b, len(data))  # reading grants credit: the rest flows
    await writer
    assert got == data


async def test_writes_wait_while_the_channel_buffer_is_full():
    a, b, ca, _, _ = stream_pair()
    ca.auto = False  # the network takes nothing
    writer = asyncio.ensure_future(a.write(b"x" * (3 * HIGH_WATER)))
    await asyncio.sleep(0.05)
    assert not writer.done()
    assert HIGH_WATER < ca.bufferedAmount <= HIGH_WATER + MESSAGE_SIZE
    ca.auto = True
    ca.flush()  # drains: bufferedamountlow wakes the writer
    reader = asyncio.ensure_future(read_exactly(b, 3 * HIGH_WATER))
    await asyncio.wait_for(writer, 5)
    assert await asyncio.wait_for(reader, 5) == b"x" * (3 * HIGH_WATER)


async def test_a_peer_that_overruns_the_window_breaks_the_stream():
    _, b, _, cb, log = stream_pair()
    for _ in range(RECEIVE_WINDOW // MESSAGE_SIZE + 1):  # ignores our credit
        cb.emit("message", b"y" * MESSAGE_SIZE)
    async def read_all():
        while True:
            await b.read()

    with pytest.raises(StreamClosed, match="overran"):
        await read_all()
    assert "channel.close" in log


@pytest.mark.parametrize("message", ["credit lots", "credit " + "9" * 5000, "hello"])
async def test_an_unknown_control_message_breaks_the_stream(message):
    _, b, _, cb, _ = stream_pair()
    cb.emit("message", message)
    with pytest.raises(StreamClosed, match="control"):
        await b.read()


async def test_close_delivers_what_was_written_then_closes_channel_before_connection():
    a, b, *_, log = stream_pair()
    await a.write(b"last words" * 1000)
    await a.close()
    assert log == ["channel.close", "pc.close"]  # never pc.close() with data in flight
    assert await read_exactly(b, 10_000) == b"last words" * 1000
    assert await b.read() == b""
    with pytest.raises(StreamClosed):
        await b.write(b"too late")
    await b.close()
    assert log[-1] == "pc.close"


async def test_a_failed_connection_ends_reads_and_writes():
    a, b, *_ = stream_pair()
    b._pc.connectionState = "failed"
    b._pc.emit("connectionstatechange")
    assert await b.read() == b""
    with pytest.raises(StreamClosed):
        await b.write(b"x")
    await a.close()
    await b.close()


def test_ice_servers_are_never_left_to_the_default():
    assert webrtc.rtc_configuration().iceServers == []
    servers = webrtc.rtc_configuration("stun:10.0.0.1:3478").iceServers
    assert [s.urls for s in servers] == ["stun:10.0.0.1:3478"]


def test_aiortc_is_imported_lazily_and_by_the_webrtc_module_only():
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import sys, p2pgate.net.webrtc, p2pgate.net.rtc_signalling, p2pgate.node\n"
            "print('aiortc' in sys.modules, 'aioice' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=root)
    assert out.stdout.split() == ["False", "False"]
    importing = re.compile(r"^\s*(from|import)\s+(aiortc|aioice)\b|import_module\(\"aiortc",
                           re.MULTILINE)
    importers = {path.relative_to(root).as_posix() for path in (root / "p2pgate").rglob("*.py")
                 if importing.search(path.read_text())}
    assert importers == {"p2pgate/net/webrtc.py"}


def _ice_connection(*socks):
    """What aiortc and aioice keep: pc.sctp.transport.transport._connection._protocols."""
    from types import SimpleNamespace

    protocols = [SimpleNamespace(transport=SimpleNamespace(
        get_extra_info=lambda name, s=s: s if name == "socket" else None)) for s in socks]
    ice = SimpleNamespace(_connection=SimpleNamespace(_protocols=protocols))
    return SimpleNamespace(transport=SimpleNamespace(transport=ice))


async def test_the_stream_asks_for_large_udp_buffers_on_the_ice_sockets():
    import socket

    log: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))  # sends nothing
        before = [sock.getsockopt(socket.SOL_SOCKET, o) for o in (socket.SO_RCVBUF,
                                                                  socket.SO_SNDBUF)]
        pc, channel = FakePc(log), FakeChannel(log)
        pc.sctp = _ice_connection(sock)
        WebRtcStream(pc, channel)
        after = [sock.getsockopt(socket.SOL_SOCKET, o) for o in (socket.SO_RCVBUF,
                                                                 socket.SO_SNDBUF)]
    # the kernel caps the size at net.core.rmem_max / wmem_max, never below its default
    assert after[0] > before[0] and after[1] > before[1]
    assert webrtc.SOCKET_BUFFER >= 1 << 20


async def test_the_ice_sockets_are_where_this_aiortc_keeps_them():
    await webrtc.load_aiortc()
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection(webrtc.rtc_configuration())
    pc.createDataChannel("p2pgate", negotiated=True, id=0)
    try:
        assert webrtc._ice_sockets(pc) == []  # found (nothing gathered yet), not None
        assert webrtc._ice_sockets(FakePc([])) is None  # another shape: left alone
    finally:
        await pc.close()


async def test_a_write_goes_out_in_messages_of_whole_sctp_packets():
    await webrtc.load_aiortc()
    from aiortc import rtcsctptransport

    a, b, ca, _, _ = stream_pair()
    ca.auto = False
    await a.write(b"z" * (64 << 10))
    # a short last fragment costs a whole packet: only the write's own tail is short
    assert [len(m) for m in ca.queue] == [MESSAGE_SIZE, (64 << 10) - MESSAGE_SIZE]
    assert MESSAGE_SIZE % rtcsctptransport.USERDATA_MAX_LENGTH == 0
    assert MESSAGE_SIZE <= rtcsctptransport.REMOTE_DEFAULT_MAX_MESSAGE_SIZE
    ca.auto = True
    ca.flush()
    assert await read_exactly(b, 64 << 10) == b"z" * (64 << 10)


def _attempt():
    log: list[str] = []
    pc, ca, cb = FakePc(log), FakeChannel(log), FakeChannel(log)
    ca.peer, cb.peer = cb, ca
    return webrtc.PeerAttempt(pc, ca), cb


async def test_what_the_peer_sends_before_opened_resumes_is_not_lost():
    attempt, _ = _attempt()
    attempt.channel.emit("open")  # our end opens; `opened()` has not resumed yet
    attempt.channel.emit("message", b"admission hello")  # the peer wrote at once
    attempt.channel.emit("message", "credit 5")
    stream = await attempt.opened()
    async with asyncio.timeout(5):
        assert await stream.read() == b"admission hello"
    assert stream._credit == RECEIVE_WINDOW + 5
    attempt.channel.emit("message", b"later")  # once: the early buffer is done with
    assert await stream.read() == b"later"
    assert not stream._inbox


async def test_a_peer_that_overruns_the_window_before_opened_breaks_the_stream():
    attempt, _ = _attempt()
    attempt.channel.emit("open")
    for _ in range(RECEIVE_WINDOW // MESSAGE_SIZE + 2):
        attempt.channel.emit("message", b"y" * MESSAGE_SIZE)
    stream = await attempt.opened()
    with pytest.raises(StreamClosed, match="overran"):
        async with asyncio.timeout(5):
            await stream.read()
