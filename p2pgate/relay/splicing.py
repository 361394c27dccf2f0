"""The relay's byte splices: an asyncio adapter around the rendezvous and limit cores.

`/v1/splice`: both sides of a session the `Broker` made ready arrive with their
one-time key and meet in the `SpliceMatcher` (pairing mailboxes: `mailbox`). Then
`pump` copies binary frames each way, paced by a
`Throughput` meter, until a side closes or the splice is idle for `idle_timeout`.
The cores decide who meets whom and when a wait ends; this module awaits, sleeps and
arms the timer they ask for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from p2pgate.errors import RemoteProtocolError
from p2pgate.relay.broker import Broker
from p2pgate.relay.config import RelayConfig
from p2pgate.relay.limits import Throughput
from p2pgate.relay.metrics import Metrics
from p2pgate.relay.rendezvous import SpliceMatcher
from p2pgate.relay.timer import CoreTimer
from p2pgate.relay.wire import json_object

__all__ = ["FIRST_MESSAGE_WAIT", "Splicer", "first_message"]

log = logging.getLogger("p2pgate.relay")

SPLICE_WAIT = 30.0
FIRST_MESSAGE_WAIT = 10.0


async def first_message(ws: web.WebSocketResponse) -> dict[str, Any]:
    """The client's first message, a JSON object, or RemoteProtocolError."""
    try:
        msg = await ws.receive(timeout=FIRST_MESSAGE_WAIT)
    except TimeoutError as exc:
        raise RemoteProtocolError(f"no valid first message: {exc}") from None
    if msg.type != WSMsgType.TEXT:
        raise RemoteProtocolError("the first message is not a JSON object")
    return json_object(msg.data)  # (RemoteProtocolError for any other JSON or text)


def _fields(data: dict[str, Any], *names: str) -> list[str]:
    try:
        return [str(data[name]) for name in names]
    except KeyError as exc:
        raise RemoteProtocolError(f"missing {exc}") from None


@dataclass(slots=True)
class _Half:
    """A WebSocket waiting in a rendezvous core; `partner` resolves to the other side
    (None: nobody came)."""

    ws: web.WebSocketResponse
    partner: asyncio.Future[web.WebSocketResponse | None]

    def resolve(self, other: web.WebSocketResponse | None) -> None:
        if not self.partner.done():
            self.partner.set_result(other)


class Splicer:
    """Meets the halves of splices, then pumps bytes between them."""

    def __init__(self, config: RelayConfig, broker: Broker, metrics: Metrics,
                 on_session_closed: Callable[[], None]) -> None:
        self.config = config
        self.broker = broker
        self.metrics = metrics
        self.throughput = Throughput(config.session_rate, config.global_rate)
        self.splices: SpliceMatcher[_Half] = SpliceMatcher(SPLICE_WAIT)
        self._on_session_closed = on_session_closed
        self._timer = CoreTimer(lambda: (self.splices.get_timer(),), self._on_timer)

    def reload(self, config: RelayConfig) -> None:
        """Apply new limits: the global rate at once, the session rate to new splices."""
        self.config = config
        self.throughput.set_rates(config.session_rate, config.global_rate)

    def close(self) -> None:
        """Cancel the rendezvous timer (at shutdown); waiting halves are left as they are."""
        self._timer.cancel()

    async def run_splice(self, ws: web.WebSocketResponse) -> None:
        """One side of a relayed session: claim its key, meet the other side, pump."""
        sid, key = _fields(await first_message(ws), "sid", "key")
        if self.broker.claim(sid, key) is None:
            self.metrics.inc("refusals_total", reason="bad_splice_key")
            return
        half = self._half(ws)
        try:
            await self._meet(half, self.splices.arrive(sid, half, self._now()), sid)
        finally:
            self.splices.leave(sid, half)
            self.broker.close_session(sid)
            self._on_session_closed()

    def _half(self, ws: web.WebSocketResponse) -> _Half:
        return _Half(ws, asyncio.get_running_loop().create_future())

    async def _meet(self, half: _Half, waiting: _Half | None, sid: str) -> None:
        """Splice this side to the side that was `waiting`; with none, wait until a
        partner resolves `half` (None: nobody came) and splice to it."""
        if waiting is None:
            self._timer.rearm()
            other = await half.partner
            if other is not None:
                await self.pump(half.ws, other, sid)
            return
        waiting.resolve(half.ws)
        await half.ws.send_json({"t": "spliced"})
        await waiting.ws.send_json({"t": "spliced"})
        await self.pump(half.ws, waiting.ws, sid)

    async def pump(self, src: web.WebSocketResponse, dst: web.WebSocketResponse, sid: str
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
                    self.metrics.inc("paced_seconds_total", wait)
                    await asyncio.sleep(wait)
                self.metrics.inc("bytes_total", len(msg.data))
                await dst.send_bytes(msg.data)
        except ConnectionError as exc:
            log.info("splice %s: a side went away: %s", sid[:6], exc or type(exc).__name__)
        finally:
            await dst.close()
            await src.close()

    # -- the rendezvous deadlines ---------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _on_timer(self, now: float) -> None:
        for expired in self.splices.handle_timer(now):
            expired.conn.resolve(None)
