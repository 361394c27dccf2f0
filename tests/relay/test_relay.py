"""The relay server and the node's relay client, in one process over loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import time

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pgate.identity import Identity
from p2pgate.relay.access_tokens import issue_token, key_id, public_key_text
from p2pgate.relay.auth import auth_payload
from p2pgate.relay.broker import Broker
from p2pgate.relay.client import RelayClient, RelayUnavailable
from p2pgate.relay.config import RelayConfig
from p2pgate.relay.mailbox_client import join_box
from p2pgate.relay.server import RelayServer


class Relay:
    def __init__(self, server: RelayServer, url: str):
        self.server, self.url = server, url


@contextlib.asynccontextmanager
async def relay(**settings):
    server = RelayServer(RelayConfig(**{"listen": ("127.0.0.1", 0), "unavailable_delay": 0.4,
                                        **settings}))
    runner = web.AppRunner(server.application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield Relay(server, f"ws://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def device(url, identity=None, *, trusts=(), token=None):
    identity = identity or Identity.generate()
    sessions: asyncio.Queue = asyncio.Queue()
    trusted = {t.device_id for t in trusts}

    async def should_accept(peer):
        return peer in trusted

    client = RelayClient(url, identity, should_accept, sessions.put, token=token)
    task = asyncio.ensure_future(client.run(min_backoff=0.05, max_backoff=0.2))
    try:
        yield client, identity, sessions
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        while not sessions.empty():
            await sessions.get_nowait().close()


async def test_splice_carries_bytes_both_ways_and_counts_them():
    a_id, b_id = Identity.generate(), Identity.generate()
    async with relay() as r, device(r.url, a_id, trusts=[b_id]) as (a, _, _), \
            device(r.url, b_id, trusts=[a_id]) as (b, _, b_sessions):
        await asyncio.wait_for(a.wait_connected(), 5)
        await asyncio.wait_for(b.wait_connected(), 5)
        assert a.observed_address.startswith("127.0.0.1")
        stream_a = await a.connect(b_id.device_id)
        stream_b = await asyncio.wait_for(b_sessions.get(), 5)
        assert stream_b.peer == a_id.device_id
        await stream_a.write(b"ping" * 1000)
        got = b""
        while len(got) < 4000:
            got += await stream_b.read()
        assert got == b"ping" * 1000
        await stream_b.write(b"pong")
        assert await stream_a.read() == b"pong"
        assert r.server.broker.sessions == 1
        assert r.server.metrics.value("bytes_total") == 4004
        await stream_a.close()
        await stream_b.close()


async def test_absent_and_refusing_devices_look_the_same():
    """Same answer through a real relay (that it comes at the same deadline is the
    broker core's test, with time passed in)."""
    a_id, b_id, stranger = Identity.generate(), Identity.generate(), Identity.generate()
    async with relay() as r, device(r.url, a_id) as (a, _, _), \
            device(r.url, b_id, trusts=[]) as (b, _, _):
        await asyncio.wait_for(a.wait_connected(), 5)
        await asyncio.wait_for(b.wait_connected(), 5)
        answers = {}
        for name, target in (("refusing", b_id.device_id), ("absent", stranger.device_id)):
            with pytest.raises(RelayUnavailable) as err:
                await a.connect(target)
            answers[name] = str(err.value).split(" is ")[1]
        assert answers["refusing"] == answers["absent"]


async def test_allowlist_and_tokens_are_enforced_with_reasons_in_metrics():
    listed, unlisted = Identity.generate(), Identity.generate()
    async with relay(access="allowlist", allowlist=(str(listed.device_id),)) as r:
        async with device(r.url, listed) as (ok, _, _):
            await asyncio.wait_for(ok.wait_connected(), 5)
        async with device(r.url, unlisted) as (bad, _, _):
            await asyncio.sleep(0.5)
            assert not bad.connected
        assert r.server.metrics.value("auth_failures_total", reason="not_allowed") >= 1

    signer = Ed25519PrivateKey.generate()
    keys = {key_id(signer.public_key()): public_key_text(signer.public_key())}
    dev = Identity.generate()
    now = time.time()
    cases = {
        "ok": issue_token(signer, dev.device_id, "fleet", 3600, now),
        "token_expired": issue_token(signer, dev.device_id, "fleet", 10, now - 1000),
        "token_wrong_audience": issue_token(signer, dev.device_id, "other", 3600, now),
        "token_malformed": "not-a-token",
    }
    async with relay(access="token", token_keys=keys, audience="fleet") as r:
        for reason, token in cases.items():
            async with device(r.url, dev, token=token) as (client, _, _):
                if reason == "ok":
                    await asyncio.wait_for(client.wait_connected(), 5)
                else:
                    await asyncio.sleep(0.4)
                    assert not client.connected
                    assert r.server.metrics.value("auth_failures_total", reason=reason) >= 1


async def test_auth_bound_to_relay_url_and_bad_signature_refused():
    async with relay() as r:
        ident = Identity.generate()
        async with aiohttp.ClientSession() as s, s.ws_connect(r.url + "/v1/control") as ws:
            hello = await ws.receive_json()
            stamp = int(time.time())
            relay_key = base64.urlsafe_b64decode(hello["relay_key"] + "=")
            wrong_url = auth_payload("ws://other-relay:1", relay_key, hello["nonce"], stamp)
            await ws.send_json({"t": "auth", "cert": base64.b64encode(ident.cert_der).decode(),
                                "time": stamp,
                                "sig": base64.b64encode(ident.sign(wrong_url)).decode()})
            answer = await ws.receive_json()
            assert answer == {"t": "error", "reason": "bad_signature"}
        assert r.server.metrics.value("auth_failures_total", reason="bad_signature") == 1


async def test_malformed_control_frames_close_only_that_connection():
    a_id, b_id = Identity.generate(), Identity.generate()
    async with relay() as r, device(r.url, a_id, trusts=[b_id]) as (a, _, _), \
            device(r.url, b_id, trusts=[a_id]) as (b, _, b_sessions):
        await asyncio.wait_for(a.wait_connected(), 5)
        await asyncio.wait_for(b.wait_connected(), 5)
        async with aiohttp.ClientSession() as s, s.ws_connect(r.url + "/v1/control") as ws:
            await ws.receive_json()
            await ws.send_bytes(b"\xff\x00garbage")
            msg = await ws.receive()
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.TEXT)
        stream = await a.connect(b_id.device_id)
        other = await asyncio.wait_for(b_sessions.get(), 5)
        await stream.write(b"still works")
        assert await other.read() == b"still works"
        await stream.close()
        await other.close()


