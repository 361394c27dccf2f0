"""sync engine vs pycrdt doing the same work, side by side in one process.

(a) 100k field writes applied locally, each its own operation: `Replica.patch` of
    one field on in-memory storage vs one pycrdt `Doc` holding one nested `Map` per
    document, each write in its own transaction.
(b) Two replicas of 50k documents each, 1k documents edited on both sides, then
    fully reconciled both ways: our sessions over an in-memory link (version
    vectors, Changes, Acks) vs pycrdt state vectors and diff updates. Wire bytes
    are every message both ways beside pycrdt's state vectors plus updates.

Median of 5 interleaved runs. `--quick` runs a small smoke version.
Run: .venv/bin/python bench/sync_bench.py [--quick] [--profile a|b]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycrdt import Doc, Map  # noqa: E402

from sync import PeerSession, Replica  # noqa: E402

T0 = 1_700_000_000.0
FIELDS = [f"f{i}" for i in range(7)]


# ---------------------------------------------------------------- (a) local writes


def ours_local(writes: int, docs: int) -> float:
    replica = Replica("bench-device-a")
    ids = [f"doc{i}" for i in range(docs)]
    patch, next_event = replica.patch, replica.next_event
    start = time.perf_counter()
    for k in range(writes):
        patch("c", ids[k % docs], {FIELDS[k % 7]: k}, T0 + k / 1000)
        next_event()  # the node hands each DocumentChanged to apps as it comes
    return time.perf_counter() - start


def pycrdt_local(writes: int, docs: int) -> float:
    doc: Doc[Any] = Doc()
    root = doc.get("docs", type=Map)
    ids = [f"doc{i}" for i in range(docs)]
    maps: dict[str, Map[Any]] = {}
    start = time.perf_counter()
    for k in range(writes):
        doc_id = ids[k % docs]
        m = maps.get(doc_id)
        if m is None:
            root[doc_id] = Map()
            m = maps[doc_id] = root[doc_id]
        m[FIELDS[k % 7]] = k
    return time.perf_counter() - start


# ---------------------------------------------------------------- (b) reconcile


def _exchange(sa: PeerSession, sb: PeerSession, now: float) -> int:
    wire = 0
    for _ in range(50):
        moved = 0
        for src, dst in ((sa, sb), (sb, sa)):
            for data in src.messages_to_send(now):
                wire += len(data)
                moved += 1
                dst.receive(data, now)
        if not moved:
            return wire
    raise AssertionError("no quiescence")


def ours_reconcile(docs: int, edited: int) -> tuple[float, int]:
    a, b = Replica("bench-device-a"), Replica("bench-device-b")
    for i in range(docs):
        a.put("c", f"doc{i}", {"title": f"t{i}", "n": i, "tag": "x"}, T0)
    _exchange(a.connect("bench-device-b", T0), b.connect("bench-device-a", T0), T0)
    step = docs // edited
    for j in range(edited):
        a.patch("c", f"doc{j * step}", {"title": "from A"}, T0 + 1)
        b.patch("c", f"doc{j * step}", {"title": "from B"}, T0 + 1)
    for r in (a, b):
        while r.next_event() is not None:
            pass
    start = time.perf_counter()
    now = T0 + 2
    wire = _exchange(a.connect("bench-device-b", now), b.connect("bench-device-a", now), now)
    elapsed = time.perf_counter() - start
    assert a.get("c", "doc0") == b.get("c", "doc0")
    assert a.version_vector() == b.version_vector()
    return elapsed, wire


def pycrdt_reconcile(docs: int, edited: int) -> tuple[float, int]:
    a: Doc[Any] = Doc()
    ra = a.get("docs", type=Map)
    with a.transaction():
        for i in range(docs):
            ra[f"doc{i}"] = Map({"title": f"t{i}", "n": i, "tag": "x"})
    b: Doc[Any] = Doc()
    b.apply_update(a.get_update())
    rb = b.get("docs", type=Map)
    step = docs // edited
    for j in range(edited):
        ra[f"doc{j * step}"]["title"] = "from A"
        rb[f"doc{j * step}"]["title"] = "from B"
    start = time.perf_counter()
    sv_a, sv_b = a.get_state(), b.get_state()
    update_a, update_b = a.get_update(sv_b), b.get_update(sv_a)
    b.apply_update(update_a)
    a.apply_update(update_b)
    elapsed = time.perf_counter() - start
    assert ra["doc0"]["title"] == rb["doc0"]["title"]
    return elapsed, len(sv_a) + len(sv_b) + len(update_a) + len(update_b)


# ---------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", choices=["a", "b"], help="cProfile our side once")
    args = parser.parse_args()
    scale = 100 if args.quick else 1
    writes, write_docs = 100_000 // scale, 10_000 // scale
    docs, edited = 50_000 // scale, 1_000 // scale

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        if args.profile == "a":
            ours_local(writes, write_docs)
        else:
            ours_reconcile(docs, edited)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
        return

    results: dict[str, list[float]] = {k: [] for k in ("a_ours", "a_pyc", "b_ours", "b_pyc")}
    wire: dict[str, int] = {}
    for _ in range(args.runs):  # interleaved: ours and pycrdt alternate within each run
        results["a_ours"].append(ours_local(writes, write_docs))
        results["a_pyc"].append(pycrdt_local(writes, write_docs))
        t, wire["ours"] = ours_reconcile(docs, edited)
        results["b_ours"].append(t)
        t, wire["pyc"] = pycrdt_reconcile(docs, edited)
        results["b_pyc"].append(t)
    med = {k: statistics.median(v) for k, v in results.items()}

    def row(label: str, ours: float, theirs: float, target: float) -> str:
        ratio = ours / theirs
        verdict = "ok" if ratio <= target else "MISS"
        return (
            f"{label:<44} {ours * 1000:>10.1f} {theirs * 1000:>10.1f} {ratio:>7.2f}x"
            f"  (target <= {target:g}x: {verdict})"
        )

    print(f"median of {args.runs} interleaved runs{' (quick)' if args.quick else ''}")
    print(f"{'':<44} {'ours ms':>10} {'pycrdt ms':>10} {'ratio':>8}")
    print(row(f"(a) {writes} local field writes", med["a_ours"], med["a_pyc"], 3))
    print(row(f"(b) reconcile 2x{docs} docs, {edited} edited each", med["b_ours"], med["b_pyc"], 3))
    per_write: Callable[[str], float] = lambda k: med[k] / writes * 1e6  # noqa: E731
    print(f"    per write: ours {per_write('a_ours'):.1f} us, pycrdt {per_write('a_pyc'):.1f} us")
    print(
        f"(b) bytes on the wire, both ways: ours {wire['ours']}, pycrdt {wire['pyc']}"
        f" (ratio {wire['ours'] / wire['pyc']:.2f}x)"
    )


if __name__ == "__main__":
    main()
