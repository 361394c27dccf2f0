"""The node's side of a relay: one control connection, invitations, splices.

`RelayClient.run()` keeps the control connection up (reconnecting with backoff),
logs in by signing the relay URL and nonce with the device key, and hands each
invitation to `should_accept(device_id)` — the node accepts only trusted devices.
`connect(peer)` asks the relay for a session and returns the splice as a
`SpliceStream` once both sides are in; the devices then run admission and pinned
mutual TLS over it, so the relay carries only ciphertext.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from p2pgate.errors import P2PGateError
from p2pgate.identity import Identity
from p2pgate.identity.deviceid import DeviceID
from p2pgate.relay.server import auth_payload
from p2pgate.stream import StreamClosed

__all__ = ["RelayClient", "RelayError", "RelayUnavailable", "SpliceStream", "open_mailbox"]

log = logging.getLogger("p2pgate.relay.client")

ANSWER_TIMEOUT = 15.0


class RelayError(P2PGateError):
    """The relay refused us or broke its protocol."""


class RelayUnavailable(RelayError):
    """The relay could not give us a session to that device (absent or refusing)."""


class SpliceStream:
    """A relayed byte pipe: binary WebSocket frames through the relay."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession,
                 peer: DeviceID | None, relay_url: str | None = None) -> None:
        self._ws = ws
        self._session = session
        self.peer = peer
        self._buffer = bytearray()
        self.path = "relay"
        self.remote_address: str | None = relay_url

    async def write(self, data: bytes) -> None:
        try:
            await self._ws.send_bytes(bytes(data))
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise StreamClosed(f"relay splice closed: {exc}") from None

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Up to max_bytes; b"" at end of stream."""
        if not self._buffer:
            try:
                msg = await self._ws.receive()
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise StreamClosed(f"relay splice closed: {exc}") from None
            if msg.type != aiohttp.WSMsgType.BINARY:
                return b""
            self._buffer.extend(msg.data)
        data = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        return data

    async def close(self) -> None:
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            await self._ws.close()
        await self._session.close()


async def open_mailbox(url: str, box: str, role: str, wait: float) -> SpliceStream:
    """A stream to whoever opens the same pairing mailbox on the relay at `url` (the
    inviter waits up to `wait` seconds; a joiner finding nobody gets RelayUnavailable)."""
    session = aiohttp.ClientSession()
    try:
        ws = await session.ws_connect(url.rstrip("/") + "/v1/mailbox", heartbeat=30)
        await ws.send_json({"box": box, "role": role})
        answer = await ws.receive(timeout=wait)
        if answer.type != aiohttp.WSMsgType.TEXT or json.loads(answer.data).get("t") != "spliced":
            raise RelayUnavailable(f"nobody is waiting with this code at {url}")
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        await session.close()
        raise RelayUnavailable(f"relay {url}: {exc or type(exc).__name__}") from None
    except BaseException:
        await session.close()
        raise
    return SpliceStream(ws, session, None, url.rstrip("/"))


class RelayClient:
    def __init__(self, url: str, identity: Identity,
                 should_accept: Callable[[DeviceID], Awaitable[bool]],
                 on_session: Callable[[SpliceStream], Awaitable[None]],
                 token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self._identity = identity
        self._should_accept = should_accept
        self._on_session = on_session
        self._token = token
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._connected = asyncio.Event()
        self._requests: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._req_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.observed_address: str | None = None
        self.on_connected: Callable[[], None] | None = None
        # signalling between trusted devices (for WebRTC later); others are dropped
        self.on_signal: Callable[[DeviceID, Any], None] | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def run(self, min_backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        """Keep a logged-in control connection until cancelled."""
        backoff = min_backoff
        async with aiohttp.ClientSession() as session:
            self._session = session
            try:
                while True:
                    started = time.monotonic()
                    try:
                        await self._control(session)
                    except (aiohttp.ClientError, OSError, RelayError, ValueError) as exc:
                        log.info("relay %s: %s", self.url, exc)
                    finally:
                        self._connected.clear()
                        self._ws = None
                        for fut in self._requests.values():
                            if not fut.done():
                                fut.set_exception(RelayUnavailable("relay connection lost"))
                    if time.monotonic() - started > 10:
                        backoff = min_backoff
                    await asyncio.sleep(backoff * random.uniform(0.8, 1.2))  # noqa: S311
                    backoff = min(max_backoff, backoff * 2)
            finally:
                for task in list(self._tasks):
                    task.cancel()
                for task in list(self._tasks):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    async def _control(self, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(self.url + "/v1/control", heartbeat=30) as ws:
            hello = await ws.receive_json(timeout=10)
            if hello.get("t") != "hello":
                raise RelayError("relay did not say hello")
            stamp = int(time.time())
            payload = auth_payload(self.url, str(hello["nonce"]), stamp)
            await ws.send_json({
                "t": "auth", "cert": base64.b64encode(self._identity.cert_der).decode(),
                "time": stamp, "sig": base64.b64encode(self._identity.sign(payload)).decode(),
                "token": self._token,
            })
            welcome = await ws.receive_json(timeout=10)
            if welcome.get("t") != "welcome":
                raise RelayError(f"relay refused us: {welcome.get('reason', 'unknown')}")
            self.observed_address = welcome.get("observed")
            self._ws = ws
            self._connected.set()
            if self.on_connected is not None:
                self.on_connected()
            log.info("relay %s: connected (we are %s)", self.url, self.observed_address)
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                self._on_message(json.loads(msg.data))

    def _on_message(self, data: dict[str, Any]) -> None:
        kind = data.get("t")
        if kind in ("ready", "unavailable") and "req" in data:
            fut = self._requests.pop(int(data["req"]), None)
            if fut is not None and not fut.done():
                fut.set_result(data)
        elif kind == "invite":
            self._spawn(self._invited(str(data["sid"]), DeviceID.parse(str(data["from"]))))
        elif kind == "ready":
            self._spawn(self._join(str(data["sid"]), str(data["key"]),
                                   DeviceID.parse(str(data["peer"]))))
        elif kind == "signal":
            self._spawn(self._signalled(DeviceID.parse(str(data["from"])), data.get("data")))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _invited(self, sid: str, peer: DeviceID) -> None:
        accept = await self._should_accept(peer)
        if self._ws is not None:
            await self._ws.send_json({"t": "accept" if accept else "refuse", "sid": sid})

    async def _signalled(self, peer: DeviceID, data: Any) -> None:
        if self.on_signal is not None and await self._should_accept(peer):
            self.on_signal(peer, data)

    async def _join(self, sid: str, key: str, peer: DeviceID) -> None:
        stream = await self._open_splice(sid, key, peer)
        await self._on_session(stream)

    async def _open_splice(self, sid: str, key: str, peer: DeviceID) -> SpliceStream:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(self.url + "/v1/splice", heartbeat=30,
                                          max_msg_size=0)
            await ws.send_json({"sid": sid, "key": key})
            spliced = await ws.receive(timeout=35)
            if spliced.type != aiohttp.WSMsgType.TEXT:
                raise RelayUnavailable("the other side never joined the splice")
        except BaseException:
            await session.close()
            raise
        return SpliceStream(ws, session, peer, self.url)

    async def connect(self, peer: DeviceID) -> SpliceStream:
        """A relayed stream to `peer`, or RelayUnavailable."""
        if self._ws is None:
            raise RelayUnavailable(f"not connected to relay {self.url}")
        req = next(self._req_ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._requests[req] = fut
        await self._ws.send_json({"t": "connect", "req": req, "to": str(peer)})
        try:
            answer = await asyncio.wait_for(fut, ANSWER_TIMEOUT)
        finally:
            self._requests.pop(req, None)
        if answer["t"] != "ready":
            raise RelayUnavailable(f"device {peer.short} is not reachable through {self.url}")
        return await self._open_splice(str(answer["sid"]), str(answer["key"]), peer)

    async def signal(self, peer: DeviceID, data: Any) -> None:
        if self._ws is not None:
            await self._ws.send_json({"t": "signal", "to": str(peer), "data": data})
