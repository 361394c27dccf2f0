"""The relay's STUN port in the NAT lab, as the nodes probe it (default settings, real node
and relay processes):

- a STUN port that does not answer (UDP to 3478 dropped in the internet namespace)
  delays neither the relayed session nor WebRTC: the nodes' probe fails, ICE gathers
  host candidates only (no 5 s stall per side), so a public host and a NATed one still
  move to webrtc at once; where WebRTC cannot work, the failed attempt leaves the
  relayed session as it was, and `/api/v1/relays` says the probe failed;
- a network change (an address added on a host, after its first attempt failed) starts
  a new WebRTC attempt at once, well before the 30 s backoff would.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.lab import make_node_dir, trust_each_other, wait_for
from tests.natlab import ATTEMPT_FAILED, RELAY_IP, STUN_PORT

pytestmark = pytest.mark.netns

RELAY = f"ws://{RELAY_IP}:8443"


def notes(host, node, *args):
    out = host.run(sys.executable, "-m", "tests.programs.notes",
                   str(node.runtime()["api_url"]), node.admin_token(), *args, timeout=60,
                   check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else None


def peer(host, node):
    peers = notes(host, node, "peers")
    return peers[0] if peers else None


def path(host, node):
    found = peer(host, node)
    return found["path"] if found else None


def start(lab, tmp_path):
    """The relay and two paired nodes behind the lab's routers: (host, node dir) each, and
    the wall-clock time the nodes were started."""
    lab.start_relay(tmp_path / "relay", "--listen", "0.0.0.0:8443")
    sides = {"a": lab.a, "b": lab.b}
    nodes = {n: make_node_dir(tmp_path, n) for n in sides}
    trust_each_other(nodes["a"], nodes["b"])  # paired; neither knows where the other is
    started = time.time()
    for n, side in sides.items():
        side.host.spawn(sys.executable, "-m", "p2pgate", "--data-dir",
                        str(nodes[n].data_dir.root), "node", "--api", "127.0.0.1:0",
                        "--listen", f"{side.host.ip}:7771", "--no-mdns", "--no-dht",
                        "--relay", RELAY, log=tmp_path / f"{n}.log")
    for n in sides:
        wait_for(lambda n=n: (nodes[n].data_dir.root / "node.json").exists(), what=f"{n}")
    return (sides["a"].host, nodes["a"]), (sides["b"].host, nodes["b"]), started


def silence_stun(lab):
    """Drop every datagram to the relay's STUN port (the relay itself keeps running)."""
    lab.internet.run("nft", "-f", "-", stdin=f"""table inet stunoff {{
  chain input {{ type filter hook input priority filter; policy accept;
    udp dport {STUN_PORT} drop
  }}
}}
""")


def stun_of(host, node):
    [relay] = notes(host, node, "relays")
    return relay


def logged_at(log, text, started):
    """Seconds from `started` (wall clock) to the first line of `log` with `text` (log
    times have whole seconds: within 1 s)."""
    line = wait_for(lambda: next((line for line in log.read_text().splitlines()
                                  if text in line), None), timeout=30, what=text)
    hours, minutes, seconds = (int(x) for x in line.split()[0].split(":"))
    day = time.localtime(started)
    return (hours - day.tm_hour) * 3600 + (minutes - day.tm_min) * 60 + seconds - (
        day.tm_sec + started % 1)


def relayed_within(tmp_path, started, limit):
    """Seconds from the nodes' start until each adopted its relayed session."""
    took = [logged_at(tmp_path / f"{n}.log", ") via relay", started) for n in "ab"]
    assert max(took) <= limit, f"relayed after {took} s"
    return max(took)


def attempt_failed(tmp_path):
    """Wait until one node logs that a WebRTC attempt it answered failed (its deadline)."""
    wait_for(lambda: any(ATTEMPT_FAILED.search((tmp_path / f"{n}.log").read_text())
                         for n in "ab"), timeout=40, interval=0.1, what="a failed attempt")


