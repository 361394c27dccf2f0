"""The relay server: a thin aiohttp adapter around the relay's sans-I/O cores.

Endpoints: `/v1/control` (a device's control WebSocket: login, then the `Broker`),
`/v1/splice` (one side of a relayed session, met by the `SpliceMatcher`),
`/v1/mailbox` (pairing rendezvous, `Mailboxes`), `/health`, `/metrics`. Every
WebSocket passes `IpAdmission` first; splices are paced by `Throughput`. A splice
carries only what the devices send: their admission and pinned mutual TLS run inside
it, so the relay sees ciphertext, device IDs and byte counts, never a payload.
The cores decide; this module reads clocks, arms one timer for all of them, sleeps
where a meter says so, and maps socket and aiohttp errors at its boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from p2pgate.deviceid import DeviceID
from p2pgate.errors import RemoteProtocolError
from p2pgate.relay.auth import AuthRefused, check_access, verify_login
from p2pgate.relay.broker import Broker, Send
from p2pgate.relay.config import RelayConfig
from p2pgate.relay.limits import IpAdmission, Throughput, client_ip
from p2pgate.relay.metrics import Metrics
from p2pgate.relay.rendezvous import Mailboxes, Refused, Replaced, SpliceMatcher
from p2pgate.supervisor import Supervisor

__all__ = ["RelayServer"]

log = logging.getLogger("p2pgate.relay")

PROTOCOL_VERSION = 1
SPLICE_WAIT = 30.0
MAILBOX_WAIT = 3600.0  # the longest a pairing code lives
MAX_MAILBOXES = 10_000
FIRST_MESSAGE_WAIT = 10.0


@dataclass(slots=True)
class _Half:
    """A WebSocket waiting in a rendezvous core; `partner` resolves to the other side
    (None: nobody came)."""

    ws: web.WebSocketResponse
    partner: asyncio.Future[web.WebSocketResponse | None]

    def resolve(self, other: web.WebSocketResponse | None) -> None:
        if not self.partner.done():
            self.partner.set_result(other)


async def _first_message(ws: web.WebSocketResponse) -> dict[str, Any]:
    """The client's first message, a JSON object, or RemoteProtocolError."""
    try:
        msg = await ws.receive(timeout=FIRST_MESSAGE_WAIT)
        data = json.loads(msg.data) if msg.type == WSMsgType.TEXT else None
    except (TimeoutError, ValueError) as exc:
        raise RemoteProtocolError(f"no valid first message: {exc}") from None
    if not isinstance(data, dict):
        raise RemoteProtocolError("the first message is not a JSON object")
    return data


def _fields(data: dict[str, Any], *names: str) -> list[str]:
    try:
        return [str(data[name]) for name in names]
    except KeyError as exc:
        raise RemoteProtocolError(f"missing {exc}") from None


@contextlib.contextmanager
def _client_errors(ip: str) -> Iterator[None]:
    """The boundary: a client that vanished ends only its own connection."""
    try:
        yield
    except OSError as exc:  # aiohttp's connection errors are ConnectionErrors too
        log.info("connection from %s ended: %s", ip, exc or type(exc).__name__)


