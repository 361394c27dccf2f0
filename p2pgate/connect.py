"""The connection manager: at most one live session per trusted peer, kept in sync.

It dials trusted devices at their known addresses (found by mDNS, or last seen)
and through relays, accepts the listener's and the relays' sessions, and runs the
sync protocol over each session: received messages go to the replica, its answers
go back, and a local change wakes every peer loop at once.

Choosing a path (happy eyeballs): direct addresses first; the relay attempt starts
`relay_delay` (500 ms) later, or at once without direct candidates; the first
session to complete Hello wins and the other is closed. Of two sessions with a
peer, a direct one replaces a relayed one; otherwise the one initiated by the lower
device ID wins. While a peer is relayed, its direct addresses are probed every
`probe_every` seconds (± 20 %) and on discovery; a direct session then *moves* the
peer off the relay: the new connection gets a new sync session (acknowledgements
and idempotent merges make that lossless, duplicates never reach apps) and the
relayed one is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pgate.deviceid import DeviceID
from p2pgate.documents import Documents
from p2pgate.net.frames import Hello
from p2pgate.net.peers import DialFailed, Trust, dial
from p2pgate.net.session import Session, SessionClosed, SessionOptions
from p2pgate.registry import Device, DeviceRegistry
from p2pgate.relay.client import RelayClient, RelayError
from sync.session import PeerSession

__all__ = ["ConnectionManager"]

log = logging.getLogger("p2pgate.connect")

STOP_GRACE = 2.0  # stop() waits no longer than this, in all, for peers and its tasks


async def _wait_at_most(waiting: Awaitable[Any], delay: float) -> None:
    """Wait until `waiting` is done (e.g. an event is set) or `delay` has passed.

    Not `asyncio.wait_for(event.wait(), delay)`: on Python 3.11 it swallows a
    cancellation that arrives just after the event was set, so a loop using it can
    never be cancelled (the node then hung on SIGTERM).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await waiting


async def _end_by(tasks: Sequence[asyncio.Task[Any]], deadline: float, *,
                  cancel: bool = True) -> None:
    """Wait for `tasks` until the loop time `deadline` (cancelling them first, or once
    it has passed), without ever swallowing a cancellation of the caller."""
    if not tasks:
        return
    if cancel:
        for task in tasks:
            task.cancel()
    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
    _, late = await asyncio.wait(tasks, timeout=timeout)
    for task in late:
        task.cancel()


@dataclass
class _Link:
    session: Session
    initiated_by_us: bool
    since: float = field(default_factory=time.time)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    probe_at: float = 0.0  # when to try a direct path again (relayed links)


