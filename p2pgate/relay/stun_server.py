"""The relay's STUN port: a thin asyncio UDP adapter around `stun.StunResponder`.

Its own socket, never the DHT's (kademlia's first request byte collides with STUN's).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from p2pgate.relay.stun import StunResponder

__all__ = ["StunEndpoint", "start_stun"]


class _StunProtocol(asyncio.DatagramProtocol):
    def __init__(self, responder: StunResponder) -> None:
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = asyncio.get_running_loop().time()
        answer = self.responder.answer(data, (str(addr[0]), int(addr[1])), now)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)

    def error_received(self, exc: Exception) -> None:
        """ICMP errors for earlier answers (the asker went away): nothing to do."""


class StunEndpoint:
    """A bound STUN port; `port` is the one bound (useful when asked for port 0 in tests)."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _StunProtocol) -> None:
        self._transport = transport
        self.responder = protocol.responder
        self.host, self.port = transport.get_extra_info("sockname")[:2]

    def close(self) -> None:
        """Stop answering and release the port."""
        self._transport.close()


async def start_stun(host: str, port: int, responder: StunResponder | None = None
                     ) -> StunEndpoint:
    """Bind UDP `host:port` and answer Binding requests on it (OSError if it cannot bind)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _StunProtocol(responder or StunResponder()), local_addr=(host, port))
    assert isinstance(protocol, _StunProtocol)  # noqa: S101
    return StunEndpoint(transport, protocol)
