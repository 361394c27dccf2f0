"""The node's side of a relay: one control connection, invitations, splices.

`RelayClient.run()` keeps the control connection up (reconnecting with backoff),
logs in (the relay first proves its key for our random challenge; with `?id=RELAYID`
in the URL it must be that relay's key, otherwise — plain URL — the key it shows is
taken, and on `wss://` TLS to a public CA is the check), signs the relay URL, the
relay's key and its nonce with the device key, and hands each
invitation to `should_accept(device_id)` — the node accepts only trusted devices.
`connect(peer)` asks the relay for a session and returns the splice as a
`SpliceStream` once both sides are in; the devices then run admission and pinned
mutual TLS over it, so the relay carries only ciphertext. The STUN address in the
welcome is probed (`stun_probe`) at each login; `stun_url()` is what WebRTC lists.
The client opens a splice only for a request it made or an invitation it accepted
(a relay's unsolicited `ready` is dropped), a bounded number at a time, and splice
frames are bounded (`SPLICE_MAX_MESSAGE`). Every message from the relay is decoded by
`wire` (a malformed one ends that control connection, which is opened again).
The URL is made canonical (`p2pgate.urls`) before it is signed, as the relay does
before it checks; a refused login is logged once per reason with its fix
(`refusals`), and `set_token` hands over a new access token and logs in again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from p2pgate.errors import P2PGateError, RemoteProtocolError
from p2pgate.identity import Identity
from p2pgate.identity.deviceid import DeviceID
from p2pgate.net.frames import DEFAULT_MAX_FRAME
from p2pgate.relay.access_tokens import token_expiry
from p2pgate.relay.auth import AuthRefused, RelayID, check_relay_proof, login_message
from p2pgate.relay.refusals import RefusalNotes, refusal_advice
from p2pgate.relay.stun_probe import ProbeResult, StunStatus
from p2pgate.relay.stun_prober import probe_stun
from p2pgate.relay.wire import (
    Invited,
    Ready,
    Signal,
    Unavailable,
    decode_relay_message,
    json_object,
)
from p2pgate.stream import StreamClosed
from p2pgate.supervisor import Supervisor
from p2pgate.urls import relay_base_url, relay_url_id

__all__ = ["RelayClient", "RelayError", "RelayRefused", "RelayUnavailable", "SpliceStream"]

log = logging.getLogger("p2pgate.relay.client")
_STUN_ADDRESS = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}")

ANSWER_TIMEOUT = 15.0
CONTROL_MAX_MESSAGE = 64 << 10  # the relay's largest message is a signal (8 KB of data)
# A splice frame is at most one session frame (DEFAULT_MAX_FRAME) with its TLS records'
# overhead (at most 256 bytes per 16 KiB record), plus slack; we send at most SPLICE_CHUNK.
SPLICE_MAX_MESSAGE = DEFAULT_MAX_FRAME + (DEFAULT_MAX_FRAME >> 6) + (64 << 10)
SPLICE_CHUNK = 64 << 10
MAX_ACCEPTED = 64  # invitations accepted and waiting for their `ready`
MAX_JOINING = 32  # splices being opened at once for accepted invitations


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
        """Send `data` in binary frames of at most SPLICE_CHUNK bytes; StreamClosed if
        the splice is gone."""
        view = memoryview(data)
        try:
            for start in range(0, len(view), SPLICE_CHUNK):
                await self._ws.send_bytes(bytes(view[start:start + SPLICE_CHUNK]))
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
    try:
        return json_object(msg.data).get("t") == "spliced"
    except RemoteProtocolError:
        return False


async def _receive_object(ws: aiohttp.ClientWebSocketResponse, url: str) -> dict[str, Any]:
    msg = await ws.receive(timeout=10)
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise RelayError(f"relay {url}: the connection closed during login")
    try:
        return json_object(msg.data)
    except RemoteProtocolError as exc:
        raise RelayError(f"relay {url}: {exc}") from None


class RelayClient:
    """A node's client for one relay: control connection, invitations, splices."""

    def __init__(self, url: str, identity: Identity,
                 should_accept: Callable[[DeviceID], Awaitable[bool]],
                 on_session: Callable[[SpliceStream], Awaitable[None]],
                 token: str | None = None) -> None:
        self.relay_id: RelayID | None = None  # pinned by the URL's ?id=
        self._unusable = False
        try:
            self.url = relay_base_url(url)  # the relay's name: dialed, signed, shown
            pinned = relay_url_id(url)
            self.relay_id = RelayID.parse(pinned) if pinned else None
        except ValueError:  # a peer's relay we cannot parse (or its pin): never dialed
            self.url, self._unusable = url.rstrip("/"), True
        self._identity = identity
        self._should_accept = should_accept
        self._on_session = on_session
        self._token = token
        self._notes = RefusalNotes()
        self._wake = asyncio.Event()  # ends a backoff early (a new token was handed over)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._connected = asyncio.Event()
        self._requests: dict[int, asyncio.Future[Ready | Unavailable]] = {}
        self._req_ids = itertools.count(1)
        # invitations accepted and awaiting their `ready`: sid -> (peer, when accepted)
        self._accepted: dict[str, tuple[DeviceID, float]] = {}
        self._joining = 0  # splices being opened for accepted invitations
        self.unsolicited = 0  # `ready` messages for nothing we asked for or accepted
        self._tasks = Supervisor(logger=log)
        self.observed_address: str | None = None
        self.stun_address: str | None = None  # the relay's STUN "HOST:PORT", from `welcome`
        self.stun = StunStatus()  # our last probe of it (WebRTC lists it only if it answered)
        self._stun_probe: asyncio.Task[None] | None = None
        self.on_stun: Callable[[], None] | None = None  # a probe ended
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
        if self._unusable:
            raise RelayError(f"relay {self.url[:200]}: not a relay URL")
        challenge = secrets.token_urlsafe(24)
        async with _relay_errors(self.url, RelayError), \
                session.ws_connect(f"{self.url}/v1/control?challenge={challenge}",
                                   heartbeat=30, max_msg_size=CONTROL_MAX_MESSAGE) as ws:
            hello = await _receive_object(ws, self.url)
            if hello.get("t") == "error":
                raise RelayRefused(self.url, str(hello.get("reason", "?"))[:64])
            if hello.get("t") != "hello" or "nonce" not in hello:
                raise RelayError(f"relay {self.url} did not say hello")
            try:
                relay_key = check_relay_proof(hello, challenge, self.relay_id)
            except AuthRefused as exc:
                raise RelayRefused(self.url, exc.reason) from None
            await ws.send_json(login_message(self._identity.cert_der, self._identity.sign,
                                             self.url, relay_key, str(hello["nonce"]),
                                             time.time(), self._token))
            welcome = await _receive_object(ws, self.url)
            if welcome.get("t") != "welcome":
                raise RelayRefused(self.url, str(welcome.get("reason", "?"))[:64])
            self._notes.logged_in()
            self.observed_address = welcome.get("observed")
            stun = welcome.get("stun")  # the relay's STUN "HOST:PORT" (for WebRTC), if any
            self.stun_address = stun if isinstance(stun, str) and _STUN_ADDRESS.fullmatch(
                stun) else None
            if self.stun_address != self.stun.address:
                self.stun = StunStatus(self.stun_address)
            self.stun.stale = True  # a new login: the path to it may have changed
            self.probe_stun_soon()
            self._ws = ws
            self._connected.set()
            if self.on_connected is not None:
                self.on_connected()
            log.info("relay %s: connected (we are %s)", self.url, self.observed_address)
            unsolicited = self.unsolicited
            try:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    self._on_message(msg.data)
            finally:
                self._accepted.clear()  # their `ready` can only come on this connection
                if self.unsolicited > unsolicited:
                    log.info("relay %s sent %d `ready` messages for no request of ours "
                             "(ignored)", self.url, self.unsolicited - unsolicited)

    def probe_stun_soon(self) -> None:
        """Probe the relay's STUN port in the background (unless a probe is under way)."""
        if self.stun.address is not None and (self._stun_probe is None
                                              or self._stun_probe.done()):
            self._stun_probe = self._tasks.fire("STUN probe", self._probe_stun(self.stun))

    def network_changed(self) -> None:
        """Our addresses changed: probe STUN again (before the next WebRTC attempt)."""
        self.stun.stale = True
        if self.connected:
            self.probe_stun_soon()

    async def stun_url(self) -> str | None:
        """The `stun:` URL for a WebRTC attempt now, or None if its last probe failed;
        waits for a probe under way, or probes first if the last result is old (at most
        ~1.5 s, far below the 5 s aiortc spends gathering from a silent server)."""
        if self.stun.needs_probe(time.monotonic()):
            self.probe_stun_soon()
        if self._stun_probe is not None and not self._stun_probe.done():
            await asyncio.wait({self._stun_probe})  # (our cancellation leaves it running)
        return self.current_stun_url()

    def current_stun_url(self) -> str | None:
        """The `stun:` URL by the last probe (None: no STUN, failed or not probed yet)."""
        return f"stun:{self.stun.address}" if self.stun.use_stun() else None

    async def _probe_stun(self, status: StunStatus) -> None:
        assert status.address is not None  # noqa: S101 (probe_stun_soon checked)
        result: ProbeResult = await probe_stun(status.address)
        if status is not self.stun:
            return  # the relay told us another address meanwhile
        level = logging.INFO if status.probed(result, time.monotonic()) else logging.DEBUG
        if result.ok:
            log.log(level, "relay %s: STUN at %s answers (it sees us at %s)", self.url,
                    status.address, result.reflexive)
        else:
            log.log(level, "relay %s: STUN at %s does not answer; WebRTC uses host "
                    "candidates only", self.url, status.address)
        if self.on_stun is not None:
            self.on_stun()

    def _on_message(self, text: str) -> None:
        """Act on one message from the relay; RelayError if it is malformed."""
        try:
            message = decode_relay_message(text)
        except RemoteProtocolError as exc:
            raise RelayError(f"relay {self.url} sent a bad message: {exc}") from None
        if isinstance(message, (Ready, Unavailable)) and message.req is not None:
            fut = self._requests.pop(message.req, None)
            if fut is not None and not fut.done():
                fut.set_result(message)
            elif isinstance(message, Ready):
                self.unsolicited += 1
        elif isinstance(message, Invited):
            self._tasks.fire("relay invitation", self._invited(message.sid, message.peer))
        elif isinstance(message, Ready):
            self._ready_for_invitation(message)
        elif isinstance(message, Signal):
            self._tasks.fire("relay signal", self._signalled(message.peer, message.data))

    def _ready_for_invitation(self, ready: Ready) -> None:
        """Join the splice of an invitation we accepted (from that peer), nothing else."""
        accepted = self._accepted.get(ready.sid)
        if accepted is None or accepted[0] != ready.peer or self._joining >= MAX_JOINING:
            self.unsolicited += 1
            return
        del self._accepted[ready.sid]
        self._joining += 1
        task = self._tasks.fire("relayed session", self._join(ready.sid, ready.key, ready.peer))
        task.add_done_callback(lambda _: self._joined())

    def _joined(self) -> None:
        self._joining -= 1

    async def _invited(self, sid: str, peer: DeviceID) -> None:
        ws = self._ws
        now = time.monotonic()
        for stale in [s for s, (_, at) in self._accepted.items() if now - at > ANSWER_TIMEOUT]:
            del self._accepted[stale]  # the relay will not send their `ready` any more
        accept = len(self._accepted) < MAX_ACCEPTED and await self._should_accept(peer)
        if ws is None or ws is not self._ws or ws.closed:
            return  # the invitation came on a connection that is gone
        if accept:
            self._accepted[sid] = (peer, now)
            if len(self._accepted) > MAX_ACCEPTED:
                del self._accepted[sid]
                accept = False
        try:
            async with _relay_errors(self.url, RelayError):
                await ws.send_json({"t": "accept" if accept else "refuse", "sid": sid})
        except RelayError as exc:  # the connection went: so did the invitation
            self._accepted.pop(sid, None)
            log.info("%s", exc)

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
                              "the other side never joined the splice", peer,
                              max_msg_size=SPLICE_MAX_MESSAGE)

    async def connect(self, peer: DeviceID) -> SpliceStream:
        """A relayed stream to `peer`, or RelayUnavailable."""
        if self._ws is None:
            raise RelayUnavailable(f"not connected to relay {self.url}")
        req = next(self._req_ids)
        fut: asyncio.Future[Ready | Unavailable] = asyncio.get_running_loop().create_future()
        self._requests[req] = fut
        try:
            async with _relay_errors(self.url):
                await self._ws.send_json({"t": "connect", "req": req, "to": str(peer)})
                async with asyncio.timeout(ANSWER_TIMEOUT):
                    answer = await fut
        finally:
            self._requests.pop(req, None)
        if not isinstance(answer, Ready) or answer.peer != peer:
            raise RelayUnavailable(f"device {peer.short} is not reachable through {self.url}")
        return await self._open_splice(answer.sid, answer.key, peer)

    async def signal(self, peer: DeviceID, data: Any) -> None:
        """Send signalling `data` to `peer` through the relay (dropped unless it trusts us)."""
        if self._ws is not None:
            async with _relay_errors(self.url, RelayError):
                await self._ws.send_json({"t": "signal", "to": str(peer), "data": data})