class ConnectionManager:
    def __init__(self, trust: Trust, registry: DeviceRegistry, documents: Documents,
                 me: DeviceID, hello: Callable[[], Hello], *, redial: float = 5.0,
                 options: SessionOptions | None = None, relays: Sequence[RelayClient] = (),
                 relay_delay: float = 0.5, probe_every: float = 30.0,
                 visit: Callable[[str], RelayClient] | None = None) -> None:
        self._trust = trust
        self._registry = registry
        self._documents = documents
        self._me = me
        self._hello = hello
        self._redial = redial
        self._options = options or SessionOptions()
        self._relays = list(relays)
        self._visit = visit  # makes a client for a peer's relay that is not one of ours
        self._visiting: dict[str, tuple[RelayClient, asyncio.Task[None]]] = {}
        self._relay_delay = relay_delay
        self._probe_every = probe_every
        self._links: dict[DeviceID, _Link] = {}
        self._dialer: asyncio.Task[None] | None = None
        self._dial_now = asyncio.Event()
        documents.on_change(lambda _: self._wake_all())

    def start(self) -> None:
        self._dialer = asyncio.ensure_future(self._dial_loop())
        for relay in self._relays:  # a relay (re)connected: peers may be reachable now
            relay.on_connected = self._dial_now.set

    async def discovered(self, peer: DeviceID, addresses: tuple[str, ...]) -> None:
        """A trusted peer was found (mDNS): remember where, and dial it now (a relayed
        peer is probed at once)."""
        await self._registry.record_seen(peer, list(addresses))
        link = self._links.get(peer)
        if link is not None:
            link.probe_at = 0.0
        self._dial_now.set()

    async def stop(self) -> None:
        """Stop dialing and close every session; never waits on a peer longer than
        `STOP_GRACE` (a dead peer does not read our goodbye)."""
        deadline = asyncio.get_running_loop().time() + STOP_GRACE
        tasks = [t for t in (self._dialer, *(t for _, t in self._visiting.values())) if t]
        await _end_by(tasks, deadline)
        links = list(self._links.values())
        await _end_by([asyncio.ensure_future(link.session.close("node shutting down"))
                       for link in links], deadline, cancel=False)
        # each link task ends once its session has (its peer_close is local work)
        await _end_by([link.task for link in links if link.task is not None], deadline,
                      cancel=False)

    async def reconnect_all(self, reason: str) -> None:
        """Close every session (peers dial again and hear our new Hello)."""
        for link in list(self._links.values()):
            await link.session.close(reason)
        self._dial_now.set()

    def path_of(self, peer: DeviceID) -> str | None:
        """The path of the live session with `peer`, or None."""
        link = self._links.get(peer)
        return None if link is None or link.session.closed else link.session.path

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
            old, new = current.session.path, session.path
            if old == "relay" and new != "relay":
                log.info("moving %s from the relay to a %s path", peer.short, new)
            elif new == "relay" and old != "relay":
                asyncio.ensure_future(session.close("a direct session exists"))
                return
            else:
                lower_is_me = self._me < peer
                keep_new = initiated_by_us == lower_is_me
                if current.initiated_by_us == initiated_by_us or not keep_new:
                    asyncio.ensure_future(session.close("duplicate session"))
                    return
            asyncio.ensure_future(current.session.close("replaced by the preferred session"))
        link = _Link(session, initiated_by_us)
        if session.path == "relay":
            link.probe_at = time.monotonic() + self._probe_every * random.uniform(0.8, 1.2)  # noqa: S311
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
                link.initiated_by_us and session.remote_address and session.path == "direct"
            ) else None
            await self._registry.record_seen(session.peer, addresses, session.relays)
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
                await _wait_at_most(link.wake.wait(), delay)
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
                self._dial_now.set()  # reach the peer again, by whatever path is left
            log.info("session with %s ended: %s", session.peer.short, session.close_reason)

    # -- dialing -----------------------------------------------------------------------

    async def _dial_loop(self) -> None:
        while True:
            devices = await self._registry.trusted()
            await asyncio.gather(*(self._reach(device) for device in devices))
            await _wait_at_most(self._dial_now.wait(), self._redial)
            self._dial_now.clear()

    async def _reach(self, device: Device) -> None:
        link = self._links.get(device.device_id)
        if link is None or link.session.closed:
            session = await self._happy_eyeballs(device)
        elif link.session.path == "relay" and time.monotonic() >= link.probe_at:
            link.probe_at = time.monotonic() + self._probe_every * random.uniform(0.8, 1.2)  # noqa: S311
            session = await self._dial_direct(device)
        else:
            return
        if session is not None:
            self._adopt(session, initiated_by_us=True)

    async def _happy_eyeballs(self, device: Device) -> Session | None:
        attempts = {asyncio.ensure_future(self._dial_direct(device))}
        winner: Session | None = None
        try:
            if device.addresses:
                done, attempts = await asyncio.wait(attempts, timeout=self._relay_delay)
                if done and (session := done.pop().result()) is not None:
                    return session
            if self._relays or device.relays:
                attempts.add(asyncio.ensure_future(self._dial_relayed(device)))
            while attempts and winner is None:
                done, attempts = await asyncio.wait(attempts, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    session = task.result()
                    if session is not None and winner is None:
                        winner = session
                    elif session is not None:
                        await session.close("another path won")
        finally:
            for task in attempts:
                task.cancel()
            if attempts:  # asyncio.wait: a cancellation of ours is never swallowed here
                await asyncio.wait(attempts)
            for task in attempts:
                if not task.cancelled() and task.exception() is None and (
                        late := task.result()) is not None:
                    await late.close("another path won")
        return winner

    async def _dial_direct(self, device: Device) -> Session | None:
        for address in device.addresses:
            host, _, port = address.rpartition(":")
            try:
                return await dial(self._trust, self._hello(), device.device_id,
                                  host.strip("[]"), int(port), options=self._options)
            except (DialFailed, ValueError) as exc:
                log.debug("dial %s at %s: %s", device.device_id.short, address, exc)
        return None

    async def _dial_relayed(self, device: Device) -> Session | None:
        """Through the relays the peer named in its Hello (through ours if it named
        none): ours first, then others we connect to as a visitor."""
        ours = {r.url: r for r in self._relays}
        named = [u.rstrip("/") for u in device.relays] or list(ours)
        for url in sorted(named, key=lambda u: u not in ours):
            relay = ours.get(url) or await self._visitor(url)
            if relay is None or not relay.connected:
                continue
            try:
                stream = await relay.connect(device.device_id)
                return await dial(self._trust, self._hello(), device.device_id, relay.url, 0,
                                  stream=stream, options=self._options)
            except (RelayError, DialFailed) as exc:
                log.debug("relay %s to %s: %s", relay.url, device.device_id.short, exc)
        return None

    async def _visitor(self, url: str) -> RelayClient | None:
        """A control connection to someone else's relay, kept for later dials."""
        if url in self._visiting:
            return self._visiting[url][0]
        if self._visit is None:
            return None
        relay = self._visit(url)
        self._visiting[url] = (relay, asyncio.ensure_future(relay.run()))
        await _wait_at_most(relay.wait_connected(), 5)
        return relay

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
