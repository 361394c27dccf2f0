"""The node's side of a relay: one control connection, invitations, splices.

`RelayClient.run()` keeps the control connection up (reconnecting with backoff),
logs in by signing the relay URL and nonce with the device key, and hands each
invitation to `should_accept(device_id)` — the node accepts only trusted devices.
`connect(peer)` asks the relay for a session and returns the splice as a
`SpliceStream` once both sides are in; the devices then run admission and pinned
mutual TLS over it, so the relay carries only ciphertext.
The URL is made canonical (`p2pgate.urls`) before it is signed, as the relay does
before it checks; a refused login is logged once per reason with its fix
(`refusals`), and `set_token` hands over a new access token and logs in again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from p2pgate.errors import P2PGateError
from p2pgate.identity import Identity
from p2pgate.identity.deviceid import DeviceID
from p2pgate.relay.access_tokens import token_expiry
from p2pgate.relay.auth import login_message
from p2pgate.relay.refusals import RefusalNotes, refusal_advice
from p2pgate.stream import StreamClosed
from p2pgate.supervisor import Supervisor
from p2pgate.urls import canonical_relay_url

__all__ = ["RelayClient", "RelayError", "RelayRefused", "RelayUnavailable", "SpliceStream"]

log = logging.getLogger("p2pgate.relay.client")

ANSWER_TIMEOUT = 15.0


class RelayError(P2PGateError):
    """The relay refused us or broke its protocol."""


class RelayRefused(RelayError):
    """The relay refused our login; `reason` is its short word for why."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"relay {url} refused us: {reason}")
        self.reason = reason


class RelayUnavailable(RelayError):
    """The relay could not give us a session to that device (absent or refusing)."""


@contextlib.asynccontextmanager
async def _relay_errors(url: str, error: type[RelayError] = RelayUnavailable
                        ) -> AsyncIterator[None]:
    """The boundary: aiohttp, socket and timeout errors (and undecodable answers) become
    `error`."""
    try:
        yield
    except (aiohttp.ClientError, aiohttp.WSMessageTypeError, OSError, ValueError) as exc:
        # (TimeoutError is an OSError; an undecodable JSON answer a ValueError)
        raise error(f"relay {url}: {exc or type(exc).__name__}") from None


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
        """Send `data` as one binary frame; StreamClosed if the splice is gone."""
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
        """Close the WebSocket and the HTTP client session it belongs to."""
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            await self._ws.close()
        await self._session.close()


async def _spliced(relay_url: str, path: str, first: dict[str, str], wait: float,
                   failure: str, peer: DeviceID | None, max_msg_size: int = 4 << 20
                   ) -> SpliceStream:
    """A splice WebSocket that sent `first` and heard "spliced" within `wait` seconds,
    or RelayUnavailable(`failure`), with everything it opened closed."""
    session = aiohttp.ClientSession()
    ws: aiohttp.ClientWebSocketResponse | None = None
    try:
        async with _relay_errors(relay_url):
            ws = await session.ws_connect(relay_url + path, heartbeat=30,
                                          max_msg_size=max_msg_size)
            await ws.send_json(first)
            if not _says_spliced(await ws.receive(timeout=wait)):
                raise RelayUnavailable(failure)
    except BaseException:
        if ws is not None:
            await ws.close()
        await session.close()
        raise
    return SpliceStream(ws, session, peer, relay_url)


def _says_spliced(msg: aiohttp.WSMessage) -> bool:
    if msg.type != aiohttp.WSMsgType.TEXT:
        return False
    data = json.loads(msg.data)
    return isinstance(data, dict) and data.get("t") == "spliced"


async def _receive_object(ws: aiohttp.ClientWebSocketResponse, url: str) -> dict[str, Any]:
    data = await ws.receive_json(timeout=10)
    if not isinstance(data, dict):
        raise RelayError(f"relay {url}: the answer is not a JSON object")
    return data


