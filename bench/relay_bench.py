"""The relay under load: throughput, memory per connection, many sessions, fallback time.

(1) Throughput of a p2pgate session relayed through `p2pgate relay` (its own
    process) against a direct session between the same two endpoints (one process),
    both with admission, pinned TLS and framing; 64 MiB in 64 KiB frames, median of 5
    interleaved runs, each run its own process.
(2) Relay RSS per connection over 1,000 plain ws:// control connections (idle), then
    per connection again once 500 sessions (1,000 splice connections) each carried
    64 KiB both ways (active). In-process TLS is not measured: the relay runs behind a
    TLS terminator (see examples/devices/relay/).
(3) 1,000 concurrent relayed sessions on one relay process: time until all are
    established, and failures.
(4) Time from a blocked direct dial (a listener that never answers admission) to a
    working relayed session, with the connection manager's 500 ms head start.

Run: .venv/bin/python bench/relay_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from session_throughput import CHUNK, _devices  # noqa: E402

RELAY_CONFIG = """
session_rate = 10000000000
global_rate = 10000000000
max_connections_per_ip = 100000
accept_rate_per_ip = 100000.0
invite_rate = 100000.0
max_sessions_per_device = 100
drain_timeout = 0
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RelayProcess:
    def __init__(self, root: Path) -> None:
        config = root / "relay.toml"
        config.write_text(RELAY_CONFIG)
        self.port = _free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p2pgate", "relay", "--listen", f"127.0.0.1:{self.port}",
             "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# ---------------------------------------------------------------- (1) throughput


async def _relay_clients(url: str, made: Any, listener: Any) -> tuple[Any, list[Any]]:
    """Both devices logged in to the relay (b serves its splices with `listener`);
    returns a's client and the tasks running both."""
    from p2pgate.relay.client import RelayClient

    async def yes(_: Any) -> bool:
        return True

    ra = RelayClient(url, made[0][1], yes, listener.handle)
    rb = RelayClient(url, made[1][1], yes, listener.handle)
    tasks = [asyncio.ensure_future(r.run()) for r in (ra, rb)]
    await ra.wait_connected()
    await rb.wait_connected()
    return ra, tasks


