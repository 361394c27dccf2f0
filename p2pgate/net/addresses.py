"""This device's reachable IPv4 addresses (for pairing URIs, mDNS and DHT records)."""

from __future__ import annotations

import fcntl
import socket
import struct

__all__ = ["listen_addresses"]

_SIOCGIFADDR = 0x8915


def _interface_ipv4s() -> list[str]:
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR,
                                     struct.pack("256s", name[:15].encode()))
            except OSError:
                continue
            out.append(socket.inet_ntoa(packed[20:24]))
    return out


def listen_addresses(host: str, port: int) -> list[str]:
    """HOST:PORT strings peers can dial: `host` itself, or if it is a wildcard every
    interface's non-loopback IPv4 address (127.0.0.1 if there is none)."""
    if host not in ("0.0.0.0", "", "::"):  # noqa: S104 (comparing, not binding)
        return [f"{host}:{port}"]
    ips = [ip for ip in _interface_ipv4s() if not ip.startswith("127.")]
    return [f"{ip}:{port}" for ip in ips or ["127.0.0.1"]]
