"""The signalling adapter over a real (in-process) relay's control connection:
hostile signals are refused and counted, an unanswered offer ends at its deadline
with a bye. No ICE traffic leaves this host: no offer here carries a candidate
that is ever checked (the WebRTC connection itself is tests/netns)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from aiohttp import web

from p2pgate.identity import Identity
from p2pgate.net import rtc_signal
from p2pgate.net.rtc_signal import Ended, RtcSignaller, seal, signal_key
from p2pgate.net.rtc_signalling import RtcSignalling
from p2pgate.net.webrtc import WebRtcFailed, load_aiortc
from p2pgate.relay.client import RelayClient
from p2pgate.relay.config import RelayConfig
from p2pgate.relay.server import RelayServer

K = b"p" * 32


@contextlib.asynccontextmanager
async def relay():
    server = RelayServer(RelayConfig(listen=("127.0.0.1", 0)))
    runner = web.AppRunner(server.application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"ws://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def client(url, identity, trusts=()):
    trusted = {t.device_id for t in trusts}

    async def should_accept(peer):
        return peer in trusted

    async def no_splice(stream):
        await stream.close()

    relay_client = RelayClient(url, identity, should_accept, no_splice)
    task = asyncio.ensure_future(relay_client.run(min_backoff=0.05, max_backoff=0.2))
    try:
        await asyncio.wait_for(relay_client.wait_connected(), 5)
        yield relay_client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate):
    for _ in range(250):  # 5 s
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


async def no_stream(peer, stream):
    raise AssertionError("no stream may open here")


async def test_hostile_signals_are_refused_and_nothing_else_breaks():
    a_id, b_id, c_id, stranger = (Identity.generate() for _ in range(4))
    a, b = a_id.device_id, b_id.device_id
    async with relay() as url, client(url, a_id, trusts=[b_id]) as a_relay, \
            client(url, b_id, trusts=[a_id]) as b_relay, client(url, stranger) as s_relay:
        byes: asyncio.Queue = asyncio.Queue()
        a_relay.on_signal = lambda peer, data: byes.put_nowait(data)
        signalling = RtcSignalling(b_relay, b, lambda p: K if p == a else None, no_stream)
        try:
            key = signal_key(K)
            await s_relay.signal(b, seal(key, stranger.device_id, b, "offer", b"\x01" * 16,
                                         "sdp", time.time()))  # the relay drops it
            await a_relay.signal(b, {"garbage": True})
            await a_relay.signal(b, seal(signal_key(b"w" * 32), a, b, "offer", b"\x02" * 16,
                                         "sdp", time.time()))  # wrong K_pair
            await a_relay.signal(b, seal(key, a, c_id.device_id, "offer", b"\x03" * 16,
                                         "sdp", time.time()))  # for another device
            await a_relay.signal(b, seal(key, a, b, "answer", b"\x04" * 16, "sdp",
                                         time.time()))  # an answer to nothing
            await until(lambda: signalling.refused == 4)
            # a well-sealed offer whose SDP is not SDP: not answered, ended with a bye
            core = RtcSignaller(a, lambda p: K)
            attempt, offer = core.offer(b, "not an sdp", time.monotonic(), time.time())
            await a_relay.signal(b, offer)
            bye = await asyncio.wait_for(byes.get(), 10)
            assert isinstance(core.receive(b, bye, time.monotonic(), time.time()), Ended)
            await a_relay.signal(b, offer)  # replayed
            await until(lambda: signalling.refused == 5)
            assert signalling.core.attempts == {}
            assert b_relay.connected and a_relay.connected  # nothing else broke
        finally:
            await signalling.close()


async def test_an_unanswered_offer_fails_at_its_deadline_and_says_bye(monkeypatch):
    monkeypatch.setattr(rtc_signal, "ATTEMPT_DEADLINE", 3.0)  # not 10 s of a test's time
    await load_aiortc()  # its first import is not what this test times
    a_id, b_id = Identity.generate(), Identity.generate()
    a, b = a_id.device_id, b_id.device_id
    async with relay() as url, client(url, a_id, trusts=[b_id]) as a_relay, \
            client(url, b_id, trusts=[a_id]) as b_relay:
        got: asyncio.Queue = asyncio.Queue()
        b_relay.on_signal = lambda peer, data: got.put_nowait(data)  # reads, never answers
        signalling = RtcSignalling(a_relay, a, lambda p: K if p == b else None, no_stream)
        core = RtcSignaller(b, lambda p: K)
        try:
            started = time.monotonic()
            task = asyncio.ensure_future(signalling.connect(b))
            offer = await asyncio.wait_for(got.get(), 10)
            offered = core.receive(a, offer, 0.0, time.time())  # (B's own deadline: unused)
            assert offered.sdp.startswith("v=0")
            assert "a=end-of-candidates" in offered.sdp  # no trickle: one offer is all
            with pytest.raises(WebRtcFailed, match="no answer"):
                await asyncio.wait_for(task, 10)
            assert 2.9 < time.monotonic() - started < 5
            bye = await asyncio.wait_for(got.get(), 5)
            assert isinstance(core.receive(a, bye, 0.1, time.time()), Ended)
            assert signalling.core.attempts == {}
        finally:
            await signalling.close()
