"""One adopted session and the sync protocol running over it.

Received messages go to the replica's peer session, its answers go back, and a local
change (`wake`) makes the loop step at once. The loop ends when the session does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from p2pgate.documents import Documents
from p2pgate.net.peers import Trust
from p2pgate.net.session import Session, SessionError
from p2pgate.storage.registry import DeviceRegistry
from sync.session import PeerSession

__all__ = ["Link", "run_sync", "wait_at_most"]

log = logging.getLogger("p2pgate.connect")

IDLE_STEP = 5.0  # the longest a sync loop sleeps without a timer or a message


@dataclass
class Link:
    """A peer's live session, as the manager keeps it."""
    session: Session
    key: int
    initiated_by_us: bool
    since: float = field(default_factory=time.time)  # wall clock, for display
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


async def wait_at_most(waiting: asyncio.Event, delay: float) -> None:
    """Wait until `waiting` is set or `delay` has passed.

    Not `asyncio.wait_for(event.wait(), delay)`: on Python 3.11 it swallows a
    cancellation that arrives just after the event was set, so a loop using it can
    never be cancelled (the node then hung on SIGTERM).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await waiting.wait()


async def run_sync(link: Link, registry: DeviceRegistry, trust: Trust,
                   documents: Documents) -> None:
    """Record the peer's Hello, then sync over the session until it ends."""
    session, peer = link.session, str(link.session.peer)
    inbox: list[bytes] = []

    async def receive() -> None:
        with contextlib.suppress(SessionError):
            while True:
                inbox.append(await session.receive())
                link.wake.set()
        link.wake.set()

    receiver = asyncio.ensure_future(receive())
    sync: PeerSession | None = None
    try:
        await _record_hello(link, registry, trust)
        device = await registry.require(session.peer)
        sync = await documents.peer_open(peer, device.policy)
        while not session.closed:
            link.wake.clear()  # before the step: a change during it wakes us again
            received, inbox[:] = list(inbox), []
            out, closed, timer = await documents.peer_step(sync, received)
            for message in out:
                await session.send(message)
            if closed:
                await session.close("sync session ended")
                break
            if inbox:
                continue
            # the documents' timers are wall-clock times
            delay = IDLE_STEP if timer is None else max(0.0, min(IDLE_STEP,
                                                                 timer - time.time()))
            await wait_at_most(link.wake, delay)
    except SessionError:
        pass
    finally:
        receiver.cancel()
        await asyncio.wait({receiver})
        if sync is not None:
            await documents.peer_close(sync, session.close_reason or "closed")


async def _record_hello(link: Link, registry: DeviceRegistry, trust: Trust) -> None:
    session = link.session
    # an address we dialed is worth dialing again; an accepted one is ephemeral
    addresses = [session.remote_address] if (
        link.initiated_by_us and session.remote_address and session.path == "direct"
    ) else None
    await registry.record_seen(session.peer, addresses, session.relays)
    if session.disc_key and trust.learn_disc_key(session.peer, session.disc_key):
        await registry.set_disc_key(session.peer, session.disc_key)
        log.info("%s has a new discovery key", session.peer.short)
