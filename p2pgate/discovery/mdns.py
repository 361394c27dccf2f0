"""LAN discovery with mDNS/DNS-SD (`_p2pgate._tcp.local.`), private by design.

A device advertises a random instance name and a random host name (never its own
name), re-rolled every 15 minutes and on `reroll()`. Its TXT record holds `v`
(protocol version), `n` (8 random bytes) and `t` = HMAC(K_disc, n)[:8] with its own
discovery key, which only its paired peers know: they recognise `t`, strangers see
a service that says nothing stable about who runs it. While a pairing code is open,
`p` = HMAC(SHA-256(code), n)[:8] lets the joiner who typed the code find this device.
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
from collections.abc import Callable
from dataclasses import dataclass

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from p2pgate.deviceid import DeviceID

__all__ = [
    "SERVICE", "LanDiscovery", "PeerDiscovered", "PeerLost", "discovery_tag", "find_inviter",
    "pairing_key",
]

log = logging.getLogger("p2pgate.discovery")

SERVICE = "_p2pgate._tcp.local."
VERSION = b"1"
REROLL = 15 * 60.0
FIND_TIMEOUT = 5.0  # how long a joiner browses for the device showing its code


def discovery_tag(disc_key: bytes, nonce: bytes) -> bytes:
    return hmac.new(disc_key, b"p2pgate-mdns" + nonce, hashlib.sha256).digest()[:8]


def pairing_key(code: bytes) -> bytes:
    """Key of the `p` tag an inviter advertises while its code is open."""
    return hashlib.sha256(b"p2pgate-pairing-mdns" + code).digest()


def _nonce_and_tag(info: AsyncServiceInfo, field: bytes) -> tuple[bytes, bytes]:
    """The TXT nonce and one tag (`t` discovery, `p` pairing); empty if malformed."""
    props = info.properties or {}
    try:
        return (bytes.fromhex((props.get(b"n") or b"").decode()),
                bytes.fromhex((props.get(field) or b"").decode()))
    except ValueError:
        return b"", b""


async def find_inviter(interfaces: list[str], code: bytes) -> list[str]:
    """Browse the LAN for the device advertising this pairing code; its HOST:PORTs."""
    key = pairing_key(code)
    zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
    names: asyncio.Queue[str] = asyncio.Queue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Removed:
            names.put_nowait(name)

    browser = AsyncServiceBrowser(zc.zeroconf, [SERVICE], handlers=[on_change])
    try:
        async with asyncio.timeout(FIND_TIMEOUT):
            while True:
                name = await names.get()
                info = AsyncServiceInfo(SERVICE, name)
                if not await info.async_request(zc.zeroconf, 2000):
                    continue
                nonce, tag = _nonce_and_tag(info, b"p")
                if tag and hmac.compare_digest(discovery_tag(key, nonce), tag):
                    return [f"{ip}:{info.port}" for ip in info.parsed_addresses()]
    except TimeoutError:
        return []
    finally:
        await browser.async_cancel()
        await zc.async_close()


@dataclass(frozen=True, slots=True)
class PeerDiscovered:
    device_id: DeviceID
    addresses: tuple[str, ...]  # HOST:PORT


@dataclass(frozen=True, slots=True)
class PeerLost:
    device_id: DeviceID


Event = PeerDiscovered | PeerLost


class LanDiscovery:
    """Advertise this device and recognise paired ones on the chosen interfaces."""

    def __init__(self, interfaces: list[str], port: int, disc_key: bytes,
                 peer_keys: Callable[[], dict[DeviceID, bytes]],
                 on_event: Callable[[Event], None], reroll_every: float = REROLL) -> None:
        self._interfaces = interfaces
        self._port = port
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
        self._pairing_key: bytes | None = None

    async def start(self) -> None:
        self._zc = AsyncZeroconf(interfaces=self._interfaces, ip_version=IPVersion.V4Only)
        await self._advertise()
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [SERVICE],
                                            handlers=[self._on_change])
        self._reroller = asyncio.ensure_future(self._reroll_loop())

    async def stop(self) -> None:
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

    async def set_pairing_code(self, code: bytes | None) -> None:
        """Advertise (or stop advertising) that a pairing code is open here."""
        self._pairing_key = None if code is None else pairing_key(code)
        await self.reroll()

    async def reroll(self) -> None:
        """New instance name, host name and nonce (also on network change)."""
        if self._zc is not None and self._info is not None:
            await self._zc.async_unregister_service(self._info)
        await self._advertise()

    async def _reroll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._reroll_every)
            await self.reroll()

    async def _advertise(self) -> None:
        assert self._zc is not None  # noqa: S101
        nonce = os.urandom(8)
        label = secrets.token_hex(6)
        props = {b"v": VERSION, b"n": nonce.hex().encode(),
                 b"t": discovery_tag(self._disc_key, nonce).hex().encode()}
        if self._pairing_key is not None:
            props[b"p"] = discovery_tag(self._pairing_key, nonce).hex().encode()
        self._info = AsyncServiceInfo(
            SERVICE, f"{label}.{SERVICE}", port=self._port, server=f"{label}.local.",
            addresses=[socket.inet_aton(ip) for ip in self._interfaces],
            properties=props,
        )
        await self._zc.async_register_service(self._info)

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        if self._info is not None and name == self._info.name:
            return
        if state_change is ServiceStateChange.Removed:
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
        nonce, tag = _nonce_and_tag(info, b"t")
        if not tag:
            return
        for device, key in self._peer_keys().items():
            if hmac.compare_digest(discovery_tag(key, nonce), tag):
                addresses = tuple(f"{ip}:{info.port}" for ip in info.parsed_addresses())
                self._seen[name] = device
                log.info("LAN: found %s at %s", device.short, ", ".join(addresses))
                self._on_event(PeerDiscovered(device, addresses))
                return
