"""The relay server: an aiohttp adapter around the `Broker`, plus splicing.

Endpoints: `/v1/control` (a device's control WebSocket), `/v1/splice` (one side of
a relayed session), `/health`, `/metrics`. A splice carries only what the devices
send: their admission and pinned mutual TLS run inside it, so the relay sees
ciphertext, device IDs and byte counts, never a payload.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from p2pgate.deviceid import DeviceID
from p2pgate.ratelimit import RateLimiter
from p2pgate.relay.access_tokens import TokenRefused, verify_token
from p2pgate.relay.broker import Broker, Send
from p2pgate.relay.config import RelayConfig
from p2pgate.relay.metrics import Metrics

__all__ = ["AUTH_CONTEXT", "RelayServer", "auth_payload"]

log = logging.getLogger("p2pgate.relay")

AUTH_CONTEXT = b"p2pgate-relay-auth"
PROTOCOL_VERSION = 1
SPLICE_WAIT = 30.0
MAILBOX_WAIT = 3600.0  # the longest a pairing code lives
MAX_MAILBOXES = 10_000


def auth_payload(relay_url: str, nonce: str, timestamp: int) -> bytes:
    """What a device signs to log in: bound to this relay's URL and nonce."""
    return b"\x00".join([AUTH_CONTEXT, relay_url.encode(), nonce.encode(),
                         str(timestamp).encode()])


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Bucket:
    """Bytes per second, awaited: `take(n)` sleeps until n bytes may pass."""

    rate: float
    level: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self.level = max(0.0, self.level - (now - self.stamp) * self.rate) + n
        self.stamp = now
        excess = self.level - self.rate * 0.05  # allow 50 ms of burst
        if excess > 0:
            await asyncio.sleep(excess / self.rate)


@dataclass(slots=True)
class _Pending:
    ws: web.WebSocketResponse
    device: DeviceID | None
    partner: asyncio.Future[web.WebSocketResponse]


