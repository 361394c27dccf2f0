"""2-5 replicas, random operations, skewed clocks, a lossy network: they converge."""

import contextlib
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sync_helpers import STORAGES, T0, drain, make_replica, no_protocol_errors, snapshot, storages

from sync import DocumentNotFound, PeerSession, Replica

RETRANSMIT = 5.0
OFFSETS = st.sampled_from([0.0, 0.0, 1.5, -2.0, 120.0, -200.0, 420.0, -480.0])


@dataclass
class Link:
    a: int
    b: int
    sessions: dict[int, PeerSession] = field(default_factory=dict)
    queues: dict[int, list[bytes]] = field(default_factory=dict)  # by receiver
    up: bool = True


class Network:
    def __init__(self, offsets: list[float], storage=None) -> None:
        n = len(offsets)
        self.offsets = offsets
        self.now = T0
        self.replicas: list[Replica] = [
            make_replica(f"dev{i}", storage=storage() if storage else None, max_skew=300.0,
                         retransmit_after=RETRANSMIT) for i in range(n)
        ]
        self.links = [Link(i, j) for i in range(n) for j in range(i + 1, n)]
        for link in self.links:
            self.connect(link)
        self.events: list[object] = []

    def wall(self, i: int) -> float:
        return self.now + self.offsets[i]

    def connect(self, link: Link) -> None:
        ra, rb = self.replicas[link.a], self.replicas[link.b]
        link.sessions = {
            link.a: ra.connect(rb.device_id, self.wall(link.a)),
            link.b: rb.connect(ra.device_id, self.wall(link.b)),
        }
        link.queues = {link.a: [], link.b: []}
        link.up = True

    def flush(self, link: Link, sender: int) -> int:
        receiver = link.b if sender == link.a else link.a
        out = link.sessions[sender].messages_to_send(self.wall(sender))
        if link.up:
            link.queues[receiver].extend(out)
        return len(out)

    def deliver(self, link: Link, receiver: int, index: int, duplicate: bool) -> None:
        queue = link.queues[receiver]
        if not queue:
            return
        index %= len(queue)
        data = queue[index] if duplicate else queue.pop(index)
        link.sessions[receiver].receive(data, self.wall(receiver))

    def tick(self, dt: float) -> None:
        self.now += dt
        for i, replica in enumerate(self.replicas):
            replica.handle_timer(self.wall(i))
        for link in self.links:
            for i, session in link.sessions.items():
                session.handle_timer(self.wall(i))

    def operate(self, i: int, op: int, doc: str, x: int) -> None:
        r, now = self.replicas[i], self.wall(i)
        if op == 0:
            values = {"a": x, "n": x, "s": [x % 3], "t": f"v{x}"}
            chosen = {k: v for bit, (k, v) in enumerate(values.items()) if x >> bit & 1}
            r.put("c", doc, chosen, now)
        elif op == 1:
            r.patch("c", doc, {"a": x}, now)
        elif op == 2:
            r.patch("c", doc, {"b": [x], "a": None if x % 2 else x}, now)
        elif op == 3:
            with contextlib.suppress(DocumentNotFound):
                r.delete("c", doc, now)
        elif op == 4:
            r.increment("c", doc, "n", x - 5, now)
        elif op == 5:
            r.add("c", doc, "s", [x % 3], now)
        elif op == 6:
            r.remove("c", doc, "s", [x % 3], now)
        else:
            text = (r.get("c", doc) or {}).get("t", "")
            pos = x % (len(text) + 1)
            r.splice("c", doc, "t", pos, min(x % 2, len(text) - pos), "ab"[: 1 + x % 2], now)

    def heal_and_settle(self, max_rounds: int = 40) -> int:
        for link in self.links:
            if not link.up:
                self.connect(link)
        self.tick(1000.0)  # every clock passes every skewed stamp
        for rounds in range(1, max_rounds + 1):
            moved = 0
            for link in self.links:
                for sender in (link.a, link.b):
                    moved += self.flush(link, sender)
                for receiver in (link.a, link.b):
                    while link.queues[receiver]:
                        self.deliver(link, receiver, 0, False)
            if not moved:
                return rounds
            self.tick(RETRANSMIT + 1)
        raise AssertionError(f"network still busy after {max_rounds} rounds")


STEP = st.one_of(
    st.tuples(st.just("op"), st.integers(0, 4), st.integers(0, 7), st.sampled_from(["d0", "d1"]),
              st.integers(0, 15)),
    st.tuples(st.just("flush"), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("deliver"), st.integers(0, 9), st.booleans(), st.integers(0, 7),
              st.booleans()),
    st.tuples(st.just("drop"), st.integers(0, 9), st.booleans(), st.integers(0, 7)),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 3.0, 60.0, 400.0])),
    st.tuples(st.just("cut"), st.integers(0, 9)),
    st.tuples(st.just("heal"), st.integers(0, 9)),
)


@pytest.mark.parametrize("kind", STORAGES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OFFSETS, min_size=2, max_size=5), st.lists(STEP, min_size=5, max_size=80))
def test_replicas_converge(kind, offsets, steps):
    with storages(kind) as storage:
        check_convergence(Network(offsets, storage), offsets, steps)


def check_convergence(net, offsets, steps):
    n = len(offsets)
    for step in steps:
        kind = step[0]
        if kind == "op":
            net.operate(step[1] % n, step[2], step[3], step[4])
            continue
        if kind == "tick":
            net.tick(step[1])
            continue
        link = net.links[step[1] % len(net.links)]
        if kind == "cut":
            link.up = False
            link.queues = {link.a: [], link.b: []}
        elif kind == "heal" and not link.up:
            net.connect(link)
        elif kind == "flush":
            net.flush(link, link.a if step[2] else link.b)
        elif kind == "deliver":
            net.deliver(link, link.a if step[2] else link.b, step[3], step[4])
        elif kind == "drop":
            queue = link.queues[link.a if step[2] else link.b]
            if queue:
                queue.pop(step[3] % len(queue))
    net.heal_and_settle()
    first = snapshot(net.replicas[0])
    for replica in net.replicas:
        assert replica.quarantined() == {}
        assert no_protocol_errors(drain(replica))
        assert replica.version_vector() == net.replicas[0].version_vector()
        assert snapshot(replica) == first


def test_skewed_device_converges_after_quarantine():
    net = Network([0.0, 480.0, -480.0])
    for i in range(3):
        net.operate(i, 1, "d0", i)
        net.operate(i, 5, "d0", i)
    net.heal_and_settle()
    docs = [r.get("c", "d0") for r in net.replicas]
    assert docs[0] == docs[1] == docs[2]
    assert docs[0] is not None
    assert docs[0]["a"] == 1  # the device 480 s ahead wrote last by the clock
    assert docs[0]["s"] == [0, 1, 2]
