"""p2pgate session throughput vs a bare asyncio TLS 1.3 stream, same transfer.

Both move TOTAL bytes in 64 KiB writes over TCP loopback, TLS 1.3 with the same
Ed25519 certificates. The p2pgate run goes through admission, pinned TLS over
MemoryBIO, framing and Hello; the baseline is asyncio's own TLS transport. Each
run is its own process; five rounds interleaved; medians and the ratio printed.

    .venv/bin/python bench/session_throughput.py [--mib 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 64 << 10


async def _devices(root: Path):  # type: ignore[no-untyped-def]
    from p2pgate.identity import Identity
    from p2pgate.identity.paths import DataDir
    from p2pgate.net.peers import Trust
    from p2pgate.storage.database import Database
    from p2pgate.storage.registry import DeviceRegistry

    made = []
    for name in ("a", "b"):
        data_dir = DataDir(root / name)
        identity = Identity.generate()
        identity.save(data_dir)
        db = await Database.open(data_dir.root / "db", "k" * 32)
        registry = DeviceRegistry(db)
        made.append((name, identity, data_dir, db, registry))
    k = os.urandom(32)
    for (_, _, _, _, reg), (_, other, _, _, _) in ((made[0], made[1]), (made[1], made[0])):
        await reg.begin_pairing(other.cert_der, "peer")
        await reg.complete_pairing(other.device_id, k, os.urandom(32))
    trusts = []
    for _, _, data_dir, _, registry in made:
        trust = Trust(registry, data_dir.device_cert, data_dir.device_key)
        await trust.load()
        trusts.append(trust)
    return made, trusts


async def run_session(total: int, root: Path) -> float:
    from p2pgate.net import Listener, PeerHello, dial

    made, (ta, tb) = await _devices(root)
    done = asyncio.get_running_loop().create_future()

    async def on_session(session):  # type: ignore[no-untyped-def]
        got = 0
        while got < total:
            got += len(await session.receive())
        done.set_result(None)

    listener = Listener(tb, lambda: PeerHello(str(made[1][1].device_id), "b"), on_session)
    await listener.start("127.0.0.1", 0)
    session = await dial(ta, PeerHello(str(made[0][1].device_id), "a"), made[1][1].device_id,
                         "127.0.0.1", listener.port)
    payload = os.urandom(CHUNK)
    start = time.perf_counter()
    for _ in range(total // CHUNK):
        await session.send(payload)
    await done
    elapsed = time.perf_counter() - start
    await session.close()
    await listener.stop()
    return total / elapsed


async def run_tls(total: int, root: Path) -> float:
    from p2pgate.net.tls import make_context

    made, _ = await _devices(root)
    (_, ia, da, _, _), (_, ib, db, _, _) = made
    server_ctx = make_context(True, db.device_cert, db.device_key, [ia.cert_der])
    client_ctx = make_context(False, da.device_cert, da.device_key, [ib.cert_der])
    done = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = 0
        while got < total:
            got += len(await reader.read(1 << 20))
        done.set_result(None)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                   server_hostname=None)
    assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
    payload = os.urandom(CHUNK)
    start = time.perf_counter()
    for _ in range(total // CHUNK):
        writer.write(payload)
        await writer.drain()
    await done
    elapsed = time.perf_counter() - start
    writer.close()
    server.close()
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--run", choices=["session", "tls"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    total = args.mib << 20
    if args.run:
        with tempfile.TemporaryDirectory() as tmp:
            fn = run_session if args.run == "session" else run_tls
            print(asyncio.run(fn(total, Path(tmp))))
        return
    results: dict[str, list[float]] = {"session": [], "tls": []}
    for rnd in range(args.rounds):
        for kind in (("session", "tls") if rnd % 2 == 0 else ("tls", "session")):
            out = subprocess.run([sys.executable, __file__, "--run", kind, "--mib",
                                  str(args.mib)], capture_output=True, text=True, check=True)
            results[kind].append(float(out.stdout.strip()))
    session = statistics.median(results["session"])
    tls = statistics.median(results["tls"])
    print(f"session throughput: {args.mib} MiB in 64 KiB frames over TCP loopback, "
          f"median of {args.rounds} interleaved runs, one process each")
    print(f"p2pgate session      {session / 1e6:8.1f} MB/s")
    print(f"asyncio TLS 1.3      {tls / 1e6:8.1f} MB/s")
    print(f"ratio                {session / tls:8.2f}  (target >= 0.7)")


if __name__ == "__main__":
    main()
