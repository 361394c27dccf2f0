"""Pairing on the node: the asyncio adapter around the offer book and the handshakes.

The listener hands every `P2PG-PAIR` connection to `PairingService.handle`; offers
also wait in the relays' mailboxes for joiners on other networks (`relay_boxes`; with
relays, `open_offer` takes the nameplate the first relay allocates). The registry is
written only after both sides proved the code, so a wrong, expired, replayed or
raced code leaves no pending or half-trusted device. Offers are single use, expire
(default 5 minutes) and burn after 3 failed confirmations (`offers.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable

from p2pgate.discovery.mdns import InvitersFound
from p2pgate.errors import RemoteProtocolError
from p2pgate.identity import Identity
from p2pgate.net.admission import PAIR_MAGIC
from p2pgate.pairing.codes import BadCode, Invitation, make_code, make_uri, parse_code_or_uri
from p2pgate.pairing.errors import PairingFailed
from p2pgate.pairing.handshake import InviterHandshake, JoinerHandshake
from p2pgate.pairing.offers import Offer, OfferBook
from p2pgate.pairing.protocol import PairingIdentity, PairingResult
from p2pgate.pairing.relay_boxes import RelayBoxes, mailbox_id
from p2pgate.pairing.wire import Message, MessageDecoder, encode
from p2pgate.relay.client import RelayUnavailable
from p2pgate.relay.mailbox_client import join_box
from p2pgate.storage.registry import DeviceRegistry, DeviceState, IllegalTransition
from p2pgate.stream import Stream, StreamClosed, TcpStream

__all__ = ["Offer", "PairingFailed", "PairingService", "mailbox_id"]

log = logging.getLogger("p2pgate.pairing")

_Handshake = InviterHandshake | JoinerHandshake


class PairingService:
    """Opens offers, serves joiners (LAN and relay mailbox), and joins other devices."""

    def __init__(self, identity: Identity, registry: DeviceRegistry,
                 name: Callable[[], str], disc_key: bytes,
                 addresses: Callable[[], list[str]], clock: Callable[[], float] = time.time,
                 relays: Callable[[], list[str]] = list,
                 relay_token: Callable[[str], str | None] = lambda _: None) -> None:
        self._identity = identity
        self._registry = registry
        self._name = name
        self.disc_key = disc_key  # the node replaces it when it rotates the key
        self._addresses = addresses
        self._relays = relays  # where offers also wait in a mailbox (pairing across networks)
        self._clock = clock
        self._book = OfferBook()
        self._relay_token = relay_token
        self._boxes = RelayBoxes(identity, relay_token, lambda s: self.handle(s, b""), clock)
        self._expiry: asyncio.TimerHandle | None = None
        # set by the node: LAN lookup by nameplate, a hook to advertise the open
        # nameplates, and the nameplates other devices on the LAN show
        self.find_inviters: Callable[[int], Awaitable[InvitersFound]] | None = None
        self.on_offer_change: Callable[[frozenset[int]], None] | None = None
        self.nameplates_in_use: Callable[[], frozenset[int]] = frozenset

    @property
    def offers(self) -> dict[int, Offer]:
        """The open pairing offers, by nameplate."""
        return self._book.offers

    def _me(self) -> PairingIdentity:
        return PairingIdentity(self._identity.cert_der, self._name(), os.urandom(32),
                               self.disc_key)

    # -- inviter -----------------------------------------------------------------------

    async def open_offer(self, ttl: float = 300.0, repair: bool = False) -> tuple[Offer, str]:
        """Open an offer whose nameplate works on the LAN and through our relays: the
        first relay that answers allocates it (avoiding the LAN's and ours); without one,
        it is picked here (`create_offer`). Returns the offer and its QR code's URI."""
        relays = self._relays()
        if not relays:
            return self.create_offer(ttl, repair)
        _, secret = make_code()
        avoid = set(self.offers) | self.nameplates_in_use()  # ours (finished ones too), LAN's
        allocated = await self._boxes.allocate(relays, avoid, secret, ttl)
        if allocated is None:
            return self.create_offer(ttl, repair)
        nameplate, url, box = allocated
        offer = self._book.open(self._clock(), ttl, repair, nameplate=nameplate, secret=secret)
        self._book_changed()
        self._boxes.hold(offer.nameplate, offer.secret, offer.expires_at, relays, (url, box))
        return offer, make_uri(offer.code, offer.secret, self._addresses(), relays)

    def create_offer(self, ttl: float = 300.0, repair: bool = False) -> tuple[Offer, str]:
        """Open an offer with a nameplate picked here; each relay carries it if no other
        offer shows that nameplate there (else only its URI). Returns it and its URI."""
        offer = self._book.open(self._clock(), ttl, repair, self.nameplates_in_use())
        self._book_changed()
        relays = self._relays()
        self._boxes.hold(offer.nameplate, offer.secret, offer.expires_at, relays)
        return offer, make_uri(offer.code, offer.secret, self._addresses(), relays)

    def status(self, nameplate: int) -> Offer | None:
        """The offer showing this nameplate, up to date."""
        offer = self._book.status(nameplate, self._clock())
        self._book_changed()
        return offer

    def advertised(self) -> frozenset[int]:
        """Nameplates to show on the LAN now."""
        return self._book.advertised(self._clock())

    def _book_changed(self) -> None:
        """Pass the book's events on and re-arm its expiry timer."""
        while (event := self._book.next_event()) is not None:
            self._boxes.retire(event.nameplates)  # a box lives while its offer is shown
            if self.on_offer_change is not None:
                self.on_offer_change(event.nameplates)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        timer = self._book.get_timer()
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to re-arm
            if timer is not None:
                self._expiry = asyncio.get_running_loop().call_later(
                    max(0.0, timer - self._clock()), self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self._book.handle_timer(self._clock())
        self._book_changed()

    async def close(self) -> None:
        """Stop waiting in mailboxes."""
        if self._expiry is not None:
            self._expiry.cancel()
        await self._boxes.close()

    async def handle(self, stream: Stream, initial: bytes, source: str | None = None) -> None:
        """Serve one joiner on a `P2PG-PAIR` connection; `source` (the joiner's address
        key on the P2P port, None through a mailbox) keys the per-source limits."""
        shake = InviterHandshake(self._book, self._me, self._clock(), source)
        try:
            await self._drive(shake, stream, initial)
            if shake.failure is not None:
                # a connection that never held an offer (a stranger's flood, a scan):
                # not worth a line each
                log.log(logging.INFO if shake.offer is not None else logging.DEBUG,
                        "pairing attempt failed: %s", shake.failure)
                if shake.failure.code in ("wrong_code", "burned") and shake.offer is not None:
                    log.info("pairing: a wrong code was tried (%d of 3)", shake.offer.failures)
            elif shake.result is not None:
                log.info("paired with %s (%s); verification %s", shake.result.peer.name,
                         shake.result.peer.device_id.short, shake.result.verification)
        finally:
            shake.release()
            self._book_changed()
            await stream.close()

    async def _drive(self, shake: _Handshake, stream: Stream, initial: bytes = b"") -> None:
        """Run a handshake over a stream: feed it what arrives, send what it returns,
        honour its deadline, and (inviter) write the registry when it asks."""
        decoder = MessageDecoder()
        inbox = decoder.feed(initial) if initial else []
        try:
            while not shake.finished:
                if isinstance(shake, InviterHandshake) and shake.state == "trusting":
                    assert shake.result is not None  # noqa: S101
                    assert shake.offer is not None  # noqa: S101
                    try:
                        await self._trust(shake.result, shake.offer.repair)
                        out = shake.trusted(self._clock())
                    except PairingFailed as exc:
                        out = shake.refuse(exc)
                else:
                    while not inbox:
                        inbox = decoder.feed(await self._read(stream, shake))
                    out = shake.receive(inbox.pop(0), self._clock())
                await self._send(stream, out)
        except (RemoteProtocolError, StreamClosed, TimeoutError) as exc:
            shake.abort(str(exc) or type(exc).__name__)

    async def _read(self, stream: Stream, shake: _Handshake) -> bytes:
        deadline = shake.get_timer()
        wait = None if deadline is None else max(0.0, deadline - self._clock())
        try:
            async with asyncio.timeout(wait):
                chunk = await stream.read(65536)
        except TimeoutError:
            shake.handle_timer(deadline or self._clock())
            raise
        if not chunk:
            raise StreamClosed("the other device closed the connection")
        return chunk

    @staticmethod
    async def _send(stream: Stream, messages: list[Message]) -> None:
        if messages:
            await stream.write(b"".join(encode(m) for m in messages))

    # -- joiner ------------------------------------------------------------------------

    async def join(self, text: str, address: str | None = None) -> PairingResult:
        """Pair with the device that made `text` (a code or a URI)."""
        try:
            invitation = parse_code_or_uri(text)
        except BadCode as exc:
            raise PairingFailed(str(exc), "bad_code") from None
        errors: list[str] = []
        if address or invitation.addresses:  # one device, at one of these addresses
            devices: tuple[tuple[str, ...], ...] = ((address,) if address else
                                                    tuple(invitation.addresses),)
        elif invitation.kind == "code" and self.find_inviters is not None:
            found = await self.find_inviters(invitation.nameplate)
            devices = found.devices
            if not devices:
                errors.append(f"no device on this LAN shows nameplate {invitation.nameplate} "
                              f"(looked for {found.looked:.0f} s)")
        else:
            devices = ()
        refused: PairingFailed | None = None
        for candidates in devices:  # two inviters may show one nameplate: try each
            try:
                return await self._join_device(candidates, invitation, errors)
            except PairingFailed as exc:
                if exc.code == "unreachable":
                    continue
                if exc.code not in ("wrong_code", "busy", "expired") or len(devices) == 1:
                    raise
                refused = refused if refused and refused.code == "wrong_code" else exc
        if refused is not None:  # a device answered: the relay holds the same offers
            raise refused
        relays = list(invitation.relays) or self._relays()
        if not devices and not relays:
            raise PairingFailed(
                "cannot find the device showing this code: " + "; ".join(errors)
                + "; check that both are on the same network, use the URI of its QR code, "
                "or use a relay", "not_found")
        return await self._join_by_relay(relays, invitation, errors)

    async def _join_device(self, candidates: tuple[str, ...], invitation: Invitation,
                           errors: list[str]) -> PairingResult:
        """Pair with one device at the first of its addresses that answers."""
        for candidate in candidates:
            host, _, port = candidate.rpartition(":")
            try:
                stream = await TcpStream.connect(host.strip("[]"), int(port))
            except (StreamClosed, ValueError) as exc:
                errors.append(f"{candidate}: {exc}")
                continue
            try:
                result = await self._join_over(stream, invitation, seen_at=candidate)
            finally:
                await stream.close()
            return result
        raise PairingFailed("cannot reach the other device: " + "; ".join(errors),
                            "unreachable")

    async def _join_by_relay(self, relays: list[str], invitation: Invitation,
                             errors: list[str]) -> PairingResult:
        for url in relays:
            try:
                async with asyncio.timeout(30):
                    relayed = await (
                        join_box(url, self._identity, self._relay_token(url),
                                 nameplate=invitation.nameplate) if invitation.kind == "code"
                        else join_box(url, self._identity, self._relay_token(url),
                                      box=mailbox_id(invitation.password.decode())))
            except (RelayUnavailable, TimeoutError) as exc:
                errors.append(str(exc) or f"relay {url}: no answer")
                continue
            try:
                return await self._join_over(relayed, invitation)
            finally:
                await relayed.close()
        raise PairingFailed("cannot reach the other device: " + "; ".join(errors),
                            "unreachable")

    async def _join_over(self, stream: Stream, invitation: Invitation,
                         seen_at: str | None = None) -> PairingResult:
        shake = JoinerHandshake(invitation, self._me, self._clock())
        await stream.write(PAIR_MAGIC)
        await self._send(stream, shake.start())
        await self._drive(shake, stream)
        if shake.failure is not None:
            raise shake.failure
        assert shake.result is not None  # noqa: S101 (done means a result)
        await self._trust(shake.result, repair=True, seen_at=seen_at)
        log.info("paired with %s; verification %s", shake.result.peer.name,
                 shake.result.verification)
        return shake.result

    # -- both ----------------------------------------------------------------------------

    async def _trust(self, result: PairingResult, repair: bool,
                     seen_at: str | None = None) -> None:
        """Trust the paired device (and where we reached it, before it is trusted: the
        dialing that trust starts finds the address)."""
        peer = result.peer
        if peer.cert_der == self._identity.cert_der:
            raise PairingFailed("a device cannot pair with itself", "refused")
        existing = await self._registry.get(peer.device_id)
        if existing is not None and existing.state is DeviceState.REVOKED and not repair:
            raise PairingFailed("that device was revoked; pair again with --repair", "refused")
        if existing is not None and existing.state in (DeviceState.TRUSTED,
                                                       DeviceState.BLOCKED):
            raise PairingFailed(f"already paired with {existing.name} ({existing.state})",
                                "refused")
        try:
            await self._registry.begin_pairing(peer.cert_der, peer.name, repair=True)
            if seen_at is not None:
                await self._registry.record_seen(peer.device_id, [seen_at])
            await self._registry.complete_pairing(peer.device_id, result.k_pair,
                                                  peer.disc_key)
        except IllegalTransition as exc:
            raise PairingFailed(str(exc), "refused") from None
