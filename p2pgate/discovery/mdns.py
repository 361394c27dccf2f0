"""LAN discovery with mDNS/DNS-SD (`_p2pgate._tcp.local.`), private by design.

A device advertises a random instance name and a random host name (never its own
name), re-rolled every 15 minutes and on `reroll()`. Its TXT record holds `v`
(protocol version), `n` (8 random bytes) and `t` = HMAC(K_disc, n)[:8] with its own
discovery key, which only its paired peers know: they recognise `t`, strangers see
a service that says nothing stable about who runs it. While pairing codes are open,
`p` lists their nameplates in plain text (e.g. `p=33`), as the relay mailbox does: the
nameplate only says which offer to try, and the words of the code never leave the
device before SPAKE2 (a hash of the whole code would let anyone on the LAN search all
6.5 M codes offline). A joiner finds offers by nameplate and proves the words online.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from p2pgate.identity.deviceid import DeviceID

__all__ = [
    "SERVICE", "InvitersFound", "LanDiscovery", "PeerDiscovered", "PeerLost", "discovery_tag",
    "find_inviters",
]

log = logging.getLogger("p2pgate.discovery")

SERVICE = "_p2pgate._tcp.local."
VERSION = b"1"
REROLL = 15 * 60.0
FIND_TIMEOUT = 10.0  # how long a joiner browses for the device showing its nameplate
FIND_GRACE = 0.5  # after a first match, how long to wait for another device showing it


def discovery_tag(disc_key: bytes, nonce: bytes) -> bytes:
    """The 8-byte TXT tag by which peers holding `disc_key` recognise us under this `nonce`."""
    return hmac.new(disc_key, b"p2pgate-mdns" + nonce, hashlib.sha256).digest()[:8]


def _nonce_and_tag(info: AsyncServiceInfo) -> tuple[bytes, bytes]:
    """The TXT nonce and discovery tag; empty if malformed."""
    props = info.properties or {}
    try:
        return (bytes.fromhex((props.get(b"n") or b"").decode()),
                bytes.fromhex((props.get(b"t") or b"").decode()))
    except ValueError:
        return b"", b""


def _nameplates(info: AsyncServiceInfo) -> frozenset[int]:
    """The nameplates of the pairing offers a service advertises (`p`), if any."""
    raw = ((info.properties or {}).get(b"p") or b"").decode(errors="replace")
    return frozenset(int(p) for p in raw.split(",") if p.isascii() and p.isdigit() and len(p) <= 4)


def _encode_nameplates(nameplates: Collection[int]) -> bytes:
    return ",".join(str(n) for n in sorted(nameplates)).encode()


@dataclass(frozen=True, slots=True)
class InvitersFound:
    """What a joiner's LAN search found: each device's HOST:PORTs, and how long it looked."""

    devices: tuple[tuple[str, ...], ...]
    looked: float


async def find_inviters(interfaces: list[str], nameplate: int,
                        within: float = FIND_TIMEOUT) -> InvitersFound:
    """Browse the LAN (sending queries) for devices with an open offer on `nameplate`.

    Returns as soon as one is found and no other shows up within `FIND_GRACE`, or
    after `within` seconds. Two inviters may show the same nameplate: the joiner tries each.
    """
    started = time.monotonic()
    zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
    names: asyncio.Queue[str] = asyncio.Queue()
    found: dict[str, tuple[str, ...]] = {}

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Removed:
            names.put_nowait(name)  # added, or its TXT changed (an offer opened)

    browser = AsyncServiceBrowser(zc.zeroconf, [SERVICE], handlers=[on_change])
    deadline = started + within
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(left):  # (not wait_for: 3.11's can swallow a cancel)
                    name = await names.get()
            except TimeoutError:
                break
            info = AsyncServiceInfo(SERVICE, name)
            if not await info.async_request(zc.zeroconf, 2000):
                continue
            if nameplate in _nameplates(info) and info.parsed_addresses():
                found[name] = tuple(f"{ip}:{info.port}" for ip in info.parsed_addresses())
                deadline = min(deadline, time.monotonic() + FIND_GRACE)
    finally:
        await browser.async_cancel()
        await zc.async_close()
    return InvitersFound(tuple(found.values()), time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class PeerDiscovered:
    """A paired device was recognised on the LAN, at these HOST:PORT addresses."""

    device_id: DeviceID
    addresses: tuple[str, ...]  # HOST:PORT


@dataclass(frozen=True, slots=True)
class PeerLost:
    """A paired device's LAN service went away."""

    device_id: DeviceID


Event = PeerDiscovered | PeerLost


