"""Two devices that cannot reach each other sync through a real relay process, which
sees only ciphertext; when the direct route opens they move to it without loss or
duplicate events, and fall back to the relay when it closes again. Default settings
throughout (the time a fall-back takes is `test_netns_failover.py`)."""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.lab import make_node_dir, node_argv, trust_each_other, wait_for
from tests.netns.nodes import Devices

pytestmark = pytest.mark.netns

SECRET = "the relay must never read this sentence"


def test_relay_fallback_then_move_to_direct_and_back(lab, tmp_path):
    relay, phone, desk = lab.host("relay"), lab.host("phone"), lab.host("desk")
    hosts = {"phone": phone, "desk": desk}
    nodes = {n: make_node_dir(tmp_path, n) for n in hosts}
    trust_each_other(nodes["phone"], nodes["desk"], [f"{phone.ip}:7771"], [f"{desk.ip}:7771"])
    capture = tmp_path / "relay.pcap"
    relay.spawn(sys.executable, "-m", "tests.programs.capture", str(capture),
                log=tmp_path / "capture.log")
    (tmp_path / "relay.toml").write_text("drain_timeout = 1\n")
    relay_argv = (sys.executable, "-m", "p2pgate", "relay", "--listen", f"{relay.ip}:8443",
                  "--config", str(tmp_path / "relay.toml"))
    relay_process = relay.spawn(*relay_argv, log=tmp_path / "relay.log")
    url = f"ws://{relay.ip}:8443"
    lab.cut_unicast(phone, desk)  # they reach the relay, never each other
    for n, host in hosts.items():
        host.spawn(*node_argv(nodes[n], f"{host.ip}:7771"), "--relay", url,
                   log=tmp_path / f"{n}.log")
    devices = Devices(hosts, nodes)
    api, path = devices.api, devices.path

    started = time.monotonic()
    wait_for(lambda: path("phone") == "relay" and path("desk") == "relay", timeout=30,
             what="a relayed session")
    relayed_after = time.monotonic() - started

    api("phone", "put", "n1", json.dumps({"text": SECRET}))
    api("desk", "put", "n2", json.dumps({"text": "from the desktop"}))
    for n in hosts:
        wait_for(lambda n=n: api(n, "ids") == ["n1", "n2"], what=f"sync via relay on {n}")
    assert SECRET.encode() not in capture.read_bytes()
    assert len(capture.read_bytes()) > 10_000  # the capture did see the relayed traffic

    lab.restore_unicast(phone, desk)
    wait_for(lambda: path("phone") == "direct" and path("desk") == "direct", timeout=60,
             what="the move to the direct path")
    api("phone", "put", "n3", json.dumps({"text": "direct now"}))
    wait_for(lambda: api("desk", "ids") == ["n1", "n2", "n3"], what="sync after the move")

    lab.cut_unicast(phone, desk)  # idle: the first write finds the cut
    api("phone", "put", "n4", json.dumps({"text": "relayed again"}))
    wait_for(lambda: api("desk", "ids") == ["n1", "n2", "n3", "n4"], what="sync after falling back")
    assert path("phone") == "relay"

    # the relay restarts: the sessions come back on their own
    relay_process.terminate()
    assert relay_process.wait(40) == 0
    relay.spawn(*relay_argv, log=tmp_path / "relay2.log")
    api("desk", "put", "n5", json.dumps({"text": "after the relay restarted"}))
    wait_for(lambda: api("phone", "ids") == ["n1", "n2", "n3", "n4", "n5"], timeout=60,
             what="sync through the restarted relay")

    # nothing lost, nothing delivered twice: one event per document on each side
    for n in hosts:
        assert sorted(api(n, "events")) == ["n1", "n2", "n3", "n4", "n5"]
    print(f"relayed session after {relayed_after:.2f} s")


def test_a_device_without_relays_reaches_a_peer_through_the_peer_s_relay(lab, tmp_path):
    relay, phone, desk = lab.host("relay"), lab.host("phone"), lab.host("desk")
    hosts = {"phone": phone, "desk": desk}
    nodes = {n: make_node_dir(tmp_path, n) for n in hosts}
    trust_each_other(nodes["phone"], nodes["desk"], [f"{phone.ip}:7771"], [f"{desk.ip}:7771"])
    relay.spawn(sys.executable, "-m", "p2pgate", "relay", "--listen", f"{relay.ip}:8443",
                log=tmp_path / "relay.log")
    for n, host in hosts.items():
        relays = ["--relay", f"ws://{relay.ip}:8443"] if n == "desk" else []
        host.spawn(*node_argv(nodes[n], f"{host.ip}:7771"), *relays, log=tmp_path / f"{n}.log")
    devices = Devices(hosts, nodes)
    api, path = devices.api, devices.path

    wait_for(lambda: path("phone") == "direct", what="a direct session first")
    lab.cut_unicast(phone, desk)  # the phone learnt the desktop's relay from its Hello
    api("phone", "put", "n1", json.dumps({"text": "via a relay the phone never configured"}))
    wait_for(lambda: api("desk", "ids") == ["n1"], what="sync")
    assert path("phone") == "relay" and path("desk") == "relay"
