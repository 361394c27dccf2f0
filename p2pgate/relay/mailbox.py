"""The relay's pairing mailboxes: an asyncio adapter around `rendezvous.Mailboxes`.

`/v1/mailbox` speaks JSON until a splice starts. The relay says `hello` (a nonce, its
key and proof as on control connections, and whether a login is required); the
client's one request names its role:

- `inviter` (`nameplate`: "new" for one the relay allocates, or the number it claims;
  `avoid`; `box`: the URI's secret-derived name; `ttl`): the relay answers `open` with
  the nameplate and this connection *holds* the box: it dies when the connection
  closes or its time runs out. The inviter sends nothing on it; for each joiner it
  hears `joiner` with a one-time `key`.
- `joiner` (`nameplate` or `box`): `absent` when no open box has that name, else the
  inviter is told and answers on a new connection; both hear `spliced`.
- `answer` (`key`): the inviter's side of one joiner's splice.

A mailbox splice carries a pairing exchange (a few KB): each direction is capped at
`SPLICE_BYTES` and the splice at `SPLICE_TIME` seconds. On a relay whose `access` is
`allowlist` or `token`, inviters and joiners log in as on the control connection and
must pass the same rule: such a relay serves mailboxes only to its allowed devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from p2pgate.errors import RemoteProtocolError
from p2pgate.relay.auth import AuthRefused, check_access, relay_hello, verify_login
from p2pgate.relay.config import RelayConfig
from p2pgate.relay.metrics import Metrics
from p2pgate.relay.relay_key import RelayKey
from p2pgate.relay.rendezvous import Mailboxes, Refused, SpliceMatcher
from p2pgate.relay.splicing import first_message
from p2pgate.relay.timer import CoreTimer

__all__ = ["BOX_WAIT", "MailboxRelay", "SPLICE_BYTES", "SPLICE_TIME"]

log = logging.getLogger("p2pgate.relay")

BOX_WAIT = 3600.0  # the longest a pairing code lives
MAX_BOXES = 10_000
BOXES_PER_SOURCE = 8  # open offers per IPv4 address or IPv6 /64
JOIN_RATE, JOIN_BURST = 1 / 30, 6  # joiner requests per source: a scan of 99 takes ~47 min
TRIES_PER_BOX = 2  # below the 3 wrong codes that burn an offer
ANSWER_WAIT = 10.0  # for the inviter to answer a joiner
SPLICE_BYTES = 32 << 10  # per direction; a pairing exchange is ~3 KB
SPLICE_TIME = 60.0
MAX_AVOID = 200

_BOX_NAME = re.compile(r"[0-9a-f]{64}")


@dataclass(slots=True, eq=False)
class _Joiner:
    """A joiner waiting for the inviter's answer connection (None: it never came)."""

    ws: web.WebSocketResponse
    partner: asyncio.Future[web.WebSocketResponse | None]

    def resolve(self, other: web.WebSocketResponse | None) -> None:
        if not self.partner.done():
            self.partner.set_result(other)


def _nameplate(value: Any) -> int:
    if type(value) is not int or not 1 <= value <= 9999:
        raise RemoteProtocolError("bad nameplate")
    return value


def _box_name(value: Any) -> str:
    if not isinstance(value, str) or not _BOX_NAME.fullmatch(value):
        raise RemoteProtocolError("bad box name")
    return value