class RelayClient:
    """A node's client for one relay: control connection, invitations, splices."""

    def __init__(self, url: str, identity: Identity,
                 should_accept: Callable[[DeviceID], Awaitable[bool]],
                 on_session: Callable[[SpliceStream], Awaitable[None]],
                 token: str | None = None) -> None:
        try:
            self.url = canonical_relay_url(url)
        except ValueError:  # a peer's relay we cannot parse: dialing it will fail
            self.url = url.rstrip("/")
        self._identity = identity
        self._should_accept = should_accept
        self._on_session = on_session
        self._token = token
        self._notes = RefusalNotes()
        self._wake = asyncio.Event()  # ends a backoff early (a new token was handed over)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._connected = asyncio.Event()
        self._requests: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._req_ids = itertools.count(1)
        self._tasks = Supervisor(logger=log)
        self.observed_address: str | None = None
        self.on_connected: Callable[[], None] | None = None
        self.on_refused: Callable[[str], None] | None = None  # the relay refused our login
        # signalling between trusted devices (for WebRTC later); others are dropped
        self.on_signal: Callable[[DeviceID, Any], None] | None = None

    @property
    def connected(self) -> bool:
        """Whether a control connection is logged in right now."""
        return self._connected.is_set()

    @property
    def refusal(self) -> str | None:
        """The reason of the relay's latest refusal since we were last logged in."""
        return self._notes.last

    @property
    def token_expires_at(self) -> int | None:
        """When our access token expires (its unverified `exp`), or None."""
        return token_expiry(self._token) if self._token else None

    async def set_token(self, token: str) -> None:
        """Use access token `token` from now on: log in again with it at once."""
        self._token = token
        self._notes.logged_in()  # a refusal of the new token is news
        self._wake.set()
        if self._ws is not None:
            await self._ws.close()

    async def wait_connected(self) -> None:
        """Wait until a control connection is logged in."""
        await self._connected.wait()

    async def run(self, min_backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        """Keep a logged-in control connection until cancelled: every failure is logged
        and followed by a reconnect after a jittered, doubling backoff."""
        backoff = min_backoff
        async with aiohttp.ClientSession() as session:
            self._session = session
            try:
                while True:
                    started = time.monotonic()
                    try:
                        await self._control(session)
                    except RelayRefused as exc:
                        self._log_refusal(exc.reason)
                    except RelayError as exc:  # its message names the relay
                        log.info("%s", exc)
                    except Exception:  # noqa: BLE001 (a bug: log it, keep the node reachable)
                        log.exception("relay %s: unexpected failure", self.url)
                    finally:
                        self._lost()
                    if time.monotonic() - started > 10 or self._wake.is_set():
                        backoff = min_backoff
                    await self._pause(backoff * random.uniform(0.8, 1.2))  # noqa: S311
                    backoff = min(max_backoff, backoff * 2)
            finally:
                await self._tasks.stop()

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if `set_token` wakes us."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # not wait_for: 3.11's can swallow a cancel
                await self._wake.wait()
        self._wake.clear()

    def _log_refusal(self, reason: str) -> None:
        """The first refusal for a reason is a warning with its fix; repeats are debug."""
        level = logging.WARNING if self._notes.refused(reason) else logging.DEBUG
        log.log(level, "%s", refusal_advice(reason, self.url, self._identity.device_id))
        if self.on_refused is not None:
            self.on_refused(reason)

    def _lost(self) -> None:
        self._connected.clear()
        self._ws = None
        for fut in self._requests.values():
            if not fut.done():
                fut.set_exception(RelayUnavailable("relay connection lost"))

    async def _control(self, session: aiohttp.ClientSession) -> None:
        """One control connection, from login until it closes (RelayError on failure)."""
        async with _relay_errors(self.url, RelayError), \
                session.ws_connect(self.url + "/v1/control", heartbeat=30) as ws:
            hello = await _receive_object(ws, self.url)
            if hello.get("t") != "hello" or "nonce" not in hello:
                raise RelayError(f"relay {self.url} did not say hello")
            await ws.send_json(login_message(self._identity.cert_der, self._identity.sign,
                                             self.url, str(hello["nonce"]), time.time(),
                                             self._token))
            welcome = await _receive_object(ws, self.url)
            if welcome.get("t") != "welcome":
                raise RelayRefused(self.url, str(welcome.get("reason", "?"))[:64])
            self._notes.logged_in()
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
        try:
            self._dispatch(data)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise RelayError(f"relay {self.url} sent a bad message: {exc!r}") from None

    def _dispatch(self, data: dict[str, Any]) -> None:
        kind = data.get("t")
        if kind in ("ready", "unavailable") and "req" in data:
            fut = self._requests.pop(int(data["req"]), None)
            if fut is not None and not fut.done():
                fut.set_result(data)
        elif kind == "invite":
            self._tasks.fire("relay invitation",
                             self._invited(str(data["sid"]), DeviceID.parse(str(data["from"]))))
        elif kind == "ready":
            self._tasks.fire("relayed session", self._join(
                str(data["sid"]), str(data["key"]), DeviceID.parse(str(data["peer"]))))
        elif kind == "signal":
            self._tasks.fire("relay signal", self._signalled(DeviceID.parse(str(data["from"])),
                                                             data.get("data")))

    async def _invited(self, sid: str, peer: DeviceID) -> None:
        accept = await self._should_accept(peer)
        if self._ws is not None:
            async with _relay_errors(self.url, RelayError):
                await self._ws.send_json({"t": "accept" if accept else "refuse", "sid": sid})

    async def _signalled(self, peer: DeviceID, data: Any) -> None:
        if self.on_signal is not None and await self._should_accept(peer):
            self.on_signal(peer, data)

    async def _join(self, sid: str, key: str, peer: DeviceID) -> None:
        try:
            stream = await self._open_splice(sid, key, peer)
        except RelayError as exc:
            log.info("relay %s: splice from %s failed: %s", self.url, peer.short, exc)
            return
        await self._on_session(stream)

    async def _open_splice(self, sid: str, key: str, peer: DeviceID) -> SpliceStream:
        return await _spliced(self.url, "/v1/splice", {"sid": sid, "key": key}, 35,
                              "the other side never joined the splice", peer, max_msg_size=0)

    async def connect(self, peer: DeviceID) -> SpliceStream:
        """A relayed stream to `peer`, or RelayUnavailable."""
        if self._ws is None:
            raise RelayUnavailable(f"not connected to relay {self.url}")
        req = next(self._req_ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._requests[req] = fut
        try:
            async with _relay_errors(self.url):
                await self._ws.send_json({"t": "connect", "req": req, "to": str(peer)})
                async with asyncio.timeout(ANSWER_TIMEOUT):
                    answer = await fut
        finally:
            self._requests.pop(req, None)
        if answer["t"] != "ready" or "sid" not in answer or "key" not in answer:
            raise RelayUnavailable(f"device {peer.short} is not reachable through {self.url}")
        return await self._open_splice(str(answer["sid"]), str(answer["key"]), peer)

    async def signal(self, peer: DeviceID, data: Any) -> None:
        """Send signalling `data` to `peer` through the relay (dropped unless it trusts us)."""
        if self._ws is not None:
            async with _relay_errors(self.url, RelayError):
                await self._ws.send_json({"t": "signal", "to": str(peer), "data": data})
