"""Opening a session to a peer: at its direct addresses, or through a relay.

Every failure below (sockets, TLS, relay answers, timeouts, aiohttp) leaves these
functions as `DialFailed`, mapped at this boundary by `dial_errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence

import aiohttp

from p2pgate.identity.deviceid import DeviceID
from p2pgate.net.frames import PeerHello
from p2pgate.net.peers import DialFailed, Trust, dial
from p2pgate.net.session import Session, SessionOptions
from p2pgate.net.webrtc import WebRtcFailed
from p2pgate.relay.client import RelayClient, RelayError
from p2pgate.storage.registry import Device
from p2pgate.stream import Stream, StreamClosed
from p2pgate.supervisor import Supervisor
from p2pgate.urls import canonical_relay_url, relay_base_url

__all__ = ["Dialer", "dial_errors"]

log = logging.getLogger("p2pgate.connect")

VISITOR_CONNECT_WAIT = 5.0


@contextlib.contextmanager
def dial_errors(what: str) -> Iterator[None]:
    """Map transport, relay and timeout errors to `DialFailed`."""
    try:
        yield
    except DialFailed:
        raise
    except (TimeoutError, aiohttp.ClientError, OSError, RelayError, StreamClosed,
            ValueError, WebRtcFailed) as exc:
        raise DialFailed(f"{what}: {type(exc).__name__}: {exc}") from None


class Dialer:
    """Dials peers by the paths the connection core asks for."""

    def __init__(self, trust: Trust, hello: Callable[[], PeerHello], options: SessionOptions,
                 relays: Sequence[RelayClient], visit: Callable[[str], RelayClient] | None,
                 supervisor: Supervisor,
                 webrtc: Callable[[DeviceID], Awaitable[Stream]] | None = None) -> None:
        self._trust = trust
        self._hello = hello
        self._options = options
        self._relays = list(relays)
        self._visit = visit  # makes a client for a peer's relay that is not one of ours
        self._visiting: dict[str, tuple[RelayClient, asyncio.Task[None]]] = {}
        self._supervisor = supervisor
        self._webrtc = webrtc  # opens a data channel to a peer (signalled via our relays)

    @property
    def has_relays(self) -> bool:
        """Whether we have relays of our own (so every peer has a relay to try)."""
        return bool(self._relays)

    def visitor_tasks(self) -> list[asyncio.Task[None]]:
        """The control connections to other people's relays (to stop them)."""
        return [task for _, task in self._visiting.values()]

    def _hello_for(self, replaces: bytes) -> PeerHello:
        return dataclasses.replace(self._hello(), replaces=replaces)

    async def direct(self, device: Device, replaces: bytes = b"") -> Session:
        """A session at the first of the peer's addresses that answers (`replaces`: the
        ID of the suspect session it is to replace)."""
        failures = []
        for address in device.addresses:
            host, _, port = address.rpartition(":")
            try:
                with dial_errors(f"at {address}"):
                    return await dial(self._trust, self._hello_for(replaces),
                                      device.device_id, host.strip("[]"), int(port),
                                      options=self._options)
            except DialFailed as exc:
                log.debug("dial %s at %s: %s", device.device_id.short, address, exc)
                failures.append(str(exc))
        raise DialFailed("; ".join(failures) or "no direct address known")

    async def relayed(self, device: Device, replaces: bytes = b"") -> Session:
        """Through the relays the peer named in its Hello (through ours if it named
        none): ours first, then others we connect to as a visitor."""
        ours = {r.url: r for r in self._relays}
        named = [_canonical(u) for u in device.relays] or list(ours)
        failures = []
        for url in sorted(named, key=lambda u: _base(u) not in ours):
            relay = ours.get(_base(url)) or await self._visitor(url)
            if relay is None or not relay.connected:
                failures.append(f"{url}: not connected")
                continue
            try:
                with dial_errors(f"relay {relay.url}"):
                    stream = await relay.connect(device.device_id)
                    return await dial(self._trust, self._hello_for(replaces),
                                      device.device_id, relay.url, 0, stream=stream,
                                      options=self._options)
            except DialFailed as exc:
                log.debug("relay %s to %s: %s", relay.url, device.device_id.short, exc)
                failures.append(str(exc))
        raise DialFailed("; ".join(failures) or "no relay to try")

    async def webrtc(self, device: Device) -> Session:
        """A session over a WebRTC data channel to the peer (admission and pinned TLS
        inside it, as on the relay path)."""
        if self._webrtc is None:
            raise DialFailed("WebRTC is off")
        with dial_errors("webrtc"):
            stream = await self._webrtc(device.device_id)
            return await dial(self._trust, self._hello(), device.device_id, "webrtc", 0,
                              stream=stream, options=self._options)

    async def _visitor(self, url: str) -> RelayClient | None:
        """A control connection to someone else's relay, kept for later dials (while
        its task runs: a client whose task ended is replaced, never handed out)."""
        cached = self._visiting.get(url)
        if cached is not None and not cached[1].done():
            return cached[0]
        self._visiting.pop(url, None)
        if self._visit is None:
            return None
        relay = self._visit(url)
        self._visiting[url] = (relay, self._supervisor.spawn(f"relay visitor {url}",
                                                             relay.run))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(VISITOR_CONNECT_WAIT):
                await relay.wait_connected()
        return relay


def _base(url: str) -> str:
    """A relay's name (its URL without ?id=), as our relay clients are keyed."""
    try:
        return relay_base_url(url)
    except ValueError:
        return url


def _canonical(url: str) -> str:
    """A relay URL a peer named, spelled as ours are (so ours is recognised)."""
    try:
        return canonical_relay_url(url)
    except ValueError:  # unparseable: dialing it fails and is reported
        return url
