"""NAT traversal, one run per pair of NAT types: two paired nodes behind the NAT lab's
routers reach each other through the relay first, then move to a WebRTC data channel
(ICE with the relay's STUN port, signalled sealed through the relay) wherever the two
NATs allow it, and stay on the relay where they cannot. A note written after that
arrives once. Default settings; real node and relay processes."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time

import pytest

from tests.lab import make_node_dir, netns_available, trust_each_other, wait_for
from tests.natlab import NAT_TYPES, RELAY_IP, NatLab
from tests.netns.failover import Lines

pytestmark = pytest.mark.netns

RELAY = f"ws://{RELAY_IP}:8443"
UNPUNCHABLE = {frozenset({"symmetric"}), frozenset({"symmetric", "port-restricted"})}


def expected_path(nat_a: str, nat_b: str) -> str:
    """LAB.md: any NAT × public or full cone, and port-restricted × port-restricted punch
    through; symmetric × symmetric and symmetric × port-restricted cannot."""
    return "relay" if frozenset({nat_a, nat_b}) in UNPUNCHABLE else "webrtc"


@pytest.fixture
def natlab(allow_blocking):
    if not netns_available():
        pytest.fail("network namespaces are required in CI (root and iproute2)")
    labs = []
    yield lambda a, b: labs.append(NatLab(a, b)) or labs[-1]
    for lab in labs:
        lab.close()


def notes(host, node, *args):
    out = host.run(sys.executable, "-m", "tests.programs.notes",
                   str(node.runtime()["api_url"]), node.admin_token(), *args, timeout=60,
                   check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else None


def path(host, node):
    peers = notes(host, node, "peers")
    return peers[0]["path"] if peers else None


def start(lab, tmp_path):
    """The relay and two paired nodes behind the lab's routers: (host, node dir) each."""
    lab.start_relay(tmp_path / "relay", "--listen", "0.0.0.0:8443")
    sides = {"a": lab.a, "b": lab.b}
    nodes = {n: make_node_dir(tmp_path, n) for n in sides}
    trust_each_other(nodes["a"], nodes["b"])  # paired; neither knows where the other is
    for n, side in sides.items():
        side.host.spawn(sys.executable, "-m", "p2pgate", "--data-dir",
                        str(nodes[n].data_dir.root), "node", "--api", "127.0.0.1:0",
                        "--listen", f"{side.host.ip}:7771", "--no-mdns", "--no-dht",
                        "--relay", RELAY, log=tmp_path / f"{n}.log")
    for n in sides:
        wait_for(lambda n=n: (nodes[n].data_dir.root / "node.json").exists(), what=f"{n}")
    return (sides["a"].host, nodes["a"]), (sides["b"].host, nodes["b"])


def program(host, node, *args):
    """`tests.programs.notes ARGS` running in the background on that node."""
    return Lines(subprocess.Popen(
        ["ip", "netns", "exec", host.ns, sys.executable, "-m", "tests.programs.notes",
         str(node.runtime()["api_url"]), node.admin_token(), *args],
        stdout=subprocess.PIPE, text=True))


@pytest.mark.parametrize(("nat_a", "nat_b"),
                         list(itertools.combinations_with_replacement(NAT_TYPES, 2)))
def test_the_path_ends_on_webrtc_where_the_nats_allow_it(natlab, nat_a, nat_b, tmp_path):
    a, b = start(natlab(nat_a, nat_b), tmp_path)
    want = expected_path(nat_a, nat_b)
    wait_for(lambda: path(*a) in ("relay", "webrtc"), timeout=30, what="a session")
    if want == "webrtc":
        wait_for(lambda: path(*a) == path(*b) == "webrtc", timeout=40, interval=0.5,
                 what=f"the move to webrtc ({nat_a} x {nat_b})")
    else:
        time.sleep(15)  # longer than an attempt's 10 s deadline
        assert path(*a) == path(*b) == "relay"
    notes(*a, "put", "after", json.dumps({"text": f"{nat_a} x {nat_b}"}))
    wait_for(lambda: notes(*b, "get", "after").get("data"), timeout=30, what="the note")
    assert notes(*b, "events").count("after") == 1
    assert path(*a) == want


def test_the_move_to_webrtc_loses_and_repeats_nothing_under_a_writer(natlab, tmp_path):
    lab = natlab("port-restricted", "port-restricted")
    router = lab.a.router  # UDP blocked at first: the first attempt fails, the writer starts
    router.run("nft", "insert", "rule", "inet", "filter", "forward", "meta", "l4proto", "udp",
               "drop", "comment", '"until the writer runs"')
    a, b = start(lab, tmp_path)
    arrivals = program(*b, "arrivals")
    writer = None
    try:
        arrivals.wait_ready()
        writer = program(*a, "ticker", "w", "0.1")  # a note every 100 ms through the move
        wait_for(lambda: path(*a) == "relay" and len(writer.lines) > 10, timeout=30,
                 what="notes written through the relay")
        rules = router.run("nft", "-a", "list", "chain", "inet", "filter", "forward").stdout
        handle = next(line.rsplit(" ", 1)[1] for line in rules.splitlines()
                      if "until the writer runs" in line)
        router.run("nft", "delete", "rule", "inet", "filter", "forward", "handle", handle)
        wait_for(lambda: path(*a) == path(*b) == "webrtc", timeout=60, interval=0.2,
                 what="the move to webrtc (the next attempt, after the 30 s backoff)")
        time.sleep(1)
    finally:
        if writer is not None:
            writer.stop()
    [peer] = notes(*a, "peers")
    assert (peer["last_move"]["from"], peer["last_move"]["to"]) == ("relay", "webrtc")
    stamps = [float(words[1]) for words, _ in writer.lines if len(words) == 2]
    assert min(stamps) < peer["last_move"]["at"] < max(stamps)  # it moved mid-writing
    written = [words[0] for words, _ in writer.lines if words]
    wait_for(lambda: set(written) <= {w[0] for w, _ in arrivals.lines if len(w) == 2},
             timeout=30, what="every note on b")
    arrivals.stop()
    seen = [w[0] for w, _ in arrivals.lines if len(w) == 2]
    assert len(seen) == len(set(seen)) == len(written)  # none lost, none twice