async def test_per_ip_connection_limit():
    async with relay(max_connections_per_ip=2, accept_rate_per_ip=1000) as r:
        async with aiohttp.ClientSession() as s:
            open_ws = [await s.ws_connect(r.url + "/v1/control") for _ in range(2)]
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await s.ws_connect(r.url + "/v1/control")
            assert err.value.status == 403
            for ws in open_ws:
                await ws.close()
        assert r.server.metrics.value("refusals_total", reason="ip_connections") == 1


async def test_health_and_metrics_endpoints():
    async with relay() as r, aiohttp.ClientSession() as s:
        http = r.url.replace("ws://", "http://")
        async with s.get(http + "/health") as resp:
            assert (await resp.json())["status"] == "ok"
        async with s.get(http + "/metrics") as resp:
            text = await resp.text()
        assert "# TYPE p2pgate_relay_connections gauge" in text
        assert "p2pgate_relay_bytes_total 0" in text


def test_broker_limits_sessions_and_answers_at_the_deadline():
    a, b = Identity.generate().device_id, Identity.generate().device_id
    broker = Broker(unavailable_delay=1.0, invite_rate=100, max_sessions_per_device=1)
    broker.attach(a)
    broker.attach(b)
    [invite] = broker.request(a, b, 1, now=0.0)
    ready = broker.answer(b, str(invite.message["sid"]), True, now=0.0)
    assert {s.to for s in ready} == {a, b}
    assert broker.sessions == 1
    assert broker.request(a, b, 2, now=0.1) == []  # over the session limit: no invitation
    assert broker.handle_timer(0.5) == []
    [late] = broker.handle_timer(1.1)
    assert late.message == {"t": "unavailable", "req": 2}
    broker.close_session(str(invite.message["sid"]))
    assert broker.sessions == 0


async def _spliced(r, a_id, b_id):
    """(client a, stream a→b, stream b→a) for two devices on relay `r`."""
    stack = contextlib.AsyncExitStack()
    a, _, _ = await stack.enter_async_context(device(r.url, a_id, trusts=[b_id]))
    b, _, b_sessions = await stack.enter_async_context(device(r.url, b_id, trusts=[a_id]))
    await asyncio.wait_for(a.wait_connected(), 5)
    await asyncio.wait_for(b.wait_connected(), 5)
    stream_a = await a.connect(b_id.device_id)
    stream_b = await asyncio.wait_for(b_sessions.get(), 5)
    stack.push_async_callback(stream_a.close)
    stack.push_async_callback(stream_b.close)
    return stack, stream_a, stream_b