async def run_transfer(total: int, root: Path, relayed: bool, relay_url: str) -> float:
    from p2pgate.net import Listener, PeerHello, dial

    made, (ta, tb) = await _devices(root)
    done = asyncio.get_running_loop().create_future()

    async def on_session(session: Any) -> None:
        got = 0
        while got < total:
            got += len(await session.receive())
        done.set_result(None)

    hello_a = PeerHello(str(made[0][1].device_id), "a")
    listener = Listener(tb, lambda: PeerHello(str(made[1][1].device_id), "b"), on_session)
    tasks = []
    if relayed:
        ra, tasks = await _relay_clients(relay_url, made, listener)
        stream = await ra.connect(made[1][1].device_id)
        session = await dial(ta, hello_a, made[1][1].device_id, relay_url, 0, stream=stream)
    else:
        await listener.start("127.0.0.1", 0)
        session = await dial(ta, hello_a, made[1][1].device_id, "127.0.0.1", listener.port)
    payload = os.urandom(CHUNK)
    start = time.perf_counter()
    for _ in range(total // CHUNK):
        await session.send(payload)
    await done
    elapsed = time.perf_counter() - start
    await session.close()
    await listener.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return total / elapsed


# ---------------------------------------------------------------- (2), (3) many connections


async def many(relay: RelayProcess, devices: int, payload: int) -> dict[str, float]:
    """Connect `devices` control connections, then pair them into sessions."""
    from p2pgate.identity import Identity
    from p2pgate.relay.client import RelayClient, SpliceStream

    base = relay.rss_kib()
    inbox: asyncio.Queue[SpliceStream] = asyncio.Queue()

    async def yes(_: Any) -> bool:
        return True

    clients = [RelayClient(relay.url, Identity.generate(), yes, inbox.put)
               for _ in range(devices)]
    tasks = [asyncio.ensure_future(c.run(min_backoff=0.2)) for c in clients]
    await asyncio.wait_for(asyncio.gather(*(c.wait_connected() for c in clients)), 120)
    await asyncio.sleep(1)
    idle = relay.rss_kib()

    started = time.monotonic()
    pairs = list(zip(clients[0::2], clients[1::2], strict=True))
    results = await asyncio.gather(*(a.connect(b._identity.device_id) for a, b in pairs),
                                   return_exceptions=True)
    established = time.monotonic() - started
    streams = [r for r in results if not isinstance(r, BaseException)]
    failures = len(results) - len(streams)
    accepted = [await asyncio.wait_for(inbox.get(), 30) for _ in streams]

    async def exchange(a: SpliceStream, b: SpliceStream) -> None:
        await a.write(b"a" * payload)
        got = 0
        while got < payload:
            got += len(await b.read())
        await b.write(b"b" * payload)
        got = 0
        while got < payload:
            got += len(await a.read())

    await asyncio.gather(*(exchange(a, b) for a, b in zip(streams, accepted, strict=True)))
    await asyncio.sleep(1)
    active = relay.rss_kib()
    for s in streams + accepted:
        await s.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    splices = 2 * len(streams)
    return {"idle_kib": (idle - base) / devices,
            "active_kib": (active - idle) / max(1, splices),
            "sessions": len(pairs), "established_s": established, "failures": failures}


# ---------------------------------------------------------------- (4) fallback


async def fallback(root: Path, relay_url: str) -> float:
    from p2pgate.net import Listener, PeerHello, dial
    from p2pgate.net.peers import DialFailed

    made, (ta, tb) = await _devices(root)
    sessions: asyncio.Queue[Any] = asyncio.Queue()
    listener = Listener(tb, lambda: PeerHello(str(made[1][1].device_id), "b"), sessions.put)
    ra, tasks = await _relay_clients(relay_url, made, listener)
    release = asyncio.Event()

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    hello = PeerHello(str(made[0][1].device_id), "a")
    peer = made[1][1].device_id
    start = time.perf_counter()
    direct = asyncio.ensure_future(dial(ta, hello, peer, "127.0.0.1", port))
    await asyncio.sleep(0.5)  # the connection manager's head start for direct paths
    stream = await ra.connect(peer)
    session = await dial(ta, hello, peer, relay_url, 0, stream=stream)
    elapsed = time.perf_counter() - start
    direct.cancel()
    with contextlib.suppress(asyncio.CancelledError, DialFailed):
        await direct
    await session.close()
    await (await asyncio.wait_for(sessions.get(), 5)).close()
    release.set()
    silent.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return elapsed


# ---------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--run", choices=["direct", "relay"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()
    if args.quick:
        args.mib, args.rounds = 8, 1
    total = args.mib << 20
    if args.run:
        with tempfile.TemporaryDirectory() as tmp:
            print(asyncio.run(run_transfer(total, Path(tmp), args.run == "relay", args.url)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        relay = RelayProcess(Path(tmp))
        try:
            res: dict[str, list[float]] = {"direct": [], "relay": []}
            for rnd in range(args.rounds):
                for kind in (("direct", "relay") if rnd % 2 == 0 else ("relay", "direct")):
                    out = subprocess.run([sys.executable, __file__, "--run", kind, "--url",
                                          relay.url, "--mib", str(args.mib)],
                                         capture_output=True, text=True, check=True)
                    res[kind].append(float(out.stdout.strip()))
            d, r = statistics.median(res["direct"]), statistics.median(res["relay"])
            print(f"(1) {args.mib} MiB, median of {args.rounds}: direct {d / 1e6:.1f} MB/s, "
                  f"relayed {r / 1e6:.1f} MB/s, ratio {r / d:.2f} (target >= 0.5)")
            times = [asyncio.run(fallback(Path(tmp) / f"f{i}", relay.url))
                     for i in range(args.rounds)]
            print(f"(4) blocked direct dial -> relayed session: median "
                  f"{statistics.median(times):.2f} s (target <= 3 s)")
        finally:
            relay.stop()
        relay = RelayProcess(Path(tmp))
        try:
            n = 200 if args.quick else 2000
            m = asyncio.run(many(relay, n, 64 << 10))
            print(f"(2) relay RSS per idle ws:// control connection over {n}: "
                  f"{m['idle_kib']:.1f} KiB (target <= 64 KiB); per active splice "
                  f"connection (64 KiB each way): {m['active_kib']:.1f} KiB")
            print(f"(3) {m['sessions']:.0f} concurrent relayed sessions established in "
                  f"{m['established_s']:.2f} s, {m['failures']:.0f} failures")
        finally:
            relay.stop()


if __name__ == "__main__":
    main()