class LanDiscovery:
    """Advertise this device and recognise paired ones on the chosen interfaces."""

    def __init__(self, interfaces: list[str], disc_key: bytes,
                 peer_keys: Callable[[], dict[DeviceID, bytes]],
                 on_event: Callable[[Event], None], reroll_every: float = REROLL) -> None:
        self._interfaces = interfaces
        self._port = 0
        self._disc_key = disc_key
        self._peer_keys = peer_keys
        self._on_event = on_event
        self._reroll_every = reroll_every
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._seen: dict[str, DeviceID] = {}  # service name -> device
        self._tasks: set[asyncio.Task[None]] = set()
        self._reroller: asyncio.Task[None] | None = None
        self._nameplates: frozenset[int] = frozenset()  # our open pairing offers
        self._others: dict[str, frozenset[int]] = {}  # service name -> nameplates it shows
        self._lock = asyncio.Lock()  # one registration change at a time

    async def start(self, port: int) -> None:
        """Advertise on `port` (with the offers already open) and start browsing."""
        self._port = port
        self._zc = AsyncZeroconf(interfaces=self._interfaces, ip_version=IPVersion.V4Only)
        async with self._lock:
            await self._advertise()
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [SERVICE],
                                            handlers=[self._on_change])
        self._reroller = asyncio.ensure_future(self._reroll_loop())

    async def stop(self) -> None:
        """Stop advertising and browsing, and close zeroconf."""
        for task in list(self._tasks) + ([self._reroller] if self._reroller else []):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zc is not None:
            await self._zc.async_close()

    async def set_disc_key(self, disc_key: bytes) -> None:
        """Advertise under a new discovery key (after revoking a peer)."""
        self._disc_key = disc_key
        await self.reroll()

    async def set_pairing_nameplates(self, nameplates: Collection[int]) -> None:
        """Advertise the nameplates of the pairing offers open here (none: stop).

        Before `start()` this only records them: they are in the first advertisement.
        """
        self._nameplates = frozenset(nameplates)
        async with self._lock:
            if self._zc is None or self._info is None:
                return
            self._info = self._service_info(self._info.name, self._info.server or "",
                                            self._info.properties.get(b"n") or b"")
            await self._zc.async_update_service(self._info)

    def nameplates_in_use(self) -> frozenset[int]:
        """Nameplates other devices on the LAN show now (a new offer avoids them)."""
        return frozenset().union(*self._others.values())

    async def reroll(self) -> None:
        """New instance name, host name and nonce (also on network change)."""
        async with self._lock:
            if self._zc is None:
                return
            if self._info is not None:
                await self._zc.async_unregister_service(self._info)
            await self._advertise()

    async def _reroll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._reroll_every)
            await self.reroll()

    async def _advertise(self) -> None:
        assert self._zc is not None  # noqa: S101
        label = secrets.token_hex(6)
        self._info = self._service_info(f"{label}.{SERVICE}", f"{label}.local.",
                                        os.urandom(8).hex().encode())
        await self._zc.async_register_service(self._info)

    def _service_info(self, name: str, server: str, nonce_hex: bytes) -> AsyncServiceInfo:
        nonce = bytes.fromhex(nonce_hex.decode())
        props = {b"v": VERSION, b"n": nonce_hex,
                 b"t": discovery_tag(self._disc_key, nonce).hex().encode()}
        if self._nameplates:
            props[b"p"] = _encode_nameplates(self._nameplates)
        return AsyncServiceInfo(
            SERVICE, name, port=self._port, server=server,
            addresses=[socket.inet_aton(ip) for ip in self._interfaces], properties=props,
        )

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        if self._info is not None and name == self._info.name:
            return
        if state_change is ServiceStateChange.Removed:
            self._others.pop(name, None)
            device = self._seen.pop(name, None)
            if device is not None and device not in self._seen.values():
                self._on_event(PeerLost(device))
            return
        task = asyncio.ensure_future(self._resolve(zeroconf, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        info = AsyncServiceInfo(SERVICE, name)
        if not await info.async_request(zeroconf, 3000):
            return
        self._others[name] = _nameplates(info)
        nonce, tag = _nonce_and_tag(info)
        if not tag:
            return
        for device, key in self._peer_keys().items():
            if hmac.compare_digest(discovery_tag(key, nonce), tag):
                addresses = tuple(f"{ip}:{info.port}" for ip in info.parsed_addresses())
                self._seen[name] = device
                log.info("LAN: found %s at %s", device.short, ", ".join(addresses))
                self._on_event(PeerDiscovered(device, addresses))
                return
