"""The connection manager: at most one live session per trusted peer, kept in sync.

It dials trusted devices at their known addresses (and, later, addresses found by
mDNS, the DHT and relays), accepts the listener's sessions, resolves simultaneous
dials (the session initiated by the lower device ID wins), and runs the sync
protocol over each session: received messages go to the replica, its answers go
back, and a local change wakes every peer loop at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pgate.deviceid import DeviceID
from p2pgate.documents import Documents
from p2pgate.net.frames import Hello
from p2pgate.net.peers import DialFailed, Trust, dial
from p2pgate.net.session import Session, SessionClosed, SessionOptions
from p2pgate.registry import DeviceRegistry
from sync.session import PeerSession

__all__ = ["ConnectionManager"]

log = logging.getLogger("p2pgate.connect")


@dataclass
class _Link:
    session: Session
    initiated_by_us: bool
    since: float = field(default_factory=time.time)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class ConnectionManager:
    def __init__(self, trust: Trust, registry: DeviceRegistry, documents: Documents,
                 me: DeviceID, hello: Callable[[], Hello], *, redial: float = 5.0,
                 options: SessionOptions | None = None) -> None:
        self._trust = trust
        self._registry = registry
        self._documents = documents
        self._me = me
        self._hello = hello
        self._redial = redial
        self._options = options or SessionOptions()
        self._links: dict[DeviceID, _Link] = {}
        self._dialer: asyncio.Task[None] | None = None
        self._dial_now = asyncio.Event()
        documents.on_change(lambda _: self._wake_all())

    def start(self) -> None:
        self._dialer = asyncio.ensure_future(self._dial_loop())

    async def discovered(self, peer: DeviceID, addresses: tuple[str, ...]) -> None:
        """A trusted peer was found (mDNS): remember where, and dial it now."""
        await self._registry.record_seen(peer, list(addresses))
        self._dial_now.set()

    async def stop(self) -> None:
        if self._dialer is not None:
            self._dialer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dialer
        for link in list(self._links.values()):
            await link.session.close("node shutting down")
            if link.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await link.task

    async def reconnect_all(self, reason: str) -> None:
        """Close every session (peers dial again and hear our new Hello)."""
        for link in list(self._links.values()):
            await link.session.close(reason)
        self._dial_now.set()

    def _wake_all(self) -> None:
        for link in self._links.values():
            link.wake.set()

    # -- sessions --------------------------------------------------------------------

    async def accepted(self, session: Session) -> None:
        """The listener's callback for an incoming session."""
        self._adopt(session, initiated_by_us=False)

    def _adopt(self, session: Session, initiated_by_us: bool) -> None:
        peer = session.peer
        current = self._links.get(peer)
        if current is not None and not current.session.closed:
            lower_is_me = self._me < peer
            keep_new = initiated_by_us == lower_is_me
            if current.initiated_by_us == initiated_by_us or not keep_new:
                asyncio.ensure_future(session.close("duplicate session"))
                return
            asyncio.ensure_future(current.session.close("replaced by the preferred session"))
        link = _Link(session, initiated_by_us)
        self._links[peer] = link
        link.task = asyncio.ensure_future(self._run(link))
        log.info("session with %s (%s) via %s", session.peer_name, peer.short, session.path)

    async def _run(self, link: _Link) -> None:
        session, peer = link.session, str(link.session.peer)
        inbox: list[bytes] = []

        async def receive() -> None:
            with contextlib.suppress(SessionClosed):
                while True:
                    inbox.append(await session.receive())
                    link.wake.set()
            link.wake.set()

        receiver = asyncio.ensure_future(receive())
        sync: PeerSession | None = None
        try:
            # an address we dialed is worth dialing again; an accepted one is ephemeral
            addresses = [session.remote_address] if (
                link.initiated_by_us and session.remote_address) else None
            await self._registry.record_seen(session.peer, addresses)
            device = await self._registry.require(session.peer)
            if session.disc_key and self._trust.learn_disc_key(session.peer, session.disc_key):
                await self._registry.set_disc_key(session.peer, session.disc_key)
                log.info("%s has a new discovery key", session.peer.short)
            sync = await self._documents.peer_open(peer, device.policy)
            while not session.closed:
                link.wake.clear()  # before the step: a change during it wakes us again
                received, inbox[:] = list(inbox), []
                out, closed, timer = await self._documents.peer_step(sync, received)
                for message in out:
                    await session.send(message)
                if closed:
                    await session.close("sync session ended")
                    break
                if inbox:
                    continue
                delay = 5.0 if timer is None else max(0.0, min(5.0, timer - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(link.wake.wait(), delay)
        except SessionClosed:
            pass
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
            if sync is not None:
                await self._documents.peer_close(sync, session.close_reason or "closed")
            if self._links.get(session.peer) is link:
                del self._links[session.peer]
            log.info("session with %s ended: %s", session.peer.short, session.close_reason)

    # -- dialing -----------------------------------------------------------------------

    async def _dial_loop(self) -> None:
        while True:
            for device in await self._registry.trusted():
                link = self._links.get(device.device_id)
                if link is not None and not link.session.closed:
                    continue
                for address in device.addresses:
                    host, _, port = address.rpartition(":")
                    try:
                        session = await dial(self._trust, self._hello(), device.device_id,
                                             host.strip("[]"), int(port),
                                             options=self._options)
                    except (DialFailed, ValueError) as exc:
                        log.debug("dial %s at %s: %s", device.device_id.short, address, exc)
                        continue
                    self._adopt(session, initiated_by_us=True)
                    break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dial_now.wait(), self._redial)
            self._dial_now.clear()

    # -- status --------------------------------------------------------------------------

    def peers(self) -> list[dict[str, Any]]:
        out = []
        for device_id, link in sorted(self._links.items()):
            s = link.session
            out.append({
                "device_id": str(device_id), "name": s.peer_name, "state": "connected",
                "path": s.path, "address": s.remote_address, "since": link.since,
                "rtt_ms": None if s.rtt is None else round(s.rtt * 1000, 2),
                "bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received,
                "last_sync": self._documents.last_synced.get(str(device_id)),
                "backlog": self._documents.backlog.get(str(device_id), (0, 0))[0],
                "changes": self._documents.backlog.get(str(device_id), (0, 0))[1],
            })
        return out
