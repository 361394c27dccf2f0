"""kill -9 of the desktop while it receives 10k documents from the phone (two namespaces):
after a restart both converge and every acknowledged write is there."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from tests.lab import make_node_dir, node_argv, trust_each_other, wait_for

pytestmark = pytest.mark.netns

DOCS = 10_000


def _two_devices(lab, tmp_path):
    """Paired phone and desktop namespaces; `start(n)` runs a node, `client(n, ...)` the
    notes program against it (bulk loads need the raised rate limit)."""
    hosts = {n: lab.host(n) for n in ("phone", "desk")}
    nodes = {n: make_node_dir(tmp_path, n) for n in hosts}
    trust_each_other(nodes["phone"], nodes["desk"], [f"{hosts['phone'].ip}:7771"],
                     [f"{hosts['desk'].ip}:7771"])
    for node in nodes.values():
        (node.data_dir.root / "config.toml").write_text(
            "rate_limit = 100000\nrate_burst = 100000\n")

    def start(n):
        (nodes[n].data_dir.root / "node.json").unlink(missing_ok=True)
        proc = hosts[n].spawn(*node_argv(nodes[n], f"{hosts[n].ip}:7771"),
                              log=tmp_path / f"{n}.log")
        wait_for(lambda: (nodes[n].data_dir.root / "node.json").exists(), what=f"{n} start")
        return proc

    def client(n, *args):
        out = hosts[n].run(sys.executable, "-m", "tests.programs.notes",
                           nodes[n].runtime()["api_url"], nodes[n].admin_token(), *args,
                           timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    return hosts, nodes, start, client


def test_kill_9_while_syncing_10k_documents_then_both_converge(lab, tmp_path):
    hosts, nodes, start, client = _two_devices(lab, tmp_path)
    phone = start("phone")
    client("phone", "write", "p", str(DOCS))
    phone.send_signal(signal.SIGTERM)
    phone.wait(30)
    desk = start("desk")  # the phone is away: these writes are the desktop's alone
    client("desk", "write", "d", "200")
    waiter = hosts["desk"].spawn(sys.executable, "-m", "tests.programs.notes",
                                 nodes["desk"].runtime()["api_url"], nodes["desk"].admin_token(),
                                 "wait", "1200", log=tmp_path / "waiter.log")
    phone = start("phone")  # the initial sync starts; pull the plug in the middle of it
    assert waiter.wait(60) == 0
    desk.kill()
    assert desk.wait(10) == -signal.SIGKILL
    phone.send_signal(signal.SIGTERM)  # so that what the desktop kept can be counted
    stopping = time.monotonic()
    assert phone.wait(30) == 0
    assert time.monotonic() - stopping < 5  # a peer killed mid-sync does not hold us up

    start("desk")
    survived = int(client("desk", "count"))
    assert survived >= 200  # every acknowledged desktop write is there
    assert survived < DOCS + 200, "the kill should land before the sync finished"
    start("phone")
    wait_for(lambda: int(client("desk", "count")) == DOCS + 200, timeout=120, interval=0.5,
             what="desktop converged")
    wait_for(lambda: int(client("phone", "count")) == DOCS + 200, timeout=60, interval=0.5,
             what="phone converged")


def test_sigterm_exits_within_5_s_with_a_blackholed_peer_mid_sync(lab, tmp_path):
    hosts, nodes, start, client = _two_devices(lab, tmp_path)
    phone = start("phone")
    client("phone", "write", "p", "4000")  # acknowledged before anyone else knows them
    desk = start("desk")
    client("desk", "wait", "300")  # the initial sync is under way
    lab.cut_unicast(hosts["phone"], hosts["desk"])  # packets vanish; no FIN, no RST
    client("phone", "write", "q", "50")  # and more writes queue up for a dead path
    for proc in (phone, desk):
        proc.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    assert phone.wait(30) == 0 and desk.wait(30) == 0
    assert time.monotonic() - stopping < 5
    start("phone")
    assert int(client("phone", "count")) == 4050  # every acknowledged write was committed
