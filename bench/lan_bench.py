"""LAN bench: two real nodes in network namespaces on one bridge (needs root).

(1) write-to-remote-event latency: the phone writes, the desktop's WebSocket sees it;
(2) time from starting the desktop's node to a live session with the paired phone;
(3) initial sync of N 1 KB documents (seeded into the phone's store through the
    replica, in one transaction), documents/s, and the bytes/s it implies beside
    the session throughput measured by bench/session_throughput.py.
Median of 5 rounds for (1) and (2); (3) runs once per invocation.

    .venv/bin/python bench/lan_bench.py [--docs 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pgate.client import Client  # noqa: E402
from tests.lab import Lab, make_node_dir, trust_each_other, wait_for  # noqa: E402

CONFIG = 'rate_limit = 1000000\nrate_burst = 1000000\nallowed_hosts = ["{ip}"]\n'


def seed(node_dir, count: int) -> None:
    from p2pgate.storage.database import connect, load_key, migrate
    from p2pgate.storage.syncstore import LibsqlStorage
    from sync.replica import Replica

    conn = connect(node_dir.data_dir.database, load_key(node_dir.data_dir.database_key))
    try:
        migrate(conn)
        storage = LibsqlStorage(conn)
        replica = Replica(node_dir.device_id, storage)
        now = time.time()
        with storage.group():
            for i in range(count):
                replica.put("bulk", f"d{i:06d}", {"body": "x" * 1000}, now)
    finally:
        conn.close()


def start(host, node, tmp: Path):
    (node.data_dir.root / "config.toml").write_text(CONFIG.format(ip=host.ip))
    (node.data_dir.root / "node.json").unlink(missing_ok=True)
    proc = host.spawn(sys.executable, "-m", "p2pgate", "--data-dir", str(node.data_dir.root),
                      "node", "--api", f"{host.ip}:8771", "--listen", f"{host.ip}:7771",
                      "--no-mdns", "--no-dht", log=tmp / f"{node.name}.log")
    wait_for(lambda: (node.data_dir.root / "node.json").exists(), what="node start")
    return proc


async def latency(desk_url, desk_token, phone_url, phone_token, samples=50) -> list[float]:
    out = []
    async with Client(desk_url, desk_token) as desk, Client(phone_url, phone_token) as phone:
        start_cursor = (await desk.node()).cursor
        events = desk.events(cursor=start_cursor)
        for i in range(samples):
            t0 = time.perf_counter()
            await phone.put("lat", f"k{i}", {"i": i})
            while True:
                event = await anext(events)
                if event.collection == "lat" and event.id == f"k{i}":
                    break
            out.append(time.perf_counter() - t0)
        await events.aclose()
    return out


async def peers(url, token):
    async with Client(url, token) as c:
        return (await c.peers()).items


async def doc_count_cursor(url, token):
    async with Client(url, token) as c:
        return (await c.node()).cursor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--driver", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    lab = Lab()
    try:
        ph, dh, bh = lab.host("phone"), lab.host("desk"), lab.host("bench")
        phone, desk = make_node_dir(tmp, "phone"), make_node_dir(tmp, "desk")
        trust_each_other(phone, desk, [f"{ph.ip}:7771"], [f"{dh.ip}:7771"])
        pu, du = f"http://{ph.ip}:8771", f"http://{dh.ip}:8771"
        pt, dt = phone.admin_token(), desk.admin_token()
        driver = [sys.executable, __file__, "--driver"]

        def drive(*a: str) -> object:
            out = bh.run(*driver, *a, timeout=600)
            if out.returncode != 0:
                raise SystemExit(out.stderr)
            return json.loads(out.stdout)

        start(ph, phone, tmp)
        lat, connect_times = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            proc = start(dh, desk, tmp)
            drive("wait-peer", du, dt)
            connect_times.append(time.perf_counter() - t0)
            lat.extend(drive("latency", du, dt, pu, pt))
            proc.terminate()
            proc.wait(20)
        lat.sort()
        # (3) initial sync: a fresh desktop, a phone holding N documents
        for p in ph.processes:
            p.terminate()
            p.wait(20)
        seed(phone, args.docs)
        fresh = make_node_dir(tmp, "desk2")
        trust_each_other(phone, fresh, [f"{ph.ip}:7771"], [f"{dh.ip}:7771"])
        start(ph, phone, tmp)
        t0 = time.perf_counter()
        start(dh, fresh, tmp)
        drive("wait-cursor", du, fresh.admin_token(), str(args.docs))
        sync_s = time.perf_counter() - t0
    finally:
        lab.close()
    docs_s = args.docs / sync_s
    print(f"LAN bench: two nodes in namespaces on one bridge, {args.rounds} rounds")
    print(f"write -> remote event latency  p50 {1000 * lat[len(lat) // 2]:.1f} ms   "
          f"p95 {1000 * lat[int(len(lat) * 0.95)]:.1f} ms  ({len(lat)} samples; "
          "target p50 <= 20 ms)")
    print(f"node start -> paired peer connected  median {statistics.median(connect_times):.2f} s"
          "  (target <= 2 s)")
    print(f"initial sync of {args.docs} x 1 KB docs: {sync_s:.1f} s, {docs_s:.0f} docs/s, "
          f"~{docs_s * 1.1e3 / 1e6:.1f} MB/s of document payload (compare with "
          "bench/session_throughput.py)")


def driver(argv: list[str]) -> None:
    cmd, *rest = argv
    if cmd == "wait-peer":
        url, token = rest
        wait_for(lambda: asyncio.run(peers(url, token)), timeout=60, interval=0.02,
                 what="peer")
        print("null")
    elif cmd == "latency":
        print(json.dumps(asyncio.run(latency(*rest))))
    elif cmd == "wait-cursor":
        url, token, n = rest
        wait_for(lambda: asyncio.run(doc_count_cursor(url, token)) >= int(n), timeout=3600,
                 interval=0.2, what="initial sync")
        print("null")


if __name__ == "__main__":
    if "--driver" in sys.argv:
        driver(sys.argv[sys.argv.index("--driver") + 1:])
    else:
        main()
