"""WebRTC paths to relayed peers: one sealed-signalling endpoint per relay of ours.

`open(peer)` offers a data channel through the first relay we are logged into and
returns the stream, for the dialer to run admission and pinned TLS inside; a channel
a peer opens to us goes to `serve` (the P2P listener's `handle`), as a relay splice
does. ICE lists the relay's STUN server (from its welcome) only while our last probe
of it answered (`RelayClient.stun_url`): a silent server would cost 5 s of gathering
per side; without it, ICE offers host candidates at once.

An attempt the peer began (we answer it) normally makes ours fail at once ("under
way"); after a network change (`network_changed()`) ours waits for theirs to end
(its deadline at most) and then runs, unless their channel opened: theirs was
gathered before our addresses changed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from p2pgate.identity.deviceid import DeviceID
from p2pgate.net.peers import DialFailed, Trust
from p2pgate.net.rtc_signal import ATTEMPT_DEADLINE
from p2pgate.net.rtc_signalling import RtcSignalling
from p2pgate.net.webrtc import WebRtcStream
from p2pgate.relay.client import RelayClient
from p2pgate.stream import Stream

__all__ = ["WebRtcPaths"]


class WebRtcPaths:
    """Opens and accepts WebRTC data channels, signalled through our relays."""

    def __init__(self, relays: Sequence[RelayClient], me: DeviceID, trust: Trust,
                 serve: Callable[[Stream], Awaitable[None]]) -> None:
        async def accepted(peer: DeviceID, stream: WebRtcStream) -> None:
            self._opened_by[peer] = time.monotonic()
            await serve(stream)

        self._opened_by: dict[DeviceID, float] = {}  # when a peer's channel last opened
        self._changed_at = float("-inf")  # when our network last changed (monotonic)

        self._signalling = [(relay, RtcSignalling(relay, me, trust.key_of, accepted))
                            for relay in relays]
        for relay, signalling in self._signalling:  # offers we answer follow its probes
            relay.on_stun = _follow_stun(relay, signalling)

    async def open(self, peer: DeviceID) -> Stream:
        """A data channel to `peer` (WebRtcFailed, DialFailed: none opened)."""
        for relay, signalling in self._signalling:
            if relay.connected:
                signalling.stun_url = await relay.stun_url()
                await self._after_their_attempt(signalling, peer)
                return await signalling.connect(peer)
        raise DialFailed("no relay to signal through")

    def network_changed(self) -> None:
        """Our addresses changed: a peer's attempt under way began with the old ones."""
        self._changed_at = time.monotonic()

    async def _after_their_attempt(self, signalling: RtcSignalling, peer: DeviceID) -> None:
        """Wait for the peer's attempt if it began before our network changed (DialFailed
        if its channel opened)."""
        theirs = signalling.core.attempts.get(peer)
        if theirs is None or theirs.ours or (
                theirs.deadline - ATTEMPT_DEADLINE >= self._changed_at):
            return  # nothing to wait for (or `connect` fails at once: under way)
        while signalling.core.attempts.get(peer) is theirs and (  # noqa: ASYNC110 (it has
                time.monotonic() < theirs.deadline):  # no event for an attempt's end)
            await asyncio.sleep(0.1)
        if self._opened_by.get(peer, float("-inf")) > self._changed_at:
            raise DialFailed(f"{peer.short}'s own attempt opened a channel: ours is not needed")

    async def close(self) -> None:
        """End every attempt under way."""
        for _, signalling in self._signalling:
            await signalling.close()


def _follow_stun(relay: RelayClient, signalling: RtcSignalling) -> Callable[[], None]:
    def probed() -> None:
        signalling.stun_url = relay.current_stun_url()
    return probed