async def _transfer(src, dst, total, chunk=16 << 10):
    """Move `total` bytes from src to dst."""
    async def write():
        for _ in range(total // chunk):
            await src.write(b"x" * chunk)

    writer = asyncio.ensure_future(write())
    got = 0
    while got < total:
        got += len(await dst.read())
    await writer


async def test_the_splice_is_paced_by_the_session_rate_and_only_then():
    """The rate itself holds in the Throughput core's tests (time passed in); here the
    splice asks the meter and waits what it says: 2 s worth past the burst allowance."""
    rate = 256 << 10
    for limit, paced in ((rate, True), (16 * rate, False)):  # 16 x: all within the burst
        async with relay(session_rate=limit) as r:
            stack, a, b = await _spliced(r, Identity.generate(), Identity.generate())
            async with stack:
                await _transfer(a, b, rate // 4)  # the burst allowance is spent
                await _transfer(a, b, rate * 2)
            waited = r.server.metrics.value("paced_seconds_total")
            assert (waited > 1.0) is paced, waited
            assert r.server.metrics.value("bytes_total") >= rate * 2 + rate // 4


async def test_a_session_moves_its_bytes_while_another_floods():
    """Two splices share the relay at once (that a flood starves nobody is the
    Throughput core's test, with time passed in)."""
    rate = 512 << 10
    async with relay(session_rate=rate, global_rate=8 * rate) as r:
        stack, a, b = await _spliced(r, Identity.generate(), Identity.generate())
        async with stack:
            await _transfer(a, b, rate // 4)
            flood_stack, fa, fb = await _spliced(r, Identity.generate(), Identity.generate())
            async with flood_stack:
                async def flood():
                    while True:
                        await fa.write(b"f" * (64 << 10))

                async def drain():
                    while await fb.read():
                        pass

                flooding = [asyncio.ensure_future(flood()), asyncio.ensure_future(drain())]
                try:
                    await asyncio.wait_for(_transfer(a, b, rate // 2), 30)
                finally:
                    for task in flooding:
                        task.cancel()
                    await asyncio.gather(*flooding, return_exceptions=True)
        assert r.server.metrics.value("bytes_total") >= rate // 4 + rate // 2 + (64 << 10)


async def test_signalling_reaches_trusted_devices_only():
    a_id, b_id, stranger_id = Identity.generate(), Identity.generate(), Identity.generate()
    got: asyncio.Queue = asyncio.Queue()
    async with relay() as r, device(r.url, a_id) as (a, _, _), \
            device(r.url, b_id, trusts=[a_id]) as (b, _, _), \
            device(r.url, stranger_id) as (stranger, _, _):
        b.on_signal = lambda peer, data: got.put_nowait((peer, data))
        for client in (a, b, stranger):
            await asyncio.wait_for(client.wait_connected(), 5)
        await stranger.signal(b_id.device_id, {"sdp": "from a stranger"})
        await a.signal(b_id.device_id, {"sdp": "offer"})
        assert await asyncio.wait_for(got.get(), 5) == (a_id.device_id, {"sdp": "offer"})
        await asyncio.sleep(0.2)
        assert got.empty()  # the stranger's signal was dropped


async def test_malformed_mailbox_and_splice_requests_are_counted():
    async with relay() as r, aiohttp.ClientSession() as s:
        for path, first in (("/v1/mailbox", {"box": "short", "role": "inviter"}),
                            ("/v1/splice", {"sid": "x"}), ("/v1/mailbox", ["not", "a", "dict"])):
            async with s.ws_connect(r.url + path) as ws:
                await ws.send_json(first)
                msg = await ws.receive()
                if path == "/v1/mailbox":  # the mailbox says hello first
                    msg = await ws.receive()
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert r.server.metrics.value("refusals_total", reason="malformed") == 3
        async with s.ws_connect(r.url + "/v1/splice") as ws:
            await ws.send_json({"sid": "x", "key": "y"})
            await ws.receive()
        assert r.server.metrics.value("refusals_total", reason="bad_splice_key") == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_client_failures_surface_as_relay_errors_and_the_loop_keeps_trying(caplog):
    url = f"ws://127.0.0.1:{_closed_port()}"
    with pytest.raises(RelayUnavailable):
        await join_box(url, Identity.generate(), None, nameplate=1)
    caplog.set_level(logging.INFO, "p2pgate.relay.client")
    async with device(url) as (client, _, _):
        with pytest.raises(RelayUnavailable):
            await client.connect(Identity.generate().device_id)
        for _ in range(500):
            failures = [r for r in caplog.records if r.getMessage().startswith(f"relay {url}")]
            if len(failures) >= 3:
                break
            await asyncio.sleep(0.01)
        assert len(failures) >= 3  # logged, and tried again each time
        assert not client.connected


async def test_a_pending_request_fails_with_relay_unavailable_when_the_relay_goes():
    a_id = Identity.generate()
    relay_up = contextlib.AsyncExitStack()
    r = await relay_up.enter_async_context(relay(unavailable_delay=30))
    async with device(r.url, a_id) as (a, _, _):
        await asyncio.wait_for(a.wait_connected(), 5)
        pending = asyncio.ensure_future(a.connect(Identity.generate().device_id))
        for _ in range(500):  # until the relay holds the request
            if r.server.broker.get_timer() is not None:
                break
            await asyncio.sleep(0.01)
        await relay_up.aclose()
        with pytest.raises(RelayUnavailable):
            await asyncio.wait_for(pending, 5)
