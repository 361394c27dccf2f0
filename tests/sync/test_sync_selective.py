"""Selective sync: random policies and filters (changing mid-run), 2-4 replicas.

Links are reliable and ordered while up (a state session relies on that, as it does
on TLS), and are cut and healed at random. At the end every replica holds, of each
document it may receive from a peer, at least the peer's version; and with two
replicas nothing crosses a direction its policy closes.
"""

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sync_helpers import (
    STORAGES,
    T0,
    drain,
    make_replica,
    no_protocol_errors,
    roundtrip_until_done,
    storages,
)

from sync import ChangeRefused, CollectionPolicy, PeerPolicy, Replica
from sync.codec import DocsMessage, encode
from sync.filters import compile_filter
from sync.model import filter_view

COLLECTIONS = ("c", "e")
MODE = st.sampled_from(["both", "both", "send", "receive", "none"])
FILTER = st.sampled_from([None, None, {"k": 0}, {"k": {"$in": [0, 1]}}, {"k": {"$gte": 1}}])
POLICY = st.fixed_dictionaries({c: st.tuples(MODE, FILTER) for c in COLLECTIONS})


def policy(spec) -> PeerPolicy:
    return PeerPolicy({c: CollectionPolicy(m, f) for c, (m, f) in spec.items()})


class Net:
    def __init__(self, n: int, storage) -> None:
        self.now = T0
        self.replicas: list[Replica] = [make_replica(f"dev{i}", storage=storage())
                                        for i in range(n)]
        self.specs = {(i, j): {c: ("both", None) for c in COLLECTIONS}
                      for i in range(n) for j in range(n) if i != j}
        self.sessions: dict[tuple[int, int], object] = {}
        self.up: set[tuple[int, int]] = set()
        for i in range(n):
            for j in range(i + 1, n):
                self.connect(i, j)

    def connect(self, i: int, j: int) -> None:
        ri, rj = self.replicas[i], self.replicas[j]
        self.sessions[(i, j)] = ri.connect(rj.device_id, self.now)
        self.sessions[(j, i)] = rj.connect(ri.device_id, self.now)
        self.up.add((i, j))

    def set_policy(self, i: int, j: int, spec) -> None:
        self.specs[(i, j)] = spec
        self.replicas[i].set_policy(self.replicas[j].device_id, policy(spec))

    def pump(self, i: int, j: int) -> int:
        if (i, j) not in self.up:
            return 0
        moved = 0
        for a, b in ((i, j), (j, i)):
            for data in self.sessions[(a, b)].messages_to_send(self.now):
                self.sessions[(b, a)].receive(data, self.now)
                moved += 1
        return moved

    def settle(self) -> None:
        n = len(self.replicas)
        for i in range(n):
            for j in range(i + 1, n):
                if (i, j) not in self.up:
                    self.connect(i, j)
        for _ in range(60):
            if not sum(self.pump(i, j) for i, j in sorted(self.up)):
                return
        raise AssertionError("still talking")


def may_flow(net: Net, i: int, j: int, coll: str, doc) -> bool:
    """Whether `doc` (i's copy, or j's) may flow from i to j under both policies."""
    (mi, fi), (mj, fj) = net.specs[(i, j)][coll], net.specs[(j, i)][coll]
    if mi not in ("both", "send") or mj not in ("both", "receive"):
        return False
    view = filter_view(doc)
    return all(compile_filter(f)(view) for f in (fi, fj) if f is not None)


STEP = st.one_of(
    st.tuples(st.just("op"), st.integers(0, 3), st.sampled_from(COLLECTIONS),
              st.sampled_from(["d0", "d1", "d2"]), st.integers(0, 3), st.integers(0, 2)),
    st.tuples(st.just("pump"), st.integers(0, 5)),
    st.tuples(st.just("cut"), st.integers(0, 5)),
    st.tuples(st.just("heal"), st.integers(0, 5)),
    st.tuples(st.just("policy"), st.integers(0, 3), st.integers(1, 3), POLICY),
)


@pytest.mark.parametrize("kind", STORAGES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 4), st.lists(POLICY, min_size=12, max_size=12),
       st.lists(STEP, min_size=5, max_size=60))
# found in CI: dev1 drops its filter for dev0 and moves to version vectors while dev0's
# state messages are still on the way (they closed the session as a protocol error)
@example(n=2, initial=[{"c": ("both", None), "e": ("both", None)},
                       {"c": ("both", {"k": 0}), "e": ("both", None)}]
         + [{"c": ("both", None), "e": ("both", None)}] * 10,
         steps=[("pump", 0), ("op", 0, "c", "d0", 0, 0), ("heal", 0), ("heal", 0),
                ("policy", 1, 1, {"c": ("both", None), "e": ("both", None)})])
