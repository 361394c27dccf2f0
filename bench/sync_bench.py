"""sync engine vs pycrdt doing the same work, side by side in one process.

(a) 100k field writes applied locally, each its own operation: `Replica.patch` of
    one field on in-memory storage vs one pycrdt `Doc` holding one nested `Map` per
    document, each write in its own transaction.
(b) Two replicas of 50k documents each, 1k documents edited on both sides, then
    fully reconciled both ways: our sessions over an in-memory link (version
    vectors, Changes, Acks) vs pycrdt state vectors and diff updates. Wire bytes
    are every message both ways beside pycrdt's state vectors plus updates.

(c) Reconnecting after d = 1, 10, 1000 changed documents among N = 10k and 100k:
    bytes on the wire (both ways) and round trips, for a complete replica (version
    vectors) and for a filtered one (half the documents match; range-based
    reconciliation), beside the changed payload itself (the new field values) and
    the states that carry it.
(d) Peak RSS of each side, each in its own process, reconciling the filtered
    replica of N = 100k after d = 10 (and the RSS before reconciling).
(e) (a) and (b) on the encrypted libSQL storage beside in-memory.

Median of 5 interleaved runs for timings; (c) and (d) are deterministic counts
and measured once. `--quick` runs a small smoke version.
Run: .venv/bin/python bench/sync_bench.py [--quick] [--only a,b,c,d,e] [--profile a|b]
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing as mp
import pickle
import pstats
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycrdt import Doc, Map  # noqa: E402

from sync import CollectionPolicy, MemoryStorage, PeerPolicy, PeerSession, Replica  # noqa: E402
from sync.statecodec import encode_state  # noqa: E402

T0 = 1_700_000_000.0
FIELDS = [f"f{i}" for i in range(7)]


# ---------------------------------------------------------------- (a) local writes


@contextmanager
def libsql_storage() -> Iterator[Any]:
    """A fresh encrypted libSQL file (durability `normal`, as a phone would run)."""
    from p2pgate.storage.database import connect, migrate
    from p2pgate.storage.syncstore import LibsqlStorage

    with tempfile.TemporaryDirectory() as tmp:
        conn = connect(Path(tmp) / "bench.db", "b" * 32, durability="normal")
        migrate(conn)
        try:
            yield LibsqlStorage(conn)
        finally:
            conn.close()


@contextmanager
def memory_storage() -> Iterator[Any]:
    yield MemoryStorage()


STORAGE = {"memory": memory_storage, "libsql": libsql_storage}


def ours_local(writes: int, docs: int, storage: str = "memory") -> float:
    with STORAGE[storage]() as store:
        return _ours_local(writes, docs, store)


def _ours_local(writes: int, docs: int, store: Any) -> float:
    replica = Replica("bench-device-a", store)
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
    return _exchange_counted(sa, sb, now)[0]


def _exchange_counted(sa: PeerSession, sb: PeerSession, now: float) -> tuple[int, float]:
    """Run both sessions to quiescence: (bytes both ways, round trips). A round trip
    is a flight each way; a last one-way flight counts half."""
    wire = flights = 0
    for _ in range(100):
        moved = 0
        for src, dst in ((sa, sb), (sb, sa)):
            out = src.messages_to_send(now)
            if out:
                flights += 1
            for data in out:
                wire += len(data)
                moved += 1
                dst.receive(data, now)
        if not moved:
            return wire, flights / 2
    raise AssertionError("no quiescence")


def ours_reconcile(docs: int, edited: int, storage: str = "memory") -> tuple[float, int]:
    with STORAGE[storage]() as sa, STORAGE[storage]() as sb:
        return _ours_reconcile(docs, edited, sa, sb)


def _ours_reconcile(docs: int, edited: int, store_a: Any, store_b: Any) -> tuple[float, int]:
    a, b = Replica("bench-device-a", store_a), Replica("bench-device-b", store_b)
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


# ---------------------------------------------------------------- (c), (d) reconnecting

BODY = "x" * 100
FILTER = PeerPolicy({"c": CollectionPolicy("both", {"k": 0})})


def _pair(n: int, filtered: bool) -> tuple[Replica, Replica]:
    """A with n documents; B already synced with A: all of them (complete) or the half
    that matches its filter. B is built directly (same states, same log), not synced."""
    a = Replica("bench-device-a")
    for i in range(n):
        a.put("c", f"doc{i:06}", {"k": i % 2, "body": BODY, "n": i}, T0)
    store = MemoryStorage()
    assert isinstance(a.storage, MemoryStorage)
    if filtered:
        store.docs = {key: st for key, st in a.storage.docs.items() if int(key[1][3:]) % 2 == 0}
    else:
        store.docs = dict(a.storage.docs)
        store.log = {o: list(cs) for o, cs in a.storage.log.items()}
    store.clock = a.storage.clock
    b = Replica("bench-device-b", store)
    if filtered:
        a.set_policy("bench-device-b", FILTER)
        b.set_policy("bench-device-a", FILTER)
    return a, b


def reconnect_cost(n: int, d: int, filtered: bool) -> tuple[int, float, int, int]:
    """(wire bytes, round trips, payload bytes, state bytes) to reconcile after d changes."""
    a, b = _pair(n, filtered)
    changed = [f"doc{(i * (n // d)) // 2 * 2:06}" for i in range(d)]  # matching ones
    value = "changed " + "y" * 92
    for doc_id in changed:
        a.patch("c", doc_id, {"body": value}, T0 + 1)
    payload = d * len(value)
    states = sum(len(encode_state(a.storage.get_doc("c", doc_id))) for doc_id in changed)
    now = T0 + 2
    wire, trips = _exchange_counted(a.connect("bench-device-b", now),
                                    b.connect("bench-device-a", now), now)
    assert b.get("c", changed[-1]) == a.get("c", changed[-1])
    return wire, trips, payload, states


def _peak_kib() -> int:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _rss_side(role: str, path: str, conn: Any, results: Any) -> None:
    with open(path, "rb") as f:
        store, peer, policy = pickle.load(f)  # noqa: S301 (our own file)
    me = Replica(f"bench-device-{role}", store)
    me.set_policy(peer, policy)
    before = _peak_kib()
    session = me.connect(peer, T0 + 2)
    while True:
        out = session.messages_to_send(T0 + 2)
        for data in out:
            conn.send_bytes(data)
        conn.send_bytes(b"")  # end of this flight
        got = []
        while (data := conn.recv_bytes()) != b"":
            got.append(data)
        if not out and not got:
            break
        for data in got:
            session.receive(data, T0 + 2)
    results.put((role, before, _peak_kib()))


def peak_rss(n: int, d: int) -> dict[str, tuple[int, int]]:
    """Per side, peak RSS in KiB (loaded, after reconciling) in its own process."""
    a, b = _pair(n, filtered=True)
    for i in range(d):
        a.patch("c", f"doc{(i * (n // d)) // 2 * 2:06}", {"body": "changed"}, T0 + 1)
    ctx = mp.get_context("spawn")
    left, right = ctx.Pipe()
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for role, replica, peer, end in (("a", a, "bench-device-b", left),
                                         ("b", b, "bench-device-a", right)):
            path = str(Path(tmp) / role)
            with open(path, "wb") as f:
                pickle.dump((replica.storage, peer, FILTER), f)
            procs.append(ctx.Process(target=_rss_side, args=(role, path, end, results)))
        del a, b
        for p in procs:
            p.start()
        out = {}
        for _ in procs:
            role, before, after = results.get(timeout=600)
            out[role] = (before, after)
        for p in procs:
            p.join()
    return out


# ---------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", choices=["a", "b"], help="cProfile our side once")
    parser.add_argument("--only", default="a,b,c,d,e", help="which parts, e.g. c,d")
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

    parts = set(args.only.split(","))
    if parts & {"a", "b", "e"}:
        timings(args, parts, writes, write_docs, docs, edited)
    if "c" in parts:
        print("(c) reconnect after d changed documents (bytes both ways, round trips)")
        print(f"    {'N':>7} {'d':>5} {'replica':<9} {'wire B':>9} {'trips':>6} {'payload B':>10}"
              f" {'states B':>9} {'overhead':>9}  target (d=10): <= payload+16KB, <= 8 trips")
        for n in (10_000 // scale, 100_000 // scale):
            for d in (1, 10, 1000 // min(scale, 10)):
                for filtered in (False, True):
                    wire, trips, payload, states = reconnect_cost(n, d, filtered)
                    verdict = ""
                    if d == 10:
                        ok = wire <= payload + 16_384 and trips <= 8
                        verdict = "ok" if ok else "MISS"
                    print(f"    {n:>7} {d:>5} {'filtered' if filtered else 'complete':<9}"
                          f" {wire:>9} {trips:>6} {payload:>10} {states:>9}"
                          f" {wire - payload:>9}  {verdict}")
    if "d" in parts:
        n = 100_000 // scale
        rss = peak_rss(n, 10)
        for role, (before, after) in sorted(rss.items()):
            print(f"(d) side {role}: peak RSS {after / 1024:.1f} MiB after reconciling "
                  f"(N={n}, d=10, filtered); {before / 1024:.1f} MiB loaded before")


def timings(args: argparse.Namespace, parts: set[str], writes: int, write_docs: int,
            docs: int, edited: int) -> None:
    kinds = ["memory", "libsql"] if "e" in parts else ["memory"]
    results: dict[str, list[float]] = {k: [] for k in ("a_ours", "a_pyc", "b_ours", "b_pyc",
                                                         "a_libsql", "b_libsql")}
    wire: dict[str, int] = {}
    for _ in range(args.runs):  # interleaved: ours and pycrdt alternate within each run
        results["a_ours"].append(ours_local(writes, write_docs))
        results["a_pyc"].append(pycrdt_local(writes, write_docs))
        t, wire["ours"] = ours_reconcile(docs, edited)
        results["b_ours"].append(t)
        t, wire["pyc"] = pycrdt_reconcile(docs, edited)
        results["b_pyc"].append(t)
        if "libsql" in kinds:
            results["a_libsql"].append(ours_local(writes, write_docs, "libsql"))
            results["b_libsql"].append(ours_reconcile(docs, edited, "libsql")[0])
    med = {k: statistics.median(v) for k, v in results.items() if v}
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
    if "a_libsql" in med:
        for part in ("a", "b"):
            lib, mem = med[f"{part}_libsql"], med[f"{part}_ours"]
            print(f"(e) ({part}) on libSQL {lib * 1000:.1f} ms vs in-memory {mem * 1000:.1f} ms"
                  f" = {lib / mem:.2f}x; vs pycrdt {lib / med[f'{part}_pyc']:.2f}x")


if __name__ == "__main__":
    main()
