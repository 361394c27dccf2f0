"""Capture every frame on the namespace's interfaces into FILE (AF_PACKET, raw), until
killed: what the relay host could read off its wire."""

from __future__ import annotations

import socket
import sys


def main(path: str) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    with open(path, "wb") as out:
        while True:
            out.write(s.recv(65536))
            out.flush()


if __name__ == "__main__":
    main(sys.argv[1])