class MailboxRelay:
    """Holds inviters' boxes, matches joiners to them and splices the pair, capped."""

    def __init__(self, config: RelayConfig, metrics: Metrics, key: RelayKey) -> None:
        self.config = config
        self.metrics = metrics
        self.key = key
        self.boxes: Mailboxes[web.WebSocketResponse] = Mailboxes(
            BOX_WAIT, MAX_BOXES, BOXES_PER_SOURCE, JOIN_RATE, JOIN_BURST, TRIES_PER_BOX)
        self.answers: SpliceMatcher[_Joiner] = SpliceMatcher(ANSWER_WAIT)
        self._pending: dict[int, set[_Joiner]] = {}  # id(inviter ws) -> joiners it was told of
        self._closing: set[asyncio.Task[Any]] = set()
        self._timer = CoreTimer(lambda: (self.boxes.get_timer(), self.answers.get_timer()),
                                self._on_timer)

    def close(self) -> None:
        """Cancel the deadline timer (at shutdown)."""
        self._timer.cancel()

    def _refused(self, reason: str) -> dict[str, str]:
        self.metrics.inc("refusals_total", reason=f"mailbox_{reason}")
        return {"t": "error", "reason": reason}

    async def run(self, ws: web.WebSocketResponse, ip: str, login_url: str | None,
                  challenge: str | None) -> None:
        """One `/v1/mailbox` connection, from hello (with the relay's proof of its key
        for the device's `challenge`) to its end."""
        nonce = secrets.token_urlsafe(24)
        login = self.config.access != "open"
        try:
            hello = relay_hello(nonce, self.key.public_raw, self.key.sign, challenge)
        except AuthRefused:
            raise RemoteProtocolError("malformed challenge") from None
        await ws.send_json({**hello, "login": login})
        data = await first_message(ws)
        role = data.get("role")
        if role == "answer":
            await self._answer(ws, data)
            return
        if role not in ("inviter", "joiner"):
            raise RemoteProtocolError("bad mailbox role")
        if login:
            refusal = self._check_login(data.get("auth"), login_url, nonce, ip)
            if refusal is not None:
                await ws.send_json(self._refused(refusal))
                return
        if role == "inviter":
            await self._hold(ws, ip, data)
        else:
            await self._join(ws, ip, data)

    def _check_login(self, auth: Any, url: str | None, nonce: str, ip: str) -> str | None:
        """None if the login in `auth` passes the relay's access rule, else why not."""
        cfg = self.config
        try:
            if not isinstance(auth, dict):
                raise AuthRefused("login_required")
            if url is None:
                raise AuthRefused("public_url_unset")
            device = verify_login(auth, url, self.key.public_raw, nonce, time.time(),
                                  cfg.auth_skew)
            check_access(device, auth.get("token"), access=cfg.access, allowlist=cfg.allowlist,
                         token_keys=cfg.token_keys, audience=cfg.audience, now=time.time())
        except AuthRefused as exc:
            log.info("mailbox login refused from %s: %s", ip, exc.reason)
            return exc.reason
        return None

    # -- the inviter's box ----------------------------------------------------------------

    async def _hold(self, ws: web.WebSocketResponse, ip: str, data: dict[str, Any]) -> None:
        wanted, avoid = data.get("nameplate"), data.get("avoid", [])
        if not isinstance(avoid, list) or len(avoid) > MAX_AVOID:
            raise RemoteProtocolError("bad avoid list")
        ttl = data.get("ttl")
        if ttl is not None and (type(ttl) not in (int, float) or not 0 < ttl <= BOX_WAIT):
            raise RemoteProtocolError("bad ttl")
        name = None if data.get("box") is None else _box_name(data["box"])
        outcome = self.boxes.open(
            ws, ip, self._now(), allocate=wanted == "new",
            nameplate=None if wanted in (None, "new") else _nameplate(wanted),
            avoid=[_nameplate(n) for n in avoid], name=name, ttl=ttl)
        if isinstance(outcome, Refused):
            await ws.send_json(self._refused(outcome.reason))
            return
        try:
            self._timer.rearm()
            await ws.send_json({"t": "open", "nameplate": outcome.nameplate})
            async for _ in ws:  # an inviter sends nothing on its box: anything ends it
                self.metrics.inc("refusals_total", reason="mailbox_inviter_spoke")
                break
        finally:
            self.boxes.close(ws)  # the box and its slot go with the connection, at once
            for joiner in self._pending.pop(id(ws), set()):
                joiner.resolve(None)  # told at once: the box is gone

    # -- a joiner, and the inviter's answer -------------------------------------------------

    async def _join(self, ws: web.WebSocketResponse, ip: str, data: dict[str, Any]) -> None:
        if "nameplate" in data:
            outcome = self.boxes.join(ip, self._now(), nameplate=_nameplate(data["nameplate"]))
        else:
            outcome = self.boxes.join(ip, self._now(), name=_box_name(data.get("box")))
        if isinstance(outcome, Refused):
            await ws.send_json({"t": "absent"} if outcome.reason == "absent"
                               else self._refused(outcome.reason))
            return
        key = secrets.token_urlsafe(16)
        joiner = _Joiner(ws, asyncio.get_running_loop().create_future())
        self.answers.arrive(key, joiner, self._now())
        self._timer.rearm()
        pending = self._pending.setdefault(id(outcome), set())
        pending.add(joiner)
        try:
            with contextlib.suppress(ConnectionError):
                await outcome.send_json({"t": "joiner", "key": key})
            inviter = await joiner.partner
        finally:
            self.answers.leave(key, joiner)
            pending.discard(joiner)
            if not pending and self._pending.get(id(outcome)) is pending:
                del self._pending[id(outcome)]
        if inviter is None:  # its box closed meanwhile, or it did not answer
            await ws.send_json({"t": "absent"})
            return
        await self._pump(ws, inviter)

    async def _answer(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        joiner = self.answers.take(str(data.get("key", "")))
        if joiner is None:
            await ws.send_json(self._refused("no_joiner"))
            return
        joiner.resolve(ws)
        with contextlib.suppress(ConnectionError):
            await joiner.ws.send_json({"t": "spliced"})
        await ws.send_json({"t": "spliced"})
        await self._pump(ws, joiner.ws)

    async def _pump(self, src: web.WebSocketResponse, dst: web.WebSocketResponse) -> None:
        """Copy binary frames src → dst, at most SPLICE_BYTES within SPLICE_TIME."""
        left = SPLICE_BYTES
        try:
            async with asyncio.timeout(SPLICE_TIME):
                async for msg in src:
                    if msg.type != WSMsgType.BINARY:
                        break
                    left -= len(msg.data)
                    if left < 0:
                        self.metrics.inc("refusals_total", reason="mailbox_bytes")
                        log.info("mailbox splice over %d bytes, closing", SPLICE_BYTES)
                        break
                    self.metrics.inc("bytes_total", len(msg.data))
                    await dst.send_bytes(msg.data)
        except TimeoutError:
            self.metrics.inc("refusals_total", reason="mailbox_time")
            log.info("mailbox splice past %.0f s, closing", SPLICE_TIME)
        except ConnectionError as exc:
            log.info("mailbox splice: a side went away: %s", exc or type(exc).__name__)
        finally:
            await dst.close()
            await src.close()

    # -- deadlines ------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _on_timer(self, now: float) -> None:
        for waiting in self.answers.handle_timer(now):
            waiting.conn.resolve(None)
        for expired in self.boxes.handle_timer(now):  # its hold then ends, telling joiners
            task = asyncio.ensure_future(expired.conn.close(code=4001, message=b"box expired"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