def test_replicas_converge_on_what_they_may_hold(kind, n, initial, steps):
    with storages(kind) as storage:
        net = Net(n, storage)
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        for (i, j), spec in zip(pairs, initial, strict=False):
            net.set_policy(i, j, spec)
        fixed_e = {p: net.specs[p]["e"] for p in pairs}  # "e" policies never change
        links = sorted((i, j) for i in range(n) for j in range(i + 1, n))
        for step in steps:
            net.now += 1.0
            kind_ = step[0]
            if kind_ == "op":
                _, who, coll, doc, k, what = step
                r = net.replicas[who % n]
                if what == 0:
                    r.put(coll, doc, {"k": k, "v": who}, net.now)
                elif what == 1:
                    r.patch(coll, doc, {"k": k}, net.now)
                elif r.get(coll, doc) is not None:
                    r.delete(coll, doc, net.now)
            elif kind_ == "policy":
                i, j = step[1] % n, (step[1] + step[2]) % n
                if i != j:
                    net.set_policy(i, j, step[3] | {"e": net.specs[(i, j)]["e"]})
            else:
                link = links[step[1] % len(links)]
                if kind_ == "pump":
                    net.pump(*link)
                elif kind_ == "cut":
                    net.up.discard(link)
                elif link not in net.up:
                    net.connect(*link)
        net.settle()

        for r in net.replicas:
            assert no_protocol_errors(drain(r))
        for i, j in pairs:
            ri, rj = net.replicas[i], net.replicas[j]
            for coll in COLLECTIONS:
                for doc_id, mine in ri.storage.list_docs(coll, None, 100):
                    theirs = rj.storage.get_doc(coll, doc_id)
                    if not may_flow(net, i, j, coll, mine):
                        continue
                    if theirs is not None and not may_flow(net, i, j, coll, theirs):
                        continue  # it stopped matching on the receiver: no more updates
                    assert theirs is not None, (i, j, coll, doc_id)
                    for origin, hlc in mine.version.items():
                        assert theirs.version.get(origin, 0) >= hlc, (i, j, coll, doc_id)
        if n == 2:  # nothing crossed a closed direction of the never-changed "e"
            for i, j in pairs:
                (mi, _), (mj, _) = fixed_e[(i, j)], fixed_e[(j, i)]
                if mi in ("both", "send") and mj in ("both", "receive"):
                    continue
                origin = net.replicas[i].device_id
                for _, state in net.replicas[j].storage.list_docs("e", None, 100):
                    assert origin not in state.version


def test_a_document_the_policy_refuses_is_reported_and_not_applied():
    a, b = make_replica("A"), make_replica("B")
    a.set_policy("B", PeerPolicy({"c": CollectionPolicy("both", {"k": 0})}))
    sa, sb = a.connect("B", T0), b.connect("A", T0)
    for data in sa.messages_to_send(T0):
        sb.receive(data, T0)
    for data in sb.messages_to_send(T0):
        sa.receive(data, T0)
    b.put("c", "d", {"k": 7}, T0)  # B ignores A's filter and sends it anyway
    drain(a)
    sa.receive(encode(DocsMessage([("c", "d", b.storage.get_doc("c", "d"))])), T0)
    events = drain(a)
    assert a.get("c", "d") is None
    assert [e for e in events if isinstance(e, ChangeRefused)] == [
        ChangeRefused("B", "c", "d", "the policy for this device refuses it")]
    assert a.version_vector().get("A") is None  # nothing was logged either


def test_reconnecting_costs_grow_with_the_difference_not_the_collection():
    a, b = make_replica("A"), make_replica("B")
    a.set_policy("B", PeerPolicy({"c": CollectionPolicy("both", {"k": 0})}))
    for i in range(3000):
        a.put("c", f"d{i:05}", {"k": i % 2, "x": i}, T0)
    roundtrip_until_done(a.connect("B", T0), b.connect("A", T0), T0)
    assert len(b.list_docs("c", limit=5000)) == 1500
    for i in range(0, 10):
        a.patch("c", f"d{i * 2:05}", {"x": "changed"}, T0 + 1)
    sa, sb = a.connect("B", T0 + 2), b.connect("A", T0 + 2)
    rounds = roundtrip_until_done(sa, sb, T0 + 2)
    assert b.get("c", "d00000")["x"] == "changed"
    assert rounds <= 8 + 1  # the last one only finds both sides quiet
    payload = sum(len(m) for m in [encode(DocsMessage(
        [("c", f"d{i * 2:05}", a.storage.get_doc("c", f"d{i * 2:05}")) for i in range(10)]))])
    assert sa.bytes_sent + sb.bytes_sent <= payload + 16_384
