"""The relay's STUN port: a thin asyncio UDP adapter around `stun.StunResponder`.

Its own socket, never the DHT's (kademlia's first request byte collides with STUN's).
Each answer leaves from the address its request reached (IP_PKTINFO): on a relay bound
to all interfaces with several addresses, an answer from the routing table's choice
would not match the asker's NAT mapping, and the NAT would drop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
from typing import Any

from p2pgate.relay.stun import StunResponder

__all__ = ["StunEndpoint", "start_stun"]

_LINUX = sys.platform.startswith("linux")
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 does not name it
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst (our address), addr (header dst)
_IN6_PKTINFO = struct.Struct("=16si")  # addr, ifindex
_READS_PER_WAKE = 64  # then let the loop run other work


class StunEndpoint:
    """A bound STUN port; `port` is the one bound (useful when asked for port 0 in tests)."""

    def __init__(self, sock: socket.socket, responder: StunResponder) -> None:
        self._sock = sock
        self.responder = responder
        self.host, self.port = sock.getsockname()[:2]
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(_READS_PER_WAKE):
            try:
                data, ancillary, _flags, addr = self._sock.recvmsg(2048, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error for an earlier answer: the asker went away
                continue
            source = (str(addr[0]), int(addr[1]))
            answer = self.responder.answer(data, source, self._loop.time())
            if answer is not None:
                self._send(answer, addr, _reply_from(ancillary))

    def _send(self, answer: bytes, addr: Any, reply_from: list[tuple[int, int, bytes]]
              ) -> None:
        with contextlib.suppress(OSError):  # a full buffer drops it, as UDP may anyway
            try:
                self._sock.sendmsg([answer], reply_from, 0, addr)
            except OSError:
                if not reply_from:
                    raise
                self._sock.sendto(answer, addr)  # the kernel refused our source: its own

    def close(self) -> None:
        """Stop answering and release the port."""
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()


def _reply_from(ancillary: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """Control data that sends an answer from the address its request reached."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            _ifindex, local, _dst = _IN_PKTINFO.unpack_from(data)
            return [(level, kind, _IN_PKTINFO.pack(0, local, bytes(4)))]
        if (level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO
                and len(data) >= _IN6_PKTINFO.size):
            local, _ifindex = _IN6_PKTINFO.unpack_from(data)
            return [(level, kind, _IN6_PKTINFO.pack(local, 0))]
    return []


async def start_stun(host: str, port: int, responder: StunResponder | None = None
                     ) -> StunEndpoint:
    """Bind UDP `host:port` and answer Binding requests on it (OSError if it cannot bind)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        if _LINUX and family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        elif _LINUX and family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        sock.bind(address)
        return StunEndpoint(sock, responder or StunResponder())
    except BaseException:
        sock.close()
        raise
