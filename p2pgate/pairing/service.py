"""Pairing on the node: offers (inviter side), joining, and the registry writes.

The listener hands every `P2PG-PAIR` connection to `PairingService.handle`. The
registry is written only after both sides proved the code, so a wrong, expired,
replayed or raced code leaves no pending or half-trusted device. Offers are single
use, expire (default 5 minutes) and burn after 3 failed confirmations.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from p2pgate.discovery.mdns import InvitersFound
from p2pgate.errors import P2PGateError, RemoteProtocolError
from p2pgate.identity import Identity as DeviceIdentity
from p2pgate.net.admission import PAIR_MAGIC
from p2pgate.pairing.codes import BadCode, Invitation, make_code, make_uri, parse_code_or_uri
from p2pgate.pairing.protocol import (
    MAX_MESSAGE,
    Identity,
    PairingResult,
    Role,
    derive,
    open_sealed,
    seal,
)
from p2pgate.registry import DeviceRegistry, DeviceState, IllegalTransition
from p2pgate.stream import Stream, StreamClosed, TcpStream

__all__ = ["Offer", "PairingFailed", "PairingService"]

log = logging.getLogger("p2pgate.pairing")

MAX_FAILURES = 3
STEP_TIMEOUT = 30.0
_LEN = struct.Struct(">I")


class PairingFailed(P2PGateError):
    """Pairing did not complete; the message says why, for people.

    `code` names the outcome for programs: `wrong_code`, `burned`, `expired` (also
    used or unknown), `busy`, `not_found`, `unreachable`, `refused`, `failed`.
    """

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Offer:
    nameplate: int
    code: str
    secret: str
    expires_at: float
    repair: bool = False
    failures: int = 0
    busy: bool = False
    state: str = "waiting"  # waiting, paired, failed, expired
    result: PairingResult | None = None
    reason: str | None = None


class _Framed:
    def __init__(self, stream: Stream, initial: bytes = b"") -> None:
        self._stream, self._buf = stream, bytearray(initial)

    async def send(self, **fields: Any) -> None:
        data = json.dumps({k: base64.b64encode(v).decode() if isinstance(v, bytes) else v
                           for k, v in fields.items()}).encode()
        await self._stream.write(_LEN.pack(len(data)) + data)

    async def receive(self) -> dict[str, Any]:
        async with asyncio.timeout(STEP_TIMEOUT):
            while True:
                if len(self._buf) >= 4:
                    (n,) = _LEN.unpack_from(self._buf)
                    if n > MAX_MESSAGE:
                        raise RemoteProtocolError("pairing message too large")
                    if len(self._buf) >= 4 + n:
                        data = bytes(self._buf[4:4 + n])
                        del self._buf[:4 + n]
                        try:
                            msg = json.loads(data)
                        except ValueError:
                            raise RemoteProtocolError("pairing message is not JSON") from None
                        if not isinstance(msg, dict):
                            raise RemoteProtocolError("pairing message is not an object")
                        if msg.get("t") == "fail":
                            raise PairingFailed(str(msg.get("reason", "the other side refused")),
                                                str(msg.get("code", "refused")))
                        return msg
                chunk = await self._stream.read(65536)
                if not chunk:
                    raise PairingFailed("the other device closed the connection")
                self._buf += chunk


def _bytes(msg: dict[str, Any], key: str) -> bytes:
    try:
        return base64.b64decode(msg[key], validate=True)
    except (KeyError, TypeError, ValueError):
        raise RemoteProtocolError(f"pairing message lacks {key}") from None


class PairingService:
    def __init__(self, identity: DeviceIdentity, registry: DeviceRegistry,
                 name: Callable[[], str], disc_key: bytes,
                 addresses: Callable[[], list[str]], clock: Callable[[], float] = time.time,
                 relays: Callable[[], list[str]] = list) -> None:
        self._identity = identity
        self._registry = registry
        self._name = name
        self.disc_key = disc_key  # the node replaces it when it rotates the key
        self._addresses = addresses
        self._relays = relays  # where offers also wait in a mailbox (pairing across networks)
        self._clock = clock
        self._mailboxes: set[asyncio.Task[None]] = set()
        self.offers: dict[int, Offer] = {}
        # set by the node: LAN lookup by nameplate, a hook to advertise the open
        # nameplates, and the nameplates other devices on the LAN show
        self.find_inviters: Callable[[int], Awaitable[InvitersFound]] | None = None
        self.on_offer_change: Callable[[frozenset[int]], None] | None = None
        self.nameplates_in_use: Callable[[], frozenset[int]] = frozenset

    def _me(self) -> tuple[Identity, bytes]:
        part = os.urandom(32)
        return Identity(self._identity.cert_der, self._name(), part, self.disc_key), part

    # -- inviter -----------------------------------------------------------------------

    def create_offer(self, ttl: float = 300.0, repair: bool = False) -> tuple[Offer, str]:
        now = self._clock()
        self._expire(now)
        taken = set(self.advertised()) | self.nameplates_in_use()
        for _ in range(1000):  # avoid our open offers and those shown on the LAN
            code, secret = make_code()
            nameplate = int(code.split("-")[0])
            if nameplate not in taken:
                break
        offer = Offer(nameplate, code, secret, now + ttl, repair)
        self.offers[nameplate] = offer
        with contextlib.suppress(RuntimeError):  # no loop: nothing to withdraw later
            asyncio.get_running_loop().call_later(max(0.0, ttl), self._offers_changed)
        self._offers_changed()
        relays = self._relays()
        for url in relays:  # a joiner on another network meets us in the relay's mailbox
            for box in (mailbox_id(f"code {nameplate}"), mailbox_id(f"uri {secret}")):
                task = asyncio.ensure_future(self._wait_in_mailbox(offer, url, box))
                self._mailboxes.add(task)
                task.add_done_callback(self._mailboxes.discard)
        return offer, make_uri(code, secret, self._addresses(), relays)

    def advertised(self) -> frozenset[int]:
        """Nameplates shown on the LAN: waiting offers, and burned ones until they expire
        (so a joiner with the right words learns that the code burned)."""
        now = self._clock()
        return frozenset(n for n, o in self.offers.items()
                         if o.state in ("waiting", "failed") and o.expires_at > now)

    def _expire(self, now: float) -> None:
        for n, offer in list(self.offers.items()):
            if offer.expires_at <= now and offer.state == "waiting":
                offer.state = "expired"
            if offer.expires_at + 600 <= now:
                del self.offers[n]

    def _offers_changed(self) -> None:
        if self.on_offer_change is not None:
            self.on_offer_change(self.advertised())

    async def _wait_in_mailbox(self, offer: Offer, url: str, box: str) -> None:
        """Serve joiners arriving through one relay mailbox while the offer waits."""
        from p2pgate.relay.client import RelayUnavailable, open_mailbox  # (import cycle)

        while offer.state == "waiting":
            wait = offer.expires_at - self._clock()
            if wait <= 0:
                return
            try:
                stream = await open_mailbox(url, box, "inviter", wait)
            except RelayUnavailable as exc:
                log.info("pairing mailbox at %s: %s", url, exc)
                await asyncio.sleep(min(5.0, max(0.0, wait)))
                continue
            try:
                magic = await _read_exactly(stream, len(PAIR_MAGIC))
            except (StreamClosed, TimeoutError):
                await stream.close()
                continue
            if magic != PAIR_MAGIC:
                await stream.close()
                continue
            await self.handle(stream, b"")

    async def close(self) -> None:
        for task in list(self._mailboxes):
            task.cancel()
        for task in list(self._mailboxes):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def status(self, nameplate: int) -> Offer | None:
        offer = self.offers.get(nameplate)
        if offer is not None and offer.state == "waiting" and offer.expires_at <= self._clock():
            offer.state = "expired"
        return offer

    async def handle(self, stream: Stream, initial: bytes) -> None:
        """Serve one joiner on a `P2PG-PAIR` connection."""
        chan = _Framed(stream, initial)
        offer: Offer | None = None
        try:
            hello = await chan.receive()
            offer = self.status(int(hello.get("nameplate", -1)))
            refusal = _refusal(offer)
            if refusal is not None:
                offer = None  # nothing of this attempt may touch the offer
                await chan.send(t="fail", reason=refusal[0], code=refusal[1])
                return
            assert offer is not None  # noqa: S101 (no refusal: a waiting offer)
            offer.busy = True
            kind = hello.get("kind")
            password = (offer.secret if kind == "uri" else offer.code).encode()
            role = Role(joiner=False, password=password)
            role.finish(_bytes(hello, "pake"))
            await chan.send(t="pake", pake=role.message)
            confirm = await chan.receive()
            if not role.check(_bytes(confirm, "confirm")):
                offer.failures += 1
                log.info("pairing: a wrong code was tried (%d of %d)", offer.failures,
                         MAX_FAILURES)
                if offer.failures >= MAX_FAILURES:
                    offer.state, offer.reason = "failed", "too many wrong attempts"
                    await chan.send(t="fail", code="burned",
                                    reason="wrong code, and too many wrong attempts: the code "
                                    "is burned; make a new one")
                else:
                    await chan.send(t="fail", reason="wrong code", code="wrong_code")
                return
            mine, _ = self._me()
            await chan.send(t="confirm", confirm=role.confirmation(of_joiner=False),
                            sealed=seal(role, mine))
            peer = open_sealed(role, _bytes(await chan.receive(), "sealed"))
            result = derive(role, mine, peer)
            await self._trust(result, offer.repair)
            offer.state, offer.result = "paired", result
            self._offers_changed()
            await chan.send(t="done")
            log.info("paired with %s (%s); verification %s", peer.name,
                     peer.device_id.short, result.verification)
        except (PairingFailed, RemoteProtocolError, StreamClosed, TimeoutError, ValueError) as exc:
            log.info("pairing attempt failed: %s", exc)
            if offer is not None and offer.state == "waiting":
                offer.reason = str(exc)
        finally:
            if offer is not None:
                offer.busy = False
                if offer.state != "waiting":
                    self._offers_changed()
            await stream.close()

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
                result = await self._join_over(stream, invitation)
            finally:
                await stream.close()
            await self._registry.record_seen(result.peer.device_id, [candidate])
            return result
        raise PairingFailed("cannot reach the other device: " + "; ".join(errors),
                            "unreachable")

    async def _join_by_relay(self, relays: list[str], invitation: Invitation,
                             errors: list[str]) -> PairingResult:
        from p2pgate.relay.client import RelayUnavailable, open_mailbox  # (import cycle)

        for url in relays:
            try:
                relayed = await open_mailbox(url, mailbox_id(
                    f"code {invitation.nameplate}" if invitation.kind == "code"
                    else f"uri {invitation.password.decode()}"), "joiner", 10.0)
            except RelayUnavailable as exc:
                errors.append(str(exc))
                continue
            try:
                return await self._join_over(relayed, invitation)
            finally:
                await relayed.close()
        raise PairingFailed("cannot reach the other device: " + "; ".join(errors),
                            "unreachable")

    async def _join_over(self, stream: Stream, invitation: Invitation) -> PairingResult:
        chan = _Framed(stream)
        role = Role(joiner=True, password=invitation.password)
        await stream.write(PAIR_MAGIC)
        await chan.send(t="hello", nameplate=invitation.nameplate, kind=invitation.kind,
                        pake=role.message)
        try:
            answer = await chan.receive()
            role.finish(_bytes(answer, "pake"))
            await chan.send(t="confirm", confirm=role.confirmation(of_joiner=True))
            confirmed = await chan.receive()
            if not role.check(_bytes(confirmed, "confirm")):
                raise PairingFailed("the other device failed to prove the code", "refused")
            peer = open_sealed(role, _bytes(confirmed, "sealed"))
            mine, _ = self._me()
            await chan.send(t="sealed", sealed=seal(role, mine))
            result = derive(role, mine, peer)
            await chan.receive()  # "done": the inviter has written its registry
        except (RemoteProtocolError, StreamClosed, TimeoutError) as exc:
            raise PairingFailed(f"pairing failed: {exc}", "failed") from None
        await self._trust(result, repair=True)
        log.info("paired with %s; verification %s", peer.name, result.verification)
        return result

    # -- both ----------------------------------------------------------------------------

    async def _trust(self, result: PairingResult, repair: bool) -> None:
        peer = result.peer
        if peer.cert_der == self._identity.cert_der:
            raise PairingFailed("a device cannot pair with itself")
        existing = await self._registry.get(peer.device_id)
        if existing is not None and existing.state is DeviceState.REVOKED and not repair:
            raise PairingFailed("that device was revoked; pair again with --repair")
        if existing is not None and existing.state in (DeviceState.TRUSTED,
                                                       DeviceState.BLOCKED):
            raise PairingFailed(f"already paired with {existing.name} ({existing.state})")
        try:
            await self._registry.begin_pairing(peer.cert_der, peer.name, repair=True)
            await self._registry.complete_pairing(peer.device_id, result.k_pair,
                                                  peer.disc_key)
        except IllegalTransition as exc:
            raise PairingFailed(str(exc)) from None


def _refusal(offer: Offer | None) -> tuple[str, str] | None:
    """Why a joiner cannot try this offer now (message, code), or None."""
    if offer is None or offer.state in ("paired", "expired"):
        return "this code has expired or was already used; make a new one", "expired"
    if offer.state == "failed":
        return "this code burned after 3 wrong tries; make a new one", "burned"
    if offer.busy:
        return "another device is pairing with this code; try again", "busy"
    return None


def mailbox_id(name: str) -> str:
    """An offer's relay mailbox. For a short code it is named by the nameplate only (as in
    Magic Wormhole): a hash of the whole code would let the relay find the words offline
    and then pair in the joiner's place. Wrong words so reach the inviter and count
    towards burning the code. A URI's box is named by its 128-bit secret."""
    return hashlib.sha256(b"p2pgate pairing mailbox\0" + name.encode()).hexdigest()


async def _read_exactly(stream: Stream, n: int) -> bytes:
    data = b""
    async with asyncio.timeout(30):
        while len(data) < n:
            chunk = await stream.read(n - len(data))
            if not chunk:
                raise StreamClosed("closed")
            data += chunk
    return data
