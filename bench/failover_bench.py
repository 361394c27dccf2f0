"""Failover bench: a relay and two paired nodes on one LAN, default settings (needs root).

Each round (a fresh lab: namespaces, relay process, two node processes):
(a) a writer on the phone puts a note every 100 ms; the direct path is cut
    (blackhole routes both ways): seconds until a note written after the cut reaches
    the desktop (through the relay);
(c) the route is restored: seconds until both ends are direct again, and every
    note counted on both sides (lost / repeated events);
(b) the cut happens while idle; `--idle` seconds later (60 by default) one note is
    written: seconds until it reaches the desktop.
Median and p95 over `--rounds` rounds (5 by default). Targets: (a) p95 <= 3 s,
(b) <= 3 s. Then (d): what the idle ping costs — packets and bytes per hour on the
phone's link with one idle direct session and nothing else running (no relay, no
mDNS, no DHT), measured over `--window` seconds.

    .venv/bin/python bench/failover_bench.py [--rounds 5] [--idle 60] [--window 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lab import Lab, make_node_dir, node_argv, trust_each_other, wait_for  # noqa: E402
from tests.netns import failover  # noqa: E402
from tests.netns.nodes import Devices  # noqa: E402


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def one_round(idle: float) -> dict[str, object]:
    lab = Lab()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pair = failover.start(lab, Path(tmp))
            try:
                a = failover.writes_after_a_cut(pair, "a")
                c = failover.restored(pair)
                b = failover.write_after_idle(pair, idle, "b")
                counts = failover.events_once_each(pair)
            finally:
                pair.close()
    finally:
        lab.close()
    return {"a": a, "b": b, "c": c, "counts": counts}


def link_counters(host) -> tuple[int, int]:
    stats = f"/sys/class/net/{host.veth}/statistics"
    out = host.run("sh", "-c", f"cat {stats}/tx_packets {stats}/rx_packets "
                               f"{stats}/tx_bytes {stats}/rx_bytes", check=True).stdout.split()
    tx_p, rx_p, tx_b, rx_b = map(int, out)
    return tx_p + rx_p, tx_b + rx_b


def idle_cost(window: float) -> tuple[float, float]:
    """Packets and bytes per hour on the phone's link, one idle direct session."""
    lab = Lab()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            phone, desk = lab.host("phone"), lab.host("desk")
            hosts = {"phone": phone, "desk": desk}
            nodes = {n: make_node_dir(Path(tmp), n) for n in hosts}
            trust_each_other(nodes["phone"], nodes["desk"], [f"{phone.ip}:7771"],
                             [f"{desk.ip}:7771"])
            for n, host in hosts.items():
                host.spawn(*node_argv(nodes[n], f"{host.ip}:7771"), log=Path(tmp) / f"{n}.log")
            devices = Devices(hosts, nodes)
            wait_for(lambda: devices.path("phone") == "direct", timeout=30, what="a session")
            time.sleep(10)  # the initial sync is over
            packets0, bytes0 = link_counters(phone)
            time.sleep(window)
            packets1, bytes1 = link_counters(phone)
    finally:
        lab.close()
    scale = 3600 / window
    return (packets1 - packets0) * scale, (bytes1 - bytes0) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=300.0)
    args = parser.parse_args()
    rounds = []
    for n in range(args.rounds):
        result = one_round(args.idle)
        rounds.append(result)
        print(f"round {n + 1}: (a) {result['a']:.2f} s  (b) {result['b']:.2f} s  "
              f"(c) {result['c']:.1f} s  {result['counts']}", flush=True)
    for key, label, target in (("a", "(a) writing, cut -> writes arrive", 3.0),
                               ("b", f"(b) idle {args.idle:.0f} s, then one write", 3.0),
                               ("c", "(c) route restored -> direct again", None)):
        values = [float(r[key]) for r in rounds]  # type: ignore[arg-type]
        verdict = "" if target is None else ("  MET" if p95(values) <= target else "  MISSED")
        print(f"{label}: median {statistics.median(values):.2f} s, p95 {p95(values):.2f} s"
              f"{verdict}")
    events = [r["counts"] for r in rounds]
    print("(c) events lost/repeated over all rounds:",
          {k: sum(e[k] for e in events) for k in events[0]})  # type: ignore[index]
    packets, size = idle_cost(args.window)
    print(f"(d) idle ping: {packets:.0f} packets/h, {size / 1024:.1f} KiB/h per idle peer "
          f"(measured over {args.window:.0f} s on the phone's link)")


if __name__ == "__main__":
    main()