class RelayServer:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.broker = Broker(unavailable_delay=config.unavailable_delay,
                             invite_rate=config.invite_rate,
                             max_sessions_per_device=config.max_sessions_per_device)
        self.metrics = Metrics()
        self._controls: dict[DeviceID, web.WebSocketResponse] = {}
        self._splices: dict[str, _Pending] = {}
        self._boxes: dict[str, _Pending] = {}
        self._per_ip: Counter[str] = Counter()
        self._accepts = RateLimiter(config.accept_rate_per_ip,
                                    max(1, int(config.accept_rate_per_ip)))
        self._global = _Bucket(config.global_rate)
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
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

    # -- configuration -----------------------------------------------------------

    def reload(self, config: RelayConfig) -> None:
        """Apply a new configuration to new connections and requests (SIGHUP)."""
        self.config = config
        self.broker.unavailable_delay = config.unavailable_delay
        self.broker.max_sessions = config.max_sessions_per_device
        self._global.rate = config.global_rate
        log.info("configuration reloaded")

    def _token_keys(self) -> dict[str, Ed25519PublicKey]:
        keys = {}
        for kid, text in self.config.token_keys.items():
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            keys[kid] = Ed25519PublicKey.from_public_bytes(raw)
        return keys

    # -- application ---------------------------------------------------------------

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

    async def _health(self, request: web.Request) -> web.Response:
        status = "draining" if self._draining else "ok"
        return web.json_response({"status": status, "connections": len(self._controls),
                                  "sessions": self.broker.sessions})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(), content_type="text/plain")

    # -- per-IP admission ----------------------------------------------------------

    def client_ip(self, request: web.Request) -> str:
        peer = request.remote or "?"
        forwarded = request.headers.get("X-Forwarded-For")
        if forwarded and self._is_trusted_proxy(peer):
            return forwarded.split(",")[-1].strip()
        return peer

    def _is_trusted_proxy(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in ipaddress.ip_network(n, strict=False)
                   for n in self.config.trusted_proxies)

    def _admit_ip(self, ip: str) -> None:
        if self._draining:
            raise _Refused("draining")
        if self._per_ip[ip] >= self.config.max_connections_per_ip:
            raise _Refused("ip_connections")
        if self._accepts.acquire(ip, time.monotonic()) > 0:
            raise _Refused("ip_accept_rate")

    def _refuse(self, reason: str) -> web.Response:
        self.metrics.inc("refusals_total", reason=reason)
        log.info("refused: %s", reason)
        return web.json_response({"error": reason}, status=429 if "rate" in reason else 403)

    # -- control connections ---------------------------------------------------------

    async def _websocket(self, request: web.Request, max_size: int,
                         serve: Callable[[web.WebSocketResponse, str], Awaitable[None]]
                         ) -> web.StreamResponse:
        """Admit the client IP, then serve one WebSocket, keeping per-IP counts."""
        ip = self.client_ip(request)
        try:
            self._admit_ip(ip)
        except _Refused as exc:
            return self._refuse(exc.reason)
        self._per_ip[ip] += 1
        ws = web.WebSocketResponse(max_msg_size=max_size, heartbeat=30)
        try:
            await ws.prepare(request)
            await serve(ws, ip)
        finally:
            self._per_ip[ip] -= 1
            if not self._per_ip[ip]:
                del self._per_ip[ip]
            await ws.close()
        return ws

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
        try:
            msg = await ws.receive(timeout=10)
            data = json.loads(msg.data) if msg.type == WSMsgType.TEXT else {}
            device = self._check_auth(data, url, nonce)
        except (TimeoutError, ValueError, TypeError, KeyError):
            device, reason = None, "malformed"
        except _Refused as exc:
            device, reason = None, exc.reason
        if device is None:
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

    def _check_auth(self, data: dict[str, Any], url: str, nonce: str) -> DeviceID:
        if data.get("t") != "auth":
            raise _Refused("malformed")
        cert_der = base64.b64decode(data["cert"], validate=True)
        timestamp = int(data["time"])
        if abs(time.time() - timestamp) > self.config.auth_skew:
            raise _Refused("clock")
        try:
            key = x509.load_der_x509_certificate(cert_der).public_key()
        except ValueError:
            raise _Refused("bad_certificate") from None
        if not isinstance(key, Ed25519PublicKey):
            raise _Refused("bad_certificate")
        try:
            key.verify(base64.b64decode(data["sig"]), auth_payload(url, nonce, timestamp))
        except InvalidSignature:
            raise _Refused("bad_signature") from None
        device = DeviceID(hashlib.sha256(cert_der).digest())
        cfg = self.config
        if cfg.access == "allowlist" and not any(
            DeviceID.parse(d) == device for d in cfg.allowlist
        ):
            raise _Refused("not_allowed")
        if cfg.access == "token":
            try:
                verify_token(str(data.get("token") or ""), self._token_keys(), cfg.audience,
                             device, time.time())
            except TokenRefused as exc:
                raise _Refused(f"token_{exc.reason}") from None
        return device

    async def _serve_control(self, device: DeviceID, ws: web.WebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    break
                try:
                    data = json.loads(msg.data)
                    await self._on_control(device, data)
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
        now = time.monotonic()
        if kind == "connect":
            if self._draining:
                await self._deliver([Send(device, {"t": "unavailable", "req": data["req"]})])
                return
            target = DeviceID.parse(str(data["to"]))
            await self._deliver(self.broker.request(device, target, int(data["req"]), now))
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
                with contextlib.suppress(ConnectionError):
                    await ws.send_json(send.message)

    def _arm_timer(self) -> None:
        when = self.broker.get_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, when - time.monotonic())
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        sends = self.broker.handle_timer(time.monotonic())
        task = asyncio.get_running_loop().create_task(self._deliver(sends))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._arm_timer()

    # -- splices -------------------------------------------------------------------------

    async def _splice(self, request: web.Request) -> web.StreamResponse:
        return await self._websocket(request, self.config.max_frame,
                                     lambda ws, _ip: self._run_splice(ws))

    async def _run_splice(self, ws: web.WebSocketResponse) -> None:
        try:
            msg = await ws.receive(timeout=10)
            data = json.loads(msg.data) if msg.type == WSMsgType.TEXT else {}
            sid, key = str(data["sid"]), str(data["key"])
        except (TimeoutError, ValueError, TypeError, KeyError):
            self.metrics.inc("refusals_total", reason="malformed")
            return
        device = self.broker.claim(sid, key)
        if device is None:
            self.metrics.inc("refusals_total", reason="bad_splice_key")
            return
        pending = self._splices.pop(sid, None)
        if pending is None:
            partner: asyncio.Future[web.WebSocketResponse] = (
                asyncio.get_running_loop().create_future()
            )
            self._splices[sid] = _Pending(ws, device, partner)
            try:
                other = await asyncio.wait_for(asyncio.shield(partner), SPLICE_WAIT)
            except TimeoutError:
                self._splices.pop(sid, None)
                self._close_session(sid)
                return
            try:
                await self._pump(ws, other, sid)
            finally:
                self._close_session(sid)
            return
        pending.partner.set_result(ws)
        await ws.send_json({"t": "spliced"})
        await pending.ws.send_json({"t": "spliced"})
        try:
            await self._pump(ws, pending.ws, sid)
        finally:
            self._close_session(sid)

    # -- the pairing mailbox -------------------------------------------------------------

    async def _mailbox(self, request: web.Request) -> web.StreamResponse:
        """Rendezvous for pairing across networks: the inviter waits in a box named by a
        hash of its code, a joiner with the same code is spliced to it. The devices run
        SPAKE2 through it: the relay learns neither the code nor the keys."""
        return await self._websocket(request, 64 << 10,
                                     lambda ws, _ip: self._run_mailbox(ws))

    async def _run_mailbox(self, ws: web.WebSocketResponse) -> None:
        try:
            msg = await ws.receive(timeout=10)
            data = json.loads(msg.data) if msg.type == WSMsgType.TEXT else {}
            box, role = str(data["box"]), str(data["role"])
            if len(box) != 64 or role not in ("inviter", "joiner"):
                raise ValueError(role)
        except (TimeoutError, ValueError, TypeError, KeyError):
            self.metrics.inc("refusals_total", reason="malformed")
            return
        if role == "inviter":
            if len(self._boxes) >= MAX_MAILBOXES and box not in self._boxes:
                self.metrics.inc("refusals_total", reason="mailboxes_full")
                return
            old = self._boxes.pop(box, None)
            if old is not None and not old.partner.done():
                old.partner.cancel()
            partner: asyncio.Future[web.WebSocketResponse] = (
                asyncio.get_running_loop().create_future())
            self._boxes[box] = _Pending(ws, None, partner)
            try:
                joiner = await asyncio.wait_for(asyncio.shield(partner), MAILBOX_WAIT)
            except (TimeoutError, asyncio.CancelledError):
                return
            finally:
                if self._boxes.get(box) is not None and self._boxes[box].ws is ws:
                    del self._boxes[box]
            await self._pump(ws, joiner, "mailbox")
            return
        waiting = self._boxes.pop(box, None)
        if waiting is None or waiting.partner.done():
            await ws.send_json({"t": "absent"})
            return
        waiting.partner.set_result(ws)
        await ws.send_json({"t": "spliced"})
        await waiting.ws.send_json({"t": "spliced"})
        await self._pump(ws, waiting.ws, "mailbox")

    def _close_session(self, sid: str) -> None:
        self.broker.close_session(sid)
        if not self.broker.sessions:
            self._no_sessions.set()

    async def _pump(self, src: web.WebSocketResponse, dst: web.WebSocketResponse, sid: str
                    ) -> None:
        """Copy binary frames from src to dst under the rate limits, until either closes."""
        bucket = _Bucket(self.config.session_rate)
        while True:
            try:
                msg = await src.receive(timeout=self.config.idle_timeout)
            except TimeoutError:
                log.info("splice %s idle, closing", sid[:6])
                break
            if msg.type != WSMsgType.BINARY:
                break
            size = len(msg.data)
            await bucket.take(size)
            await self._global.take(size)
            self.metrics.inc("bytes_total", size)
            try:
                await dst.send_bytes(msg.data)
            except ConnectionError:
                break
        await dst.close()
        await src.close()