def note_arrives_once(a, b, name):
    notes(*a, "put", name, json.dumps({"text": name}))
    wait_for(lambda: notes(*b, "get", name).get("data"), timeout=30, what="the note")
    assert notes(*b, "events").count(name) == 1


def test_a_silent_stun_port_costs_no_gathering_stall(natlab, tmp_path):
    lab = natlab("public", "port-restricted")  # punchable with host candidates alone
    silence_stun(lab)
    a, b, started = start(lab, tmp_path)
    relayed = relayed_within(tmp_path, started, 10)
    wait_for(lambda: path(*a) == path(*b) == "webrtc", timeout=30, interval=0.2,
             what="the move to webrtc without STUN")
    moved = logged_at(tmp_path / "a.log", "to a webrtc path", started)
    # without the probe, ICE spends 5 s per side gathering from the silent server: the
    # first attempt misses its 10 s deadline, and the next one waits 30 s
    assert moved - relayed < 8, f"on webrtc {moved - relayed:.1f} s after the relay"
    for side in (a, b):
        status = stun_of(*side)
        assert status["stun_address"] == f"{RELAY_IP}:{STUN_PORT}"
        assert (status["stun"], status["reflexive_address"]) == ("failed", None)
    note_arrives_once(a, b, "after")
    print(f"silent STUN: relayed after {relayed:.1f} s, on webrtc after {moved:.1f} s")


def test_a_failed_webrtc_attempt_leaves_the_relayed_session_untouched(natlab, tmp_path):
    lab = natlab("port-restricted", "port-restricted")  # host candidates alone cannot punch
    silence_stun(lab)
    a, b, started = start(lab, tmp_path)
    relayed = relayed_within(tmp_path, started, 10)
    wait_for(lambda: path(*a) == path(*b) == "relay", timeout=10, what="the relayed session")
    before = peer(*a), peer(*b)
    attempt_failed(tmp_path)
    after = peer(*a), peer(*b)
    for was, now in zip(before, after, strict=True):
        assert now["path"] == "relay" and now["since"] == was["since"]  # the same session
        assert now["last_move"] is None
    assert stun_of(*a)["stun"] == stun_of(*b)["stun"] == "failed"
    note_arrives_once(a, b, "after")
    print(f"silent STUN, no punching: relayed after {relayed:.1f} s, untouched")


def test_a_network_change_retries_webrtc_at_once(natlab, tmp_path):
    lab = natlab("port-restricted", "port-restricted")
    router = lab.a.router  # UDP blocked: a's STUN probe and first attempt fail
    router.run("nft", "insert", "rule", "inet", "filter", "forward", "meta", "l4proto", "udp",
               "drop", "comment", '"until the network changes"')
    a, b, _ = start(lab, tmp_path)
    log = tmp_path / "a.log"
    wait_for(lambda: path(*a) == path(*b) == "relay", timeout=30, what="the relayed session")
    attempt_failed(tmp_path)  # the first attempt fails by its 10 s deadline
    assert stun_of(*a)["stun"] == "failed"
    assert path(*a) == "relay"
    rules = router.run("nft", "-a", "list", "chain", "inet", "filter", "forward").stdout
    handle = next(line.rsplit(" ", 1)[1] for line in rules.splitlines()
                  if "until the network changes" in line)
    router.run("nft", "delete", "rule", "inet", "filter", "forward", "handle", handle)
    changed = time.time()
    lab.a.host.run("ip", "addr", "add", "10.0.1.99/24", "dev", f"{lab.short}al0")
    wait_for(lambda: path(*a) == path(*b) == "webrtc", timeout=40, interval=0.2,
             what="the move to webrtc after the network change")
    took = peer(*a)["last_move"]["at"] - changed
    # the watcher polls every 5 s; the next attempt by backoff was due 30 s after the failure
    assert took < 8, f"moved {took:.1f} s after the change"
    assert "network changed: added 10.0.1.99" in log.read_text()
    status = stun_of(*a)
    assert status["stun"] == "ok" and status["reflexive_address"].startswith(
        f"{lab.a.wan_ip}:")
    note_arrives_once(a, b, "after")
    print(f"network change: on webrtc {took:.1f} s after it")
