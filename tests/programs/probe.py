"""A stranger knocks on a P2P port with a made-up admission answer (HOST PORT); prints
how many bytes came back (zero: the listener said nothing)."""

from __future__ import annotations

import socket
import sys


def main(host: str, port: str) -> None:
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(b"P2PG-ADMIT\x01" + bytes(16) + bytes(32) + b"hello?")
    s.settimeout(2)
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except OSError:
        pass
    print(len(got))


if __name__ == "__main__":
    main(*sys.argv[1:])
