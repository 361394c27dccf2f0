"""Plain TCP for the lab's own checks: `serve PORT` accepts and closes forever;
`connect HOST PORT` prints `open` or the error's name."""

from __future__ import annotations

import socket
import sys


def main(op: str, *args: str) -> None:
    if op == "serve":
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", int(args[0])))  # noqa: S104 (inside a test namespace)
        s.listen(16)
        while True:
            c, _ = s.accept()
            c.close()
    try:
        socket.create_connection((args[0], int(args[1])), timeout=1).close()
        print("open")
    except OSError as exc:
        print(type(exc).__name__)


if __name__ == "__main__":
    main(*sys.argv[1:])
