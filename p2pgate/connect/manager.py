"""The connection manager: the asyncio adapter of `ConnectionCore`.

It feeds the core the trusted peers (from the registry), sightings, dial outcomes
and sessions (dialed, accepted by the listener, relayed), carries out its commands
(dial, cancel, close) as referenced tasks, and runs the sync protocol over each
adopted session (`link.run_sync`). The dial loop runs under a `Supervisor`; every
dial failure, whatever raised it, is logged and reported to the core, which retries
with backoff. The core's clock is the loop's monotonic time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from p2pgate.connect.core import (
    CancelDials,
    CloseSession,
    ConnectionCore,
    DialDirect,
    DialRelay,
    DialWebRtc,
    PeerUnreachable,
    SessionAdopted,
)
from p2pgate.connect.dialing import Dialer
from p2pgate.connect.link import Link, run_sync, wait_at_most
from p2pgate.documents import Documents
from p2pgate.identity.deviceid import DeviceID
from p2pgate.net.frames import PeerHello
from p2pgate.net.peers import DialFailed, Trust
from p2pgate.net.session import Session, SessionOptions
from p2pgate.relay.client import RelayClient
from p2pgate.storage.registry import Device, DeviceRegistry
from p2pgate.stream import Stream
from p2pgate.supervisor import Supervisor

__all__ = ["ConnectionManager"]

log = logging.getLogger("p2pgate.connect")

STOP_GRACE = 2.0  # stop() waits no longer than this, in all, for peers and its tasks


class ConnectionManager:
    """At most one live session per trusted peer, each kept in sync."""

    def __init__(self, trust: Trust, registry: DeviceRegistry, documents: Documents,
                 me: DeviceID, hello: Callable[[], PeerHello], *, redial: float = 5.0,
                 options: SessionOptions | None = None, relays: Sequence[RelayClient] = (),
                 relay_delay: float = 0.5, probe_every: float = 30.0,
                 visit: Callable[[str], RelayClient] | None = None,
                 rng: random.Random | None = None, max_redial: float = 30.0,
                 webrtc: Callable[[DeviceID], Awaitable[Stream]] | None = None) -> None:
        self._trust = trust
        self._registry = registry
        self._documents = documents
        self._redial = redial
        self._relays = list(relays)
        self._supervisor = Supervisor(first_backoff=0.5, max_backoff=redial, logger=log)
        self._dialer = Dialer(trust, hello, options or SessionOptions(), relays, visit,
                              self._supervisor, webrtc)
        self._core = ConnectionCore(me, rng or random.Random(), redial=redial,  # noqa: S311
                                    max_redial=max_redial, relay_delay=relay_delay,
                                    probe_every=probe_every, webrtc=webrtc is not None)
        self._devices: dict[DeviceID, Device] = {}
        self._links: dict[DeviceID, Link] = {}
        self._moves: dict[DeviceID, dict[str, Any]] = {}  # each peer's last move, for /peers
        self._sessions: dict[int, Session] = {}  # offered to the core, not yet closed
        self._keys = itertools.count(1)
        self._attempts: dict[tuple[DeviceID, str], asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        documents.on_change(lambda _: self._wake_links())

    # -- public API ----------------------------------------------------------------------

    def start(self) -> None:
        """Start dialing trusted peers (the loop runs under the supervisor)."""
        self._loop_task = self._supervisor.spawn("dial loop", self._dial_loop)
        for relay in self._relays:  # a relay (re)connected: peers may be reachable now
            relay.on_connected = self._paths_changed
        self._trust.on_loaded = self._wake.set  # a newly paired device: dial it now

    async def discovered(self, peer: DeviceID, addresses: tuple[str, ...]) -> None:
        """A trusted peer was found (mDNS, DHT): remember where, and dial it now (a
        relayed peer is probed at once)."""
        await self._registry.record_seen(peer, list(addresses))
        self._core.peer_discovered(peer, addresses, self._now())
        self._wake.set()

    def network_changed(self) -> None:
        """Our addresses changed: backoffs start over, every peer is tried now (a relayed
        one over WebRTC and its direct addresses)."""
        self._core.network_changed(self._now())
        self._wake.set()

    async def accepted(self, session: Session) -> None:
        """The listener's callback for an incoming session."""
        self._offer(session, initiated_by_us=False)

    async def reconnect_all(self, reason: str) -> None:
        """Close every session (peers dial again and hear our new Hello)."""
        for link in list(self._links.values()):
            await link.session.close(reason)
        self._paths_changed()

    def path_of(self, peer: DeviceID) -> str | None:
        """The path of the live session with `peer`, or None."""
        link = self._links.get(peer)
        return None if link is None or link.session.closed else link.session.path

    async def stop(self) -> None:
        """Stop dialing and close every session; never waits on a peer longer than
        `STOP_GRACE` in all (a dead peer does not read our goodbye)."""
        deadline = self._now() + STOP_GRACE
        loops = [t for t in (self._loop_task, *self._attempts.values(),
                             *self._dialer.visitor_tasks()) if t is not None]
        await _end_by(loops, deadline)
        links = list(self._links.values())
        await _end_by([asyncio.ensure_future(link.session.close("node shutting down"))
                       for link in links], deadline, cancel=False)
        # each link task ends once its session has (its peer_close is local work)
        await _end_by([link.task for link in links if link.task is not None], deadline,
                      cancel=False)
        await _end_by(list(self._closing), deadline, cancel=False)

    def peers(self) -> list[dict[str, Any]]:
        """The live sessions, for the API's peer list."""
        out = []
        for device_id, link in sorted(self._links.items()):
            s = link.session
            backlog = self._documents.backlog.get(str(device_id), (0, 0))
            out.append({
                "device_id": str(device_id), "name": s.peer_name, "state": "connected",
                "path": s.path, "address": s.remote_address, "since": link.since,
                "suspect": s.suspect, "last_move": self._moves.get(device_id),
                "rtt_ms": None if s.rtt is None else round(s.rtt * 1000, 2),
                "bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received,
                "last_sync": self._documents.last_synced.get(str(device_id)),
                "backlog": backlog[0], "changes": backlog[1],
            })
        return out

    # -- the dial loop -------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _paths_changed(self) -> None:
        self._core.paths_changed(self._now())
        self._wake.set()

    def _wake_links(self) -> None:
        for link in self._links.values():
            link.wake.set()

    async def _dial_loop(self) -> None:
        """Refresh the trusted peers, run the core's timers, carry out its commands."""
        while True:
            devices = await self._registry.trusted()
            self._devices = {d.device_id: d for d in devices}
            relayed = self._dialer.has_relays
            self._core.peers_known(
                [(d.device_id, bool(d.addresses), relayed or bool(d.relays)) for d in devices],
                self._now())
            self._wake.clear()
            self._core.handle_timer(self._now())
            self._carry_out()
            timer = self._core.get_timer()
            delay = self._redial if timer is None else min(self._redial,
                                                           max(0.0, timer - self._now()))
            await wait_at_most(self._wake, delay)

    def _carry_out(self) -> None:
        """Do what the core asked for."""
        while (output := self._core.next_event()) is not None:
            if isinstance(output, DialDirect | DialRelay | DialWebRtc):
                self._start_attempt(output)
            elif isinstance(output, CancelDials):
                for (peer, path), task in list(self._attempts.items()):
                    if peer == output.peer and output.path in (None, path):
                        task.cancel()
                        del self._attempts[(peer, path)]
            elif isinstance(output, CloseSession):
                self._close(output.key, output.reason)
            elif isinstance(output, SessionAdopted):
                self._adopted(output)
            elif isinstance(output, PeerUnreachable):
                level = logging.INFO if output.tried else logging.DEBUG
                log.log(level, "no path to %s (tried: %s); dialing again in %.0f s",
                        output.peer.short, ", ".join(output.tried) or "nothing",
                        output.retry_at - self._now())

    def _start_attempt(self, command: DialDirect | DialRelay | DialWebRtc) -> None:
        path = ("direct" if isinstance(command, DialDirect) else
                "relay" if isinstance(command, DialRelay) else "webrtc")
        device = self._devices.get(command.peer)
        if device is None:
            self._core.dial_failed(command.peer, path, self._now())
            return
        replaces_key = None if isinstance(command, DialWebRtc) else command.replaces
        replaced = None if replaces_key is None else self._sessions.get(replaces_key)
        replaces = b"" if replaced is None else replaced.session_id
        task = self._supervisor.fire(f"dial {command.peer.short} ({path})",
                                     self._attempt(device, path, replaces))
        self._attempts[(command.peer, path)] = task

    async def _attempt(self, device: Device, path: str, replaces: bytes) -> None:
        """One dial (naming the session it `replaces`, if any); any failure is logged
        and reported, never raised."""
        peer = device.device_id
        try:
            if path == "direct":
                session = await self._dialer.direct(device, replaces)
            elif path == "relay":
                session = await self._dialer.relayed(device, replaces)
            else:
                session = await self._dialer.webrtc(device)
        except DialFailed as exc:
            log.debug("dial %s via %s failed: %s", peer.short, path, exc)
            self._attempt_failed(peer, path)
            return
        except Exception as exc:  # noqa: BLE001 (a bug below: log it, keep dialing)
            log.warning("dial %s via %s failed: %s: %s", peer.short, path,
                        type(exc).__name__, exc, exc_info=exc)
            self._attempt_failed(peer, path)
            return
        if self._attempts.get((peer, path)) is asyncio.current_task():
            del self._attempts[(peer, path)]
        self._offer(session, initiated_by_us=True)

    def _attempt_failed(self, peer: DeviceID, path: str) -> None:
        if self._attempts.get((peer, path)) is asyncio.current_task():
            del self._attempts[(peer, path)]
            self._core.dial_failed(peer, path, self._now())
            self._carry_out()
            self._wake.set()  # the core may have a new timer

    # -- sessions ------------------------------------------------------------------------

    def _offer(self, session: Session, initiated_by_us: bool) -> None:
        peer, now = session.peer, self._now()
        current = self._links.get(peer)
        if current is not None and current.session.closed:  # its task is finishing
            self._core.session_ended(peer, current.key, now)
        replaces = None  # the peer's Hello names the session of ours it replaces
        if (current is not None and not initiated_by_us and session.replaces
                and session.replaces == current.session.session_id):
            replaces = current.key
        key = next(self._keys)
        self._sessions[key] = session
        self._core.session_established(peer, key, session.path, initiated_by_us, now,
                                       replaces)
        self._carry_out()
        self._wake.set()

    def _suspect_changed(self, link: Link, suspect: bool) -> None:
        peer = link.session.peer
        if self._links.get(peer) is not link:
            return
        if suspect:
            self._core.session_suspect(peer, link.key, self._now())
        else:
            self._core.session_recovered(peer, link.key, self._now())
        self._carry_out()
        self._wake.set()

    def _close(self, key: int, reason: str) -> None:
        session = self._sessions.pop(key, None)
        if session is not None:
            task = self._supervisor.fire("close session", session.close(reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _adopted(self, adopted: SessionAdopted) -> None:
        session = self._sessions[adopted.key]
        if adopted.moved_from is not None and (adopted.why or
                                               adopted.moved_from != session.path):
            log.info("moving %s from the %s to a %s path%s", adopted.peer.short,
                     adopted.moved_from, session.path,
                     f" ({adopted.why})" if adopted.why else "")
            self._moves[adopted.peer] = {"from": adopted.moved_from, "to": session.path,
                                         "why": adopted.why or "a preferred path",
                                         "at": time.time()}
        link = Link(session, adopted.key, adopted.initiated_by_us)
        self._links[adopted.peer] = link
        session.on_suspect(lambda _, suspect: self._suspect_changed(link, suspect))
        if session.suspect:  # turned suspect before we listened
            self._suspect_changed(link, True)
        link.task = self._supervisor.fire(f"sync with {adopted.peer.short}", self._run(link))
        log.info("session with %s (%s) via %s", session.peer_name, adopted.peer.short,
                 session.path)

    async def _run(self, link: Link) -> None:
        session = link.session
        try:
            await run_sync(link, self._registry, self._trust, self._documents)
        finally:
            self._sessions.pop(link.key, None)
            if self._links.get(session.peer) is link:
                del self._links[session.peer]
            self._core.session_ended(session.peer, link.key, self._now())
            self._wake.set()  # reach the peer again, by whatever path is left
            log.info("session with %s ended: %s", session.peer.short, session.close_reason)


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
