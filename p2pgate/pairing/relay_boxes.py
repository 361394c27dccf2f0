"""An inviter's offers waiting in its relays' pairing mailboxes.

`allocate` asks the relays, in order, for a nameplate (the first that answers
decides it); `hold` keeps an offer's box open on each relay — claiming the offer's
nameplate (a relay where another offer shows it carries only the URI's box) — and
hands every joiner's splice that starts with `P2PG-PAIR` to `serve`. A box lives as
long as its connection: `retire` closes the boxes of offers no longer shown, and a
box the relay lost is opened again while its offer is shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from p2pgate.identity import Identity
from p2pgate.net.admission import PAIR_MAGIC
from p2pgate.relay.client import RelayUnavailable
from p2pgate.relay.mailbox_client import HeldBox, MailboxRefused, hold_box
from p2pgate.stream import Stream, StreamClosed

__all__ = ["RelayBoxes", "mailbox_id"]

log = logging.getLogger("p2pgate.pairing")

ALLOCATE_WAIT = 5.0  # per relay, while the user waits for a code
REOPEN_AFTER = 5.0


def mailbox_id(secret: str) -> str:
    """The relay box of a URI's offer, named by its 128-bit secret (a code's box is its
    nameplate, which the relay allocates: it never sees the words)."""
    return hashlib.sha256(b"p2pgate pairing mailbox\0uri " + secret.encode()).hexdigest()


@dataclass
class _Holding:
    """The tasks that keep one offer's boxes open."""

    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class RelayBoxes:
    """Offers' boxes on the relays: allocation, holding, joiners handed to `serve`."""

    def __init__(self, identity: Identity, token_for: Callable[[str], str | None],
                 serve: Callable[[Stream], Awaitable[None]],
                 clock: Callable[[], float]) -> None:
        self._identity = identity
        self._token_for = token_for
        self._serve = serve
        self._clock = clock
        self._held: dict[int, _Holding] = {}
        self._attempts: set[asyncio.Task[None]] = set()  # joiners being served: not cut

    async def allocate(self, relays: list[str], avoid: Collection[int], secret: str,
                       ttl: float) -> tuple[int, str, HeldBox] | None:
        """A nameplate a relay allocated, that relay and the box holding it; or None."""
        for url in relays:
            try:
                async with asyncio.timeout(ALLOCATE_WAIT):
                    box = await hold_box(url, self._identity, self._token_for(url),
                                         nameplate="new", avoid=avoid, box=mailbox_id(secret),
                                         ttl=ttl)
            except (RelayUnavailable, TimeoutError) as exc:
                log.info("pairing: no nameplate from %s: %s", url, exc or "timeout")
                continue
            if box.nameplate is not None:
                return box.nameplate, url, box
            await box.close()
        return None

    def hold(self, nameplate: int, secret: str, expires_at: float, relays: list[str],
             held: tuple[str, HeldBox] | None = None) -> None:
        """Keep the offer's boxes open on `relays` until `retire` or `expires_at`
        (`held`: a relay's box already open, from `allocate`)."""
        holding = self._held.setdefault(nameplate, _Holding())
        for url in relays:
            first = held[1] if held is not None and held[0] == url else None
            task = asyncio.ensure_future(self._keep(url, nameplate, secret, expires_at, first))
            holding.tasks.add(task)
            task.add_done_callback(holding.tasks.discard)

    def retire(self, shown: Collection[int]) -> None:
        """Close the boxes of every offer whose nameplate is no longer in `shown`."""
        for nameplate in [n for n in self._held if n not in shown]:
            for task in self._held.pop(nameplate).tasks:
                task.cancel()

    async def close(self) -> None:
        """Close every box."""
        tasks = [t for h in self._held.values() for t in h.tasks] + list(self._attempts)
        self._held.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep(self, url: str, nameplate: int, secret: str, expires_at: float,
                    box: HeldBox | None) -> None:
        """One relay: hold the box, serve its joiners, open it again if the relay lost it."""
        claim: int | None = nameplate
        try:
            while (left := expires_at - self._clock()) > 0:
                if box is None:
                    try:
                        box = await hold_box(url, self._identity, self._token_for(url),
                                             nameplate=claim, box=mailbox_id(secret), ttl=left)
                    except RelayUnavailable as exc:
                        if (claim is not None and isinstance(exc, MailboxRefused)
                                and exc.reason == "nameplate_taken"):
                            log.info("pairing: nameplate %d is taken at %s; only the URI "
                                     "works there", nameplate, url)
                            claim = None
                            continue
                        log.info("pairing mailbox at %s: %s", url, exc)
                        await asyncio.sleep(min(REOPEN_AFTER, left))
                        continue
                try:
                    while True:
                        key = await box.next_joiner()
                        task = asyncio.ensure_future(self._answer(box, key))
                        self._attempts.add(task)
                        task.add_done_callback(self._attempts.discard)
                except RelayUnavailable as exc:
                    log.info("pairing mailbox at %s closed: %s", url, exc)
                finally:
                    await box.close()
                    box = None
                await asyncio.sleep(min(REOPEN_AFTER, max(0.0, expires_at - self._clock())))
        finally:
            if box is not None:
                await box.close()

    async def _answer(self, box: HeldBox, key: str) -> None:
        """One joiner: open its splice and serve it if it speaks pairing."""
        try:
            stream = await box.answer(key)
        except RelayUnavailable as exc:
            log.info("pairing mailbox at %s: %s", box.url, exc)
            return
        try:
            magic = await _read_exactly(stream, len(PAIR_MAGIC))
        except (StreamClosed, TimeoutError):
            await stream.close()
            return
        if magic != PAIR_MAGIC:
            await stream.close()
            return
        await self._serve(stream)


async def _read_exactly(stream: Stream, n: int) -> bytes:
    data = b""
    async with asyncio.timeout(30):
        while len(data) < n:
            chunk = await stream.read(n - len(data))
            if not chunk:
                raise StreamClosed("closed")
            data += chunk
    return data
