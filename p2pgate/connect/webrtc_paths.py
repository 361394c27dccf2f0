"""WebRTC paths to relayed peers: one sealed-signalling endpoint per relay of ours.

`open(peer)` offers a data channel through the first relay we are logged into and
returns the stream, for the dialer to run admission and pinned TLS inside; a channel
a peer opens to us goes to `serve` (the P2P listener's `handle`), as a relay splice
does. ICE lists the relay's STUN server (from its welcome) only while our last probe
of it answered (`RelayClient.stun_url`): a silent server would cost 5 s of gathering
per side; without it, ICE offers host candidates at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from p2pgate.identity.deviceid import DeviceID
from p2pgate.net.peers import DialFailed, Trust
from p2pgate.net.rtc_signalling import RtcSignalling
from p2pgate.net.webrtc import WebRtcStream
from p2pgate.relay.client import RelayClient
from p2pgate.stream import Stream

__all__ = ["WebRtcPaths"]


class WebRtcPaths:
    """Opens and accepts WebRTC data channels, signalled through our relays."""

    def __init__(self, relays: Sequence[RelayClient], me: DeviceID, trust: Trust,
                 serve: Callable[[Stream], Awaitable[None]]) -> None:
        async def accepted(_: DeviceID, stream: WebRtcStream) -> None:
            await serve(stream)

        self._signalling = [(relay, RtcSignalling(relay, me, trust.key_of, accepted))
                            for relay in relays]
        for relay, signalling in self._signalling:  # offers we answer follow its probes
            relay.on_stun = _follow_stun(relay, signalling)

    async def open(self, peer: DeviceID) -> Stream:
        """A data channel to `peer` (WebRtcFailed, DialFailed: none opened)."""
        for relay, signalling in self._signalling:
            if relay.connected:
                signalling.stun_url = await relay.stun_url()
                return await signalling.connect(peer)
        raise DialFailed("no relay to signal through")

    async def close(self) -> None:
        """End every attempt under way."""
        for _, signalling in self._signalling:
            await signalling.close()


def _follow_stun(relay: RelayClient, signalling: RtcSignalling) -> Callable[[], None]:
    def probed() -> None:
        signalling.stun_url = relay.current_stun_url()
    return probed
