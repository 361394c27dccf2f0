"""Local API throughput: p2pgate node vs a bare aiohttp handler doing the same JSON work.

Each target runs in its own process, and so does the load generator. Five rounds,
targets interleaved, median reported. GETs read 100 documents at random. The node
runs twice: with `durability = "full"` (the default: libSQL WAL, synchronous=FULL,
encrypted; an acknowledged write is on disk, writes queued together share one
commit) and with "normal" (synchronous=NORMAL: survives a killed node, not power
loss). The bare handler parses and returns the same JSON and stores nothing.

    .venv/bin/python bench/api_bench.py [--seconds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

DOC = {"title": "benchmark note", "body": "x" * 200, "tags": ["a", "b"], "n": 1}
SEEDS = 100


# -- the baseline server -------------------------------------------------------------

def bare_server(port: int) -> None:
    async def get(request: web.Request) -> web.Response:
        return web.json_response({"collection": "bench", "id": request.match_info["id"],
                                  "data": DOC, "version": "1", "deleted": False, "cursor": 1})

    async def put(request: web.Request) -> web.Response:
        data = await request.json()
        return web.json_response({"collection": "bench", "id": request.match_info["id"],
                                  "data": data, "version": "1", "deleted": False, "cursor": 1})

    app = web.Application()
    app.router.add_get("/api/v1/collections/bench/docs/{id}", get)
    app.router.add_put("/api/v1/collections/bench/docs/{id}", put)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- the load generator --------------------------------------------------------------

async def load(url: str, token: str, op: str, seconds: float, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps(DOC)
    stop = time.perf_counter() + seconds

    async def worker(k: int, session: aiohttp.ClientSession) -> None:
        i = 0
        while time.perf_counter() < stop:
            doc_url = f"{url}/api/v1/collections/bench/docs/d{k}-{i % 50}"
            started = time.perf_counter()
            if op == "get":
                seed = f"{url}/api/v1/collections/bench/docs/seed{random.randrange(SEEDS)}"
                async with session.get(seed) as r:
                    await r.read()
            else:
                async with session.put(doc_url, data=body) as r:
                    await r.read()
            if r.status >= 400:
                raise SystemExit(f"{op} failed: {r.status}")
            latencies.append(time.perf_counter() - started)
            i += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k, session) for k in range(concurrency)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p95_ms": 1000 * latencies[int(len(latencies) * 0.95)],
    }


# -- orchestration -------------------------------------------------------------------

def _wait_http(url: str) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/api/v1/health", timeout=1)  # noqa: S310 (loopback)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _start_node(tmp: Path, durability: str) -> tuple[subprocess.Popen[bytes], str, str]:
    data = tmp / f"node-{durability}"
    data.mkdir()
    (data / "config.toml").write_text(
        f'rate_limit = 1000000\nrate_burst = 1000000\ndurability = "{durability}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pgate", "--data-dir", str(data), "node", "--api",
         "127.0.0.1:0", "--listen", "127.0.0.1:0", "--no-mdns", "--no-dht"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    while not (data / "node.json").exists():
        if proc.poll() is not None:
            raise SystemExit("node failed to start")
        time.sleep(0.05)
    url = json.loads((data / "node.json").read_text())["api_url"]
    token = (data / "admin.token").read_text().strip()
    return proc, url, token


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_load(url: str, token: str, op: str, args: argparse.Namespace) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--load", url, "--token", token, "--op", op,
         "--seconds", str(args.seconds), "--concurrency", str(args.concurrency)],
        capture_output=True, text=True, check=True,
    )
    return dict(json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--op", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server)
        return
    if args.load:
        print(json.dumps(asyncio.run(load(args.load, args.token, args.op, args.seconds,
                                          args.concurrency))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        full, full_url, full_token = _start_node(Path(tmp), "full")
        normal, normal_url, normal_token = _start_node(Path(tmp), "normal")
        port = _free_port()
        bare = subprocess.Popen([sys.executable, __file__, "--bare-server", str(port)])
        bare_url = f"http://127.0.0.1:{port}"
        targets = [("p2pgate", full_url, full_token), ("p2pgate-normal", normal_url,
                                                       normal_token), ("bare", bare_url, "")]
        try:
            _wait_http_bare(bare_url)
            for _, url, token in targets[:2]:
                _wait_http(url)
                _seed(url, token)
            results: dict[tuple[str, str], list[dict[str, float]]] = {}
            for rnd in range(args.rounds):
                order = targets[rnd % 3:] + targets[:rnd % 3]
                for op in ("get", "put"):
                    for name, url, token in order:
                        results.setdefault((name, op), []).append(
                            _run_load(url, token, op, args))
        finally:
            for proc in (full, normal, bare):
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)

    def med(name: str, op: str, key: str) -> float:
        return statistics.median(r[key] for r in results[(name, op)])

    print(f"API bench: {args.rounds} interleaved rounds of {args.seconds:.0f} s, "
          f"{args.concurrency} connections, median")
    print(f"{'op':<5}{'target':<16}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'ratio':>8}")
    for op in ("get", "put"):
        base = med("bare", op, "rps")
        for name, _, _ in targets:
            print(f"{op:<5}{name:<16}{med(name, op, 'rps'):>10.0f}"
                  f"{med(name, op, 'p50_ms'):>10.2f}{med(name, op, 'p95_ms'):>10.2f}"
                  f"{med(name, op, 'rps') / base:>8.2f}")
    print("ratio = req/s against the bare handler (target >= 0.5); p2pgate = durability "
          "full (default), p2pgate-normal = durability normal")


def _seed(url: str, token: str) -> None:
    import urllib.request

    for i in range(SEEDS):
        req = urllib.request.Request(  # noqa: S310 (loopback)
            f"{url}/api/v1/collections/bench/docs/seed{i}", data=json.dumps(DOC).encode(),
            method="PUT", headers={"Authorization": f"Bearer {token}",
                                   "Content-Type": "application/json"})
        urllib.request.urlopen(req).read()  # noqa: S310


def _wait_http_bare(url: str) -> None:
    import socket

    deadline = time.monotonic() + 30
    host, port = url.removeprefix("http://").split(":")
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


if __name__ == "__main__":
    main()
