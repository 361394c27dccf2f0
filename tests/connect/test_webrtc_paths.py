"""WebRtcPaths without aiortc: which STUN server an attempt lists, and an attempt the peer
began before our network changed (we wait for it instead of failing at once)."""

from __future__ import annotations

import asyncio
import time

import pytest

from p2pgate.connect.webrtc_paths import WebRtcPaths
from p2pgate.identity.deviceid import DeviceID
from p2pgate.net.peers import DialFailed
from p2pgate.net.rtc_signal import ATTEMPT_DEADLINE, Attempt, AttemptState
from p2pgate.net.webrtc import WebRtcFailed

ME, PEER = DeviceID(bytes([1]) * 32), DeviceID(bytes([2]) * 32)


class Relay:
    """What WebRtcPaths uses of a RelayClient (its STUN probe answered `stun`)."""

    def __init__(self, stun: str | None) -> None:
        self.connected, self.stun = True, stun
        self.on_signal = self.on_stun = None
        self.signalled: list = []

    async def stun_url(self):
        return self.stun

    def current_stun_url(self):
        return self.stun

    async def signal(self, peer, data):
        self.signalled.append((peer, data))


class Trust:
    @staticmethod
    def key_of(_peer):
        return bytes(32)


async def served(_stream):
    pass


def their_attempt(paths, began):
    _, signalling = paths._signalling[0]
    attempt = Attempt(PEER, bytes(16), False, AttemptState.CONNECTING,
                      began + ATTEMPT_DEADLINE, signalled=True)
    signalling.core.attempts[PEER] = attempt
    return signalling, attempt


async def test_answers_follow_the_stun_probe():
    relay = Relay(None)
    paths = WebRtcPaths([relay], ME, Trust(), served)
    _, signalling = paths._signalling[0]
    relay.stun = "stun:192.0.2.1:3478"
    relay.on_stun()  # a probe answered: offers we answer list the server too
    assert signalling.stun_url == "stun:192.0.2.1:3478"
    relay.stun = None
    relay.on_stun()
    assert signalling.stun_url is None
    await paths.close()


async def test_an_attempt_the_peer_began_after_our_change_fails_ours_at_once():
    paths = WebRtcPaths([Relay(None)], ME, Trust(), served)
    paths.network_changed()
    their_attempt(paths, time.monotonic())
    with pytest.raises(WebRtcFailed, match="under way"):
        await asyncio.wait_for(paths.open(PEER), 1)
    await paths.close()


async def test_an_attempt_the_peer_began_before_our_change_is_waited_for():
    paths = WebRtcPaths([Relay(None)], ME, Trust(), served)
    signalling, _ = their_attempt(paths, time.monotonic() - 1)
    paths.network_changed()
    opening = asyncio.ensure_future(paths.open(PEER))
    await asyncio.sleep(0.3)
    assert not opening.done()  # waiting for theirs to end
    await signalling._on_stream(PEER, object())  # their channel opened meanwhile
    del signalling.core.attempts[PEER]
    with pytest.raises(DialFailed, match="opened a channel"):
        await asyncio.wait_for(opening, 2)
    await paths.close()
