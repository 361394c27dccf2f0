"""Attackers for the relay tests: a raw logged-in device and a hostile relay.

`logged_in` is a device that speaks the control protocol by hand (raw WebSocket), so
it can send what no RelayClient would. `hostile_relay` is an aiohttp server that
logs any device in and then runs a script against it (the node's client is the
target), serving `/v1/splice` so that every splice the client opens is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from p2pgate.identity import Identity
from p2pgate.relay.auth import check_relay_proof, login_message, relay_hello
from p2pgate.relay.relay_key import RelayKey


@contextlib.asynccontextmanager
async def logged_in(url: str, identity: Identity | None = None, *, autoping: bool = True
                    ) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A raw control WebSocket logged in as `identity` (a new device by default)."""
    identity = identity or Identity.generate()
    challenge = "c" * 32
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(f"{url}/v1/control?challenge={challenge}",
                               autoping=autoping) as ws:
        hello = await ws.receive_json(timeout=5)
        relay_key = check_relay_proof(hello, challenge, None)
        await ws.send_json(login_message(identity.cert_der, identity.sign, url, relay_key,
                                         hello["nonce"], time.time(), None))
        welcome = await ws.receive_json(timeout=5)
        assert welcome["t"] == "welcome", welcome
        yield ws


class HostileRelay:
    """What the hostile relay saw: control connections and splices opened to it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.logins = 0
        self.splices = 0
        self.controls: asyncio.Queue[web.WebSocketResponse] = asyncio.Queue()


Script = Callable[[web.WebSocketResponse, HostileRelay], Awaitable[None]]
SpliceScript = Callable[[web.WebSocketResponse], Awaitable[None]]


async def _hold(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass


@contextlib.asynccontextmanager
async def hostile_relay(script: Script, splice: SpliceScript = _hold
                        ) -> AsyncIterator[HostileRelay]:
    """A relay that welcomes any login, then runs `script` on the control connection
    (it is closed when the script returns); splices run `splice` after "spliced"."""
    state: list[HostileRelay] = []
    key = RelayKey.generate()  # it proves a key of its own: a relay without ?id= pinning

    async def control(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json(relay_hello("n" * 32, key.public_raw, key.sign,
                                       request.query.get("challenge")))
        await ws.receive(timeout=5)
        await ws.send_json({"t": "welcome", "device": "?", "observed": "127.0.0.1:1"})
        state[0].logins += 1
        await script(ws, state[0])
        await ws.close()
        return ws

    async def spliced(request: web.Request) -> web.WebSocketResponse:
        state[0].splices += 1
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await ws.receive(timeout=5)
        await ws.send_json({"t": "spliced"})
        await splice(ws)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/v1/control", control)
    app.router.add_get("/v1/splice", spliced)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.append(HostileRelay(f"ws://127.0.0.1:{port}"))
    try:
        yield state[0]
    finally:
        await runner.cleanup()


async def open_fds() -> int:
    """How many file descriptors this process has open."""
    return await asyncio.to_thread(lambda: len(os.listdir("/proc/self/fd")))
