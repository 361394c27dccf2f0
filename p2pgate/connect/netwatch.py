"""Notices network changes: the set of this device's local addresses, polled cheaply.

Every `every` seconds (default 5) `NetworkWatcher.run()` reads the local addresses
(`local_addresses()`: the kernel's local IPv4 table in /proc/net/fib_trie, every
secondary address included, and /proc/net/if_inet6, loopback left out; elsewhere the
interfaces' IPv4 addresses) in a worker thread, and calls `on_change(added, removed)`
when the set differs from the last one. A failed read counts as no change.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path

from p2pgate.net.addresses import listen_addresses

__all__ = ["NetworkWatcher", "local_addresses"]

log = logging.getLogger("p2pgate.connect.netwatch")

FIB_TRIE = Path("/proc/net/fib_trie")
IF_INET6 = Path("/proc/net/if_inet6")


def _ipv4_locals(text: str) -> set[str]:
    """The addresses of "/32 host LOCAL" entries of a fib_trie dump."""
    found, last = set(), None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            last = stripped[4:]
        elif stripped.startswith("/32 host LOCAL") and last is not None:
            found.add(last)
    return found


def _ipv6_locals(text: str) -> set[str]:
    found = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and len(fields[0]) == 32:
            found.add(f"{ipaddress.IPv6Address(bytes.fromhex(fields[0]))}%{fields[5]}")
    return found


def local_addresses() -> frozenset[str]:
    """This device's addresses other than loopback (blocking: call it in a thread)."""
    try:
        ips = _ipv4_locals(FIB_TRIE.read_text())
    except (OSError, ValueError):
        ips = {a.rsplit(":", 1)[0] for a in listen_addresses("0.0.0.0", 0)}  # noqa: S104
    with contextlib.suppress(OSError, ValueError):
        ips |= _ipv6_locals(IF_INET6.read_text())
    return frozenset(ip for ip in ips
                     if not ipaddress.ip_address(ip.split("%")[0]).is_loopback)


class NetworkWatcher:
    """Calls `on_change(added, removed)` when this device's addresses change."""

    def __init__(self, on_change: Callable[[frozenset[str], frozenset[str]], None], *,
                 every: float = 5.0,
                 read: Callable[[], frozenset[str]] = local_addresses) -> None:
        self._on_change = on_change
        self._every = every
        self._read = read
        self.addresses: frozenset[str] | None = None

    async def check(self) -> bool:
        """Read the addresses once; True (and `on_change` called) if they changed."""
        try:
            now = await asyncio.to_thread(self._read)
        except (OSError, ValueError) as exc:
            log.debug("reading local addresses failed: %s", exc)
            return False
        before, self.addresses = self.addresses, now
        if before is None or before == now:
            return False
        log.info("network changed: added %s, removed %s", ", ".join(sorted(now - before))
                 or "nothing", ", ".join(sorted(before - now)) or "nothing")
        self._on_change(now - before, before - now)
        return True

    async def run(self) -> None:
        """Check every `every` seconds until cancelled (the first read is the baseline)."""
        while True:
            await self.check()
            await asyncio.sleep(self._every)
