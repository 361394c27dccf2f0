"""The asyncio adapter of `stun_probe`: one Binding transaction over a UDP socket.

`probe_stun("HOST:PORT")` resolves the address (bounded), sends from a fresh socket
connected to it, feeds the `BindingProbe` what arrives and its timers, and returns
its `ProbeResult` after at most `GIVE_UP` (1.5 s) plus the name lookup. Every
socket or resolver error is a failed probe, never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket

from p2pgate.relay.stun_probe import BindingProbe, ProbeResult, parse_address

__all__ = ["probe_stun"]

RESOLVE_TIMEOUT = 2.0


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, probe: BindingProbe, loop: asyncio.AbstractEventLoop,
                 wake: asyncio.Event) -> None:
        self._probe, self._loop, self._wake = probe, loop, wake

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._probe.receive(data, self._loop.time())
        if self._probe.result is not None:
            self._wake.set()

    def error_received(self, exc: Exception) -> None:
        """An ICMP error (port unreachable): the retransmissions go on until GIVE_UP."""


async def probe_stun(address: str) -> ProbeResult:
    """Probe the STUN server at `address` ("HOST:PORT"); a failed result on any error."""
    loop = asyncio.get_running_loop()
    try:
        host, port = parse_address(address)
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (ValueError, OSError):  # (TimeoutError is an OSError)
        return ProbeResult(False)
    if not infos:
        return ProbeResult(False)
    family, _, _, _, target = infos[0]
    remote = (str(target[0]), int(target[1]))
    probe = BindingProbe(secrets.token_bytes(12), loop.time())
    wake = asyncio.Event()
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Receiver(probe, loop, wake), family=family, remote_addr=remote)
    except OSError:
        return ProbeResult(False)
    try:
        while probe.result is None:
            for datagram in probe.datagrams_to_send(loop.time()):
                transport.sendto(datagram)
            timer = probe.get_timer()
            if timer is None:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, timer - loop.time())):
                    await wake.wait()
            probe.handle_timer(loop.time())
    finally:
        transport.close()
    return probe.result or ProbeResult(False)

