"""The relay server: a thin aiohttp adapter around the relay's sans-I/O cores.

Endpoints: `/v1/control` (a device's control WebSocket: login by `auth`, then the
`Broker`), `/v1/splice` (byte splices, `splicing.Splicer`), `/v1/mailbox` (pairing
mailboxes, `mailbox.MailboxRelay`),
`/health`, `/metrics`. Every WebSocket passes `IpAdmission` first. A splice
carries only what the devices send: their admission and pinned mutual TLS run inside
it, so the relay sees ciphertext, device IDs and byte counts, never a payload.
The cores decide; this module reads clocks, arms the broker's timer, and maps socket
and aiohttp errors at its boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import WSMsgType, web

from p2pgate.errors import RemoteProtocolError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.relay import stun, stun_server
from p2pgate.relay.auth import AuthRefused, check_access, relay_hello, relay_url_for, verify_login
from p2pgate.relay.broker import Broker, Send
from p2pgate.relay.config import RelayConfig
from p2pgate.relay.limits import IpAdmission, SignalLimits, client_ip
from p2pgate.relay.mailbox import MailboxRelay
from p2pgate.relay.metrics import Metrics
from p2pgate.relay.relay_key import RelayKey
from p2pgate.relay.splicing import SPLICE_WAIT, Splicer, first_message
from p2pgate.relay.timer import CoreTimer
from p2pgate.relay.wire import (
    Accepted,
    ConnectAsked,
    SignalSent,
    decode_device_message,
    decode_login,
)
from p2pgate.supervisor import Supervisor

__all__ = ["RelayServer"]

log = logging.getLogger("p2pgate.relay")

SIGNAL_BACKLOG = 1.0  # signalling waits for no splice: dropped past this much global backlog


@contextlib.contextmanager
def _client_errors(ip: str) -> Iterator[None]:
    """The boundary: a client that vanished ends only its own connection."""
    try:
        yield
    except OSError as exc:  # aiohttp's connection errors are ConnectionErrors too
        log.info("connection from %s ended: %s", ip, exc or type(exc).__name__)


class RelayServer:
    """The relay: control connections, splices, pairing mailboxes, health, metrics.

    `key` is the relay's own key (`p2pgate relay` loads it from its data dir); without
    one the relay makes a fresh key, so its relay ID lasts as long as the object.
    """

    def __init__(self, config: RelayConfig, key: RelayKey | None = None) -> None:
        self.config = config
        self.key = key or RelayKey.generate()
        self.broker = Broker(unavailable_delay=config.unavailable_delay,
                             invite_rate=config.invite_rate,
                             max_sessions_per_device=config.max_sessions_per_device,
                             splice_wait=SPLICE_WAIT)
        self.signal_limits = SignalLimits()
        self.admission = IpAdmission(config.max_connections_per_ip, config.accept_rate_per_ip)
        self.metrics = Metrics()
        self.splicer = Splicer(config, self.broker, self.metrics, self._session_closed)
        self.mailboxes = MailboxRelay(config, self.metrics, self.key)
        self._controls: dict[DeviceID, web.WebSocketResponse] = {}
        self._timer = CoreTimer(lambda: (self.broker.get_timer(),), self._on_timer)
        self._tasks = Supervisor(logger=log)
        self._draining = False
        self._told_url: set[str] = set()  # operator warnings already given, by reason
        self._no_sessions = asyncio.Event()
        self.stun: stun_server.StunEndpoint | None = None  # bound by `start_stun`
        self._declare_metrics()

    def _declare_metrics(self) -> None:
        m = self.metrics
        m.gauge("connections", "Open control connections.", lambda: len(self._controls))
        m.gauge("sessions", "Relayed sessions in progress.", lambda: self.broker.sessions)
        m.counter("bytes_total", "Bytes spliced.")
        m.counter("paced_seconds_total", "Seconds splices waited for the byte rate limits.")
        m.counter("refusals_total", "Connections or requests refused, by reason.")
        m.counter("auth_failures_total", "Device authentications that failed, by reason.")
        m.counter("sessions_total", "Relayed sessions started.")
        m.counter("signals_total", "Signalling messages forwarded or dropped, by outcome.")

    def reload(self, config: RelayConfig) -> None:
        """Apply a new configuration to new connections and requests (SIGHUP)."""
        self.config = config
        self.broker.unavailable_delay = config.unavailable_delay
        self.broker.max_sessions = config.max_sessions_per_device
        self.admission.max_connections = config.max_connections_per_ip
        self.splicer.reload(config)
        self.mailboxes.config = config
        log.info("configuration reloaded")

    def application(self) -> web.Application:
        """The aiohttp application; its shutdown closes control connections, stops tasks."""
        app = web.Application(client_max_size=4096)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/control", self._control)
        app.router.add_get("/v1/splice", self._splice)
        app.router.add_get("/v1/mailbox", self._mailbox)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def start_stun(self) -> None:
        """Answer STUN on UDP `stun_port` of the listen host (unless 0); a port that cannot
        be bound leaves the relay running without STUN (devices then stay off WebRTC's
        server-reflexive candidates) and says so."""
        host = self.config.stun_host or self.config.listen[0]
        if self.config.stun_port and self.stun is None:
            try:
                self.stun = await stun_server.start_stun(host, self.config.stun_port)
            except OSError as exc:
                log.warning("STUN port UDP %s:%d not available, running without STUN: %s",
                            host, self.config.stun_port, exc)

    def stun_address(self, request: web.Request) -> str | None:
        """The STUN "HOST:PORT" to tell the client of `request`, or None (no STUN)."""
        if self.stun is None:
            return None
        return stun.stun_address(self.config.public_url, self._local_address(request),
                                 self.stun.port, self.stun.host)

    async def drain(self) -> None:
        """Refuse new work and wait (up to drain_timeout) for running splices (sessions
        accepted but never spliced do not hold it)."""
        self._draining = True
        if self.broker.spliced:
            self._no_sessions.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.drain_timeout):  # (not wait_for: 3.11)
                    await self._no_sessions.wait()

    async def _on_shutdown(self, app: web.Application) -> None:
        if self.stun is not None:
            self.stun.close()
            self.stun = None
        for ws in list(self._controls.values()):
            await ws.close(code=1001, message=b"relay shutting down")
        self._timer.cancel()
        self.splicer.close()
        self.mailboxes.close()
        await self._tasks.stop()

    async def _health(self, request: web.Request) -> web.Response:
        status = "draining" if self._draining else "ok"
        return web.json_response({"status": status, "relay_id": str(self.key.relay_id),
                                  "connections": len(self._controls),
                                  "sessions": self.broker.sessions,
                                  "stun": self.stun_address(request)})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(), content_type="text/plain")

    # -- every WebSocket: per-IP admission, then one of the endpoints ----------------

    def client_ip(self, request: web.Request) -> str:
        """The client's IP (X-Forwarded-For only from `trusted_proxies`), or "?"."""
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
        refusal = "draining" if self._draining else self.admission.admit(ip, self._now())
        if refusal is not None:
            return self._refuse(refusal)
        ws = web.WebSocketResponse(max_msg_size=max_size, heartbeat=30)
        try:
            with _client_errors(ip):
                await ws.prepare(request)
                await serve(ws, ip)
        except RemoteProtocolError as exc:
            self.metrics.inc("refusals_total", reason="malformed")
            log.info("malformed request from %s: %s", ip, exc)
        finally:
            self.admission.release(ip)
            if ws.prepared:
                with _client_errors(ip):
                    await ws.close()
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
        cfg = self.config
        url = cfg.public_url
        try:
            url = relay_url_for(cfg.public_url, request.secure, self._local_address(request),
                                request.headers.get("Host"))
            await ws.send_json(relay_hello(nonce, self.key.public_raw, self.key.sign,
                                           request.query.get("challenge")))
            data = await first_message(ws)
            decode_login(data)  # typed: lists, 10**400, Infinity are refused as malformed
            device = verify_login(data, url, self.key.public_raw, nonce, time.time(),
                                  cfg.auth_skew)
            check_access(device, data.get("token"), access=cfg.access,
                         allowlist=cfg.allowlist, token_keys=cfg.token_keys,
                         audience=cfg.audience, now=time.time())
        except (RemoteProtocolError, AuthRefused) as exc:
            reason = exc.reason if isinstance(exc, AuthRefused) else "malformed"
            self.metrics.inc("auth_failures_total", reason=reason)
            log.info("auth failed from %s: %s", ip, reason)
            self._tell_operator(reason, url, request)
            await ws.send_json({"t": "error", "reason": reason})
            return None
        old = self._controls.pop(device, None)
        if old is not None:
            await old.close(code=4000, message=b"replaced by a newer connection")
        self._controls[device] = ws
        self.broker.attach(device)
        observed = f"{ip}:{request.transport.get_extra_info('peername')[1]}" if (
            request.transport and ip == request.remote) else ip
        welcome = {"t": "welcome", "device": str(device), "observed": observed}
        stun_at = self.stun_address(request)
        if stun_at is not None:
            welcome["stun"] = stun_at
        await ws.send_json(welcome)
        log.info("device %s attached", device.short)
        return device

    @staticmethod
    def _local_address(request: web.Request) -> tuple[str, int] | None:
        """The address this connection reached (the socket's own, not the Host header)."""
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            return str(sockname[0]), int(sockname[1])
        return None

    def _tell_operator(self, reason: str, url: str | None, request: web.Request) -> None:
        """Once per reason, the operator's fix for logins that fail because of our URL."""
        if self.config.public_url is not None or reason in self._told_url:
            return
        if reason == "public_url_unset":
            self._told_url.add(reason)
            host = request.headers.get("Host", "?")
            log.warning("a device dialed this relay by name (Host: %.100s), but public_url "
                        "is not set, so its login cannot be checked: set public_url to the "
                        "URL devices use (e.g. public_url = \"%s://%.100s\")", host,
                        "wss" if request.secure else "ws", host)
        elif reason == "wrong_url":
            self._told_url.add(reason)
            log.warning("a device signed its login for another URL than %s (the address it "
                        "reached): if devices dial another one (a port forward, a TLS "
                        "terminator), set public_url to it", url)

    async def _serve_control(self, device: DeviceID, ws: web.WebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    break
                try:
                    message = decode_device_message(msg.data)
                except RemoteProtocolError as exc:
                    self.metrics.inc("refusals_total", reason="malformed")
                    log.info("device %s sent a bad message: %s", device.short, exc)
                    break
                await self._on_control(device, message)
        finally:
            if self._controls.get(device) is ws:
                del self._controls[device]
                self.broker.detach(device)
                log.info("device %s detached", device.short)

    async def _on_control(self, device: DeviceID,
                          message: ConnectAsked | Accepted | SignalSent) -> None:
        if isinstance(message, ConnectAsked):
            if self._draining:
                await self._deliver([Send(device, {"t": "unavailable", "req": message.req})])
                return
            await self._deliver(self.broker.request(device, message.to, message.req,
                                                    self._now()))
            self._timer.rearm()
        elif isinstance(message, Accepted):
            accept = message.accept and not self._draining
            sends = self.broker.answer(device, message.sid, accept, self._now())
            if sends:
                self.metrics.inc("sessions_total")
                self._timer.rearm()
            await self._deliver(sends)
        else:
            self._signal(device, message)

    def _signal(self, device: DeviceID, message: SignalSent) -> None:
        """Forward signalling within its limits. Attached or absent, the target costs
        the sender the same: the same limits are charged, the same message encoded,
        and the send runs in its own task, never on the sender's path."""
        now = self._now()
        admitted = (self.signal_limits.admit(str(device), str(message.to), now)
                    and self.splicer.throughput.charge(message.size, now) <= SIGNAL_BACKLOG)
        text = json.dumps({"t": "signal", "from": str(device), "data": message.data})
        ws = self._controls.get(message.to)
        if admitted and ws is not None:
            self._tasks.fire("relay: signal", self._send_text(ws, text))
        self.metrics.inc("signals_total", outcome="forwarded" if admitted else "dropped")

    async def _send_text(self, ws: web.WebSocketResponse, text: str) -> None:
        if not ws.closed:
            with _client_errors("signal target"):
                await ws.send_str(text)

    async def _deliver(self, sends: list[Send]) -> None:
        for send in sends:
            ws = self._controls.get(send.to)
            if ws is not None and not ws.closed:
                with _client_errors(str(send.to.short)):
                    await ws.send_json(send.message)

    # -- the broker's deadlines ---------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _on_timer(self, now: float) -> None:
        sends = self.broker.handle_timer(now)
        if sends:
            self._tasks.fire("relay: unavailable answers", self._deliver(sends))
        self._session_closed()  # ready sessions nobody spliced may have expired

    # -- splices and the pairing mailbox ---------------------------------------------------

    async def _splice(self, request: web.Request) -> web.StreamResponse:
        return await self._websocket(request, self.config.max_frame,
                                     lambda ws, _ip: self.splicer.run_splice(ws))

    async def _mailbox(self, request: web.Request) -> web.StreamResponse:
        """Rendezvous for pairing across networks by nameplate: the devices run SPAKE2
        through it, so the relay learns neither the code nor the keys."""
        try:  # the URL a login is checked against, as for control connections
            login_url: str | None = relay_url_for(
                self.config.public_url, request.secure, self._local_address(request),
                request.headers.get("Host"))
        except AuthRefused:
            login_url = None  # a login then fails; an open relay needs none
        challenge = request.query.get("challenge")
        return await self._websocket(
            request, 64 << 10, lambda ws, ip: self.mailboxes.run(ws, ip, login_url, challenge))

    def _session_closed(self) -> None:
        if not self.broker.spliced:
            self._no_sessions.set()
