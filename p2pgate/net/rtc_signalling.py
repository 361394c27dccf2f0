"""WebRTC attempts driven by sealed signalling over a relay control connection.

The adapter of `rtc_signal` (the core): it seals our offers, answers and byes and
sends them with the channel's `signal(peer, data)`, takes what arrives through
`on_signal` (a `RelayClient` fits `SignalChannel`: it passes on signals from
trusted devices only), and runs the `PeerAttempt`s. `connect(peer)` offers and
returns the open `WebRtcStream`; an offer we answer ends in `on_stream(peer,
stream)`. The dialer of admission and TLS is the offerer; the answerer serves the
stream with `Listener.handle`. A message that does not open, a replay, a signal for
no attempt: refused (logged), nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from p2pgate.errors import LocalProtocolError, RemoteProtocolError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.net.rtc_signal import (
    Answered,
    Attempt,
    Ended,
    Offered,
    RtcSignaller,
    Superseded,
)
from p2pgate.net.webrtc import PeerAttempt, WebRtcFailed, WebRtcStream
from p2pgate.supervisor import Supervisor

__all__ = ["RtcSignalling", "SignalChannel"]

log = logging.getLogger("p2pgate.net.webrtc")


class SignalChannel(Protocol):
    """Where signalling travels (a `RelayClient`)."""

    on_signal: Callable[[DeviceID, Any], None] | None

    async def signal(self, peer: DeviceID, data: Any) -> None:
        """Send `data` to `peer`."""
        ...


class RtcSignalling:
    """Our WebRTC attempts with every trusted peer over one signalling channel."""

    def __init__(self, channel: SignalChannel, me: DeviceID,
                 key_of: Callable[[DeviceID], bytes | None],
                 on_stream: Callable[[DeviceID, WebRtcStream], Awaitable[None]],
                 stun_url: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.core = RtcSignaller(me, key_of)
        self._channel = channel
        self._on_stream = on_stream
        self.stun_url = stun_url
        self._clock, self._wall = clock, wall
        self._peers: dict[bytes, PeerAttempt] = {}  # attempt ID -> its connection
        self._answers: dict[bytes, asyncio.Future[str]] = {}  # our offers' answers
        self._tasks = Supervisor(logger=log)
        self.refused = 0  # signalling messages refused
        channel.on_signal = self._received

    async def close(self) -> None:
        """Stop: end every attempt still under way."""
        self._channel.on_signal = None
        await self._tasks.stop()
        for fut in self._answers.values():
            fut.cancel()
        for peer in list(self._peers.values()):
            await peer.abort()
        self._peers.clear()

    async def connect(self, peer: DeviceID) -> WebRtcStream:
        """Offer a data channel to `peer`; WebRtcFailed if none opens in the deadline,
        the peer ends the attempt, or its simultaneous offer wins (we answer that one)."""
        try:
            attempt = self.core.begin(peer, self._clock())
        except LocalProtocolError as exc:
            raise WebRtcFailed(str(exc)) from None
        answer = asyncio.get_running_loop().create_future()
        self._answers[attempt.attempt_id] = answer  # `_end` fails it if we are superseded
        try:
            async with asyncio.timeout(max(0.0, attempt.deadline - self._clock())):
                attempt_peer = await PeerAttempt.offer(self.stun_url)
                self._peers[attempt.attempt_id] = attempt_peer
                if answer.done():  # their offer won while we gathered
                    await answer
                data = self.core.offered(attempt, attempt_peer.local_sdp, self._wall())
                await self._channel.signal(peer, data)
                sdp = await answer
            await attempt_peer.accept_answer(sdp)
            stream = await attempt_peer.opened(max(0.0, attempt.deadline - self._clock()))
        except TimeoutError:
            await self._give_up(attempt)
            raise WebRtcFailed(f"no answer from {peer.short} in time") from None
        except LocalProtocolError as exc:  # our offer is too large to signal
            await self._give_up(attempt)
            raise WebRtcFailed(str(exc)) from None
        except BaseException:
            await self._give_up(attempt)
            raise
        finally:
            self._answers.pop(attempt.attempt_id, None)
            self._peers.pop(attempt.attempt_id, None)
        self.core.connected(attempt)
        return stream

    async def _give_up(self, attempt: Attempt) -> None:
        peer = self._peers.pop(attempt.attempt_id, None)
        if peer is not None:
            await peer.abort()
        data = self.core.bye(attempt, self._wall())
        if data is not None:
            with contextlib.suppress(Exception):
                await self._channel.signal(attempt.peer, data)

    def _received(self, peer: DeviceID, data: Any) -> None:
        for ended in self.core.expire(self._clock()):
            self._end(ended)
        try:
            outcome = self.core.receive(peer, data, self._clock(), self._wall())
        except RemoteProtocolError as exc:
            self.refused += 1
            log.info("signalling from %s refused: %s", peer.short, exc)
            return
        if isinstance(outcome, Superseded):
            self._end(outcome.ended)
            outcome = outcome.offered
        if isinstance(outcome, Offered):
            self._tasks.fire("webrtc answer", self._answer(outcome))
        elif isinstance(outcome, Answered):
            fut = self._answers.get(outcome.attempt.attempt_id)
            if fut is not None and not fut.done():
                fut.set_result(outcome.sdp)
        elif isinstance(outcome, Ended):
            self._end(outcome)

    def _end(self, ended: Ended) -> None:
        """An attempt is over: fail its `connect`, or abort the connection we answered."""
        attempt_id = ended.attempt.attempt_id
        fut = self._answers.get(attempt_id)
        if fut is not None and not fut.done():
            fut.set_exception(WebRtcFailed(ended.reason))
        peer = self._peers.pop(attempt_id, None)
        if peer is not None:
            self._tasks.fire("webrtc abort", peer.abort())

    async def _answer(self, offered: Offered) -> None:
        attempt = offered.attempt
        try:
            peer = await PeerAttempt.answer(offered.sdp, self.stun_url)
        except WebRtcFailed as exc:
            log.info("webrtc offer from %s not answered: %s", attempt.peer.short, exc)
            await self._give_up(attempt)
            return
        if self.core.attempts.get(attempt.peer) is not attempt:  # ended meanwhile
            await peer.abort()
            return
        self._peers[attempt.attempt_id] = peer
        try:
            await self._channel.signal(attempt.peer, self.core.answered(attempt, peer.local_sdp,
                                                                        self._wall()))
            stream = await peer.opened(max(0.0, attempt.deadline - self._clock()))
        except Exception as exc:  # noqa: BLE001 (the relay went, ICE failed, ...: one attempt)
            log.info("webrtc attempt from %s failed: %s", attempt.peer.short, exc)
            await self._give_up(attempt)
            return
        finally:
            self._peers.pop(attempt.attempt_id, None)
        self.core.connected(attempt)
        try:
            await self._on_stream(attempt.peer, stream)
        except BaseException:
            await stream.close()
            raise
