"""A stranger's flood of silent connections on a P2P port: HOST PORT COUNT MODE HOLD SOURCES.

MODE `pair` sends `P2PG-PAIR` and goes silent; `hello:NAMEPLATE` also sends a valid
pairing hello (a SPAKE2 message for a guessed code of that nameplate) and goes silent.
SOURCES is `A.B.C.D-N`: N consecutive loopback source addresses, used in turn. Prints
`{"opened": n}` once every connection is open, then holds them HOLD seconds and prints
`{"open_at_end": n, "closed_by_node": n, "refused": n}`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import resource
import sys

from p2pgate.net.admission import PAIR_MAGIC
from p2pgate.pairing.protocol import Role
from p2pgate.pairing.wire import encode


def _sources(spec: str) -> list[str]:
    first, _, count = spec.partition("-")
    base = ipaddress.ip_address(first)
    return [str(base + i) for i in range(int(count or 1))]


async def _hold(host: str, port: int, source: str, first: bytes, closed: list[int],
                refused: list[int], opened: asyncio.Queue[None]) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        writer.write(first)
        await writer.drain()
    except OSError:
        refused.append(1)
        await opened.put(None)
        return
    await opened.put(None)
    try:
        while await reader.read(4096):
            pass
        closed.append(1)  # the node closed it
    except OSError:
        closed.append(1)
    finally:
        writer.close()


async def main(host: str, port: str, count: str, mode: str, hold: str, sources: str) -> None:
    limit = int(count) + 256
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(limit, resource.getrlimit(
        resource.RLIMIT_NOFILE)[1])))
    first = PAIR_MAGIC
    addresses = _sources(sources)
    closed: list[int] = []
    refused: list[int] = []
    opened: asyncio.Queue[None] = asyncio.Queue()
    tasks = []
    for i in range(int(count)):
        if mode.startswith("hello:"):
            role = Role(joiner=True, password=f"{mode[6:]}-{os.urandom(4).hex()}".encode())
            first = PAIR_MAGIC + encode({"t": "hello", "nameplate": int(mode[6:]),
                                         "kind": "code", "pake": role.message})
        tasks.append(asyncio.ensure_future(_hold(host, int(port), addresses[i % len(addresses)],
                                                 first, closed, refused, opened)))
        if i % 50 == 49:
            await asyncio.sleep(0)  # let the node breathe between bursts, as a real flood does
    for _ in range(int(count)):
        await opened.get()
    print(json.dumps({"opened": int(count) - len(refused)}), flush=True)
    await asyncio.sleep(float(hold))
    still = sum(1 for t in tasks if not t.done())
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"open_at_end": still, "closed_by_node": len(closed),
                      "refused": len(refused)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