class RelayServer:
    """The relay: control connections, splices, pairing mailboxes, health, metrics."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.broker = Broker(unavailable_delay=config.unavailable_delay,
                             invite_rate=config.invite_rate,
                             max_sessions_per_device=config.max_sessions_per_device)
        self.admission = IpAdmission(config.max_connections_per_ip, config.accept_rate_per_ip)
        self.throughput = Throughput(config.session_rate, config.global_rate)
        self.splices: SpliceMatcher[_Half] = SpliceMatcher(SPLICE_WAIT)
        # an inviter holds a connection: the per-IP connection limit bounds its boxes
        self.mailboxes: Mailboxes[_Half] = Mailboxes(MAILBOX_WAIT, MAX_MAILBOXES,
                                                     config.max_connections_per_ip)
        self.metrics = Metrics()
        self._controls: dict[DeviceID, web.WebSocketResponse] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks = Supervisor(logger=log)
        self._draining = False
        self._no_sessions = asyncio.Event()
        self._declare_metrics()

    def _declare_metrics(self) -> None:
        m = self.metrics
        m.gauge("connections", "Open control connections.", lambda: len(self._controls))
        m.gauge("sessions", "Relayed sessions in progress.", lambda: self.broker.sessions)
        m.counter("bytes_total", "Bytes spliced.")
        m.counter("refusals_total", "Connections or requests refused, by reason.")
        m.counter("auth_failures_total", "Device authentications that failed, by reason.")
        m.counter("sessions_total", "Relayed sessions started.")

    def reload(self, config: RelayConfig) -> None:
        """Apply a new configuration to new connections and requests (SIGHUP)."""
        self.config = config
        self.broker.unavailable_delay = config.unavailable_delay
        self.broker.max_sessions = config.max_sessions_per_device
        self.admission.max_connections = config.max_connections_per_ip
        self.mailboxes.max_boxes_per_ip = config.max_connections_per_ip
        self.throughput.set_rates(config.session_rate, config.global_rate)
        log.info("configuration reloaded")

    def application(self) -> web.Application:
        app = web.Application(client_max_size=4096)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/control", self._control)
        app.router.add_get("/v1/splice", self._splice)
        app.router.add_get("/v1/mailbox", self._mailbox)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def drain(self) -> None:
        """Refuse new work and wait (up to drain_timeout) for running splices."""
        self._draining = True
        if self.broker.sessions:
            self._no_sessions.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_sessions.wait(), self.config.drain_timeout)

    async def _on_shutdown(self, app: web.Application) -> None:
        for ws in list(self._controls.values()):
            await ws.close(code=1001, message=b"relay shutting down")
        if self._timer is not None:
            self._timer.cancel()
        await self._tasks.stop()

    async def _health(self, request: web.Request) -> web.Response:
        status = "draining" if self._draining else "ok"
        return web.json_response({"status": status, "connections": len(self._controls),
                                  "sessions": self.broker.sessions})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(), content_type="text/plain")

    # -- every WebSocket: per-IP admission, then one of the endpoints ----------------

    def client_ip(self, request: web.Request) -> str:
        return client_ip(request.remote or "?", request.headers.get("X-Forwarded-For"),
                         self.config.trusted_proxies)

    def _refuse(self, reason: str) -> web.Response:
        self.metrics.inc("refusals_total", reason=reason)
        log.info("refused: %s", reason)
        return web.json_response({"error": reason}, status=429 if "rate" in reason else 403)

    async def _websocket(self, request: web.Request, max_size: int,
                         serve: Callable[[web.WebSocketResponse, str], Awaitable[None]]
                         ) -> web.StreamResponse:
        """Admit the client IP, then serve one WebSocket, keeping per-IP counts."""
        ip = self.client_ip(request)
        refusal = "draining" if self._draining else self.admission.admit(ip, time.monotonic())
        if refusal is not None:
            return self._refuse(refusal)
        ws = web.WebSocketResponse(max_msg_size=max_size, heartbeat=30)
        try:
            with _client_errors(ip):
                await ws.prepare(request)
                try:
                    await serve(ws, ip)
                except RemoteProtocolError as exc:
                    self.metrics.inc("refusals_total", reason="malformed")
                    log.info("malformed request from %s: %s", ip, exc)
                await ws.close()
        finally:
            self.admission.release(ip)
        return ws

    # -- control connections --------------------------------------------------------

    async def _control(self, request: web.Request) -> web.StreamResponse:
        async def serve(ws: web.WebSocketResponse, ip: str) -> None:
            device = await self._authenticate(request, ws, ip)
            if device is not None:
                await self._serve_control(device, ws)

        return await self._websocket(request, 16384, serve)

    async def _authenticate(self, request: web.Request, ws: web.WebSocketResponse, ip: str
                            ) -> DeviceID | None:
        nonce = secrets.token_urlsafe(24)
        url = self.config.public_url or f"{'wss' if request.secure else 'ws'}://{request.host}"
        await ws.send_json({"t": "hello", "v": PROTOCOL_VERSION, "nonce": nonce})
        cfg = self.config
        try:
            data = await _first_message(ws)
            device = verify_login(data, url, nonce, time.time(), cfg.auth_skew)
            check_access(device, data.get("token"), access=cfg.access,
                         allowlist=cfg.allowlist, token_keys=cfg.token_keys,
                         audience=cfg.audience, now=time.time())
        except (RemoteProtocolError, AuthRefused) as exc:
            reason = exc.reason if isinstance(exc, AuthRefused) else "malformed"
            self.metrics.inc("auth_failures_total", reason=reason)
            log.info("auth failed from %s: %s", ip, reason)
            await ws.send_json({"t": "error", "reason": reason})
            return None
        old = self._controls.pop(device, None)
        if old is not None:
            await old.close(code=4000, message=b"replaced by a newer connection")
        self._controls[device] = ws
        self.broker.attach(device)
        observed = f"{ip}:{request.transport.get_extra_info('peername')[1]}" if (
            request.transport and ip == request.remote) else ip
        await ws.send_json({"t": "welcome", "device": str(device), "observed": observed})
        log.info("device %s attached", device.short)
        return device

    async def _serve_control(self, device: DeviceID, ws: web.WebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    break
                try:
                    await self._on_control(device, json.loads(msg.data))
                except (ValueError, TypeError, KeyError):
                    self.metrics.inc("refusals_total", reason="malformed")
                    break
        finally:
            if self._controls.get(device) is ws:
                del self._controls[device]
                self.broker.detach(device)
                log.info("device %s detached", device.short)

    async def _on_control(self, device: DeviceID, data: dict[str, Any]) -> None:
        kind = data["t"]
        if kind == "connect":
            if self._draining:
                await self._deliver([Send(device, {"t": "unavailable", "req": data["req"]})])
                return
            target = DeviceID.parse(str(data["to"]))
            await self._deliver(self.broker.request(device, target, int(data["req"]),
                                                    self._now()))
            self._arm_timer()
        elif kind in ("accept", "refuse"):
            sends = self.broker.answer(device, str(data["sid"]), kind == "accept")
            if sends:
                self.metrics.inc("sessions_total")
            await self._deliver(sends)
        elif kind == "signal":
            target = DeviceID.parse(str(data["to"]))
            if target in self._controls and len(json.dumps(data.get("data"))) <= 8192:
                await self._deliver([Send(target, {"t": "signal", "from": str(device),
                                                   "data": data.get("data")})])
        else:
            raise KeyError(kind)

    async def _deliver(self, sends: list[Send]) -> None:
        for send in sends:
            ws = self._controls.get(send.to)
            if ws is not None and not ws.closed:
                with _client_errors(str(send.to.short)):
                    await ws.send_json(send.message)

    # -- one timer for every core ----------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        timers = [t for t in (self.broker.get_timer(), self.splices.get_timer(),
                              self.mailboxes.get_timer()) if t is not None]
        if timers:
            self._timer = asyncio.get_running_loop().call_at(min(timers), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._now()
        for expired in self.splices.handle_timer(now) + self.mailboxes.handle_timer(now):
            expired.conn.resolve(None)
        sends = self.broker.handle_timer(now)
        if sends:
            self._tasks.fire("relay: unavailable answers", self._deliver(sends))
        self._arm_timer()

    # -- splices and the pairing mailbox ----------------------------------------------

    async def _splice(self, request: web.Request) -> web.StreamResponse:
        return await self._websocket(request, self.config.max_frame,
                                     lambda ws, _ip: self._run_splice(ws))

    async def _run_splice(self, ws: web.WebSocketResponse) -> None:
        sid, key = _fields(await _first_message(ws), "sid", "key")
        if self.broker.claim(sid, key) is None:
            self.metrics.inc("refusals_total", reason="bad_splice_key")
            return
        half = self._half(ws)
        try:
            await self._meet(half, self.splices.arrive(sid, half, self._now()), sid)
        finally:
            self.splices.leave(sid, half)
            self._close_session(sid)

    async def _mailbox(self, request: web.Request) -> web.StreamResponse:
        """Rendezvous for pairing across networks by nameplate: the devices run SPAKE2
        through it, so the relay learns neither the code nor the keys."""
        return await self._websocket(request, 64 << 10, self._run_mailbox)

    async def _run_mailbox(self, ws: web.WebSocketResponse, ip: str) -> None:
        box, role = _fields(await _first_message(ws), "box", "role")
        if len(box) != 64 or role not in ("inviter", "joiner"):
            raise RemoteProtocolError(f"bad mailbox request (role {role[:10]!r})")
        if role == "joiner":
            inviter = self.mailboxes.join(box)
            if inviter is None:
                await ws.send_json({"t": "absent"})
            else:
                await self._meet(self._half(ws), inviter, "mailbox")
            return
        half = self._half(ws)
        outcome = self.mailboxes.invite(box, half, ip, self._now())
        if isinstance(outcome, Refused):
            self.metrics.inc("refusals_total", reason=outcome.reason)
            return
        if isinstance(outcome, Replaced):
            outcome.old.resolve(None)
        try:
            await self._meet(half, None, "mailbox")
        finally:
            self.mailboxes.leave(box, half)

    def _half(self, ws: web.WebSocketResponse) -> _Half:
        return _Half(ws, asyncio.get_running_loop().create_future())

    async def _meet(self, half: _Half, waiting: _Half | None, sid: str) -> None:
        """Splice this side to the side that was `waiting`; with none, wait until a
        partner resolves `half` (None: nobody came) and splice to it."""
        if waiting is None:
            self._arm_timer()
            other = await half.partner
            if other is not None:
                await self._pump(half.ws, other, sid)
            return
        waiting.resolve(half.ws)
        await half.ws.send_json({"t": "spliced"})
        await waiting.ws.send_json({"t": "spliced"})
        await self._pump(half.ws, waiting.ws, sid)

    def _close_session(self, sid: str) -> None:
        self.broker.close_session(sid)
        if not self.broker.sessions:
            self._no_sessions.set()

    async def _pump(self, src: web.WebSocketResponse, dst: web.WebSocketResponse, sid: str
                    ) -> None:
        """Copy binary frames from src to dst under the rate limits, until either closes."""
        meter = self.throughput.meter()
        try:
            while True:
                try:
                    msg = await src.receive(timeout=self.config.idle_timeout)
                except TimeoutError:
                    log.info("splice %s idle, closing", sid[:6])
                    break
                if msg.type != WSMsgType.BINARY:
                    break
                wait = meter.delay(len(msg.data), self._now())
                if wait > 0:
                    await asyncio.sleep(wait)
                self.metrics.inc("bytes_total", len(msg.data))
                await dst.send_bytes(msg.data)
        except ConnectionError as exc:
            log.info("splice %s: a side went away: %s", sid[:6], exc or type(exc).__name__)
        finally:
            await dst.close()
            await src.close()
