"""A laptop away from home, on another subnet: it finds the desktop through the DHT
(a relay runs the bootstrap node), syncs through the relay while unicast is cut,
then moves to the direct address it learnt from the desktop's private record; and
it pairs by code through the relay's mailbox."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from p2pgate.pairing.codes import WORDS
from tests.lab import make_node_dir, trust_each_other, wait_for
from tests.netns.nodes import Devices

pytestmark = pytest.mark.netns


def test_the_laptop_finds_home_through_the_dht_and_the_relay(lab, tmp_path):
    relay, desk = lab.host("relay"), lab.host("desk")
    laptop = lab.host("laptop", other_subnet=True)
    assert laptop.ip.split(".")[2] != desk.ip.split(".")[2]
    hosts = {"desk": desk, "laptop": laptop}
    nodes = {n: make_node_dir(tmp_path, n) for n in hosts}
    trust_each_other(nodes["laptop"], nodes["desk"])  # paired; no idea where the other is
    relay.spawn(sys.executable, "-m", "p2pgate", "relay", "--listen", f"{relay.ip}:8443",
                "--dht-port", "4000", log=tmp_path / "relay.log")
    lab.cut_unicast(desk, laptop)
    for n, host in hosts.items():
        (nodes[n].data_dir.root / "config.toml").write_text(
            "direct_probe_interval = 2\ndht_lookup_interval = 2\n")
        host.spawn(sys.executable, "-m", "p2pgate", "--data-dir", str(nodes[n].data_dir.root),
                   "node", "--api", "127.0.0.1:0", "--listen", f"{host.ip}:7771", "--no-mdns",
                   "--relay", f"ws://{relay.ip}:8443", "--bootstrap", f"{relay.ip}:4000",
                   log=tmp_path / f"{n}.log")
    devices = Devices(hosts, nodes)
    api, path = devices.api, devices.path

    wait_for(lambda: path("laptop") == "relay", timeout=30, what="a relayed session")
    desk_short = nodes["desk"].device_id[:7]
    wait_for(lambda: f"DHT: found {desk_short} by record lookup at {desk.ip}:7771"
             in (tmp_path / "laptop.log").read_text(), timeout=60,
             what="the laptop finding the desktop's record")
    api("laptop", "put", "n1", json.dumps({"text": "from the café"}))
    wait_for(lambda: api("desk", "ids") == ["n1"], what="sync through the relay")

    lab.restore_unicast(desk, laptop)  # the route home opens: only the DHT told the address
    wait_for(lambda: path("laptop") == "direct", timeout=60, what="the move to direct")
    api("desk", "put", "n2", json.dumps({"text": "from home"}))
    wait_for(lambda: api("laptop", "ids") == ["n1", "n2"], what="sync on the direct path")


def test_pairing_by_code_through_the_relay_mailbox(lab, tmp_path):
    relay, desk = lab.host("relay"), lab.host("desk")
    laptop = lab.host("laptop", other_subnet=True)
    hosts = {"desk": desk, "laptop": laptop}
    nodes = {n: make_node_dir(tmp_path, n) for n in hosts}
    relay.spawn(sys.executable, "-m", "p2pgate", "relay", "--listen", f"{relay.ip}:8443",
                log=tmp_path / "relay.log")
    lab.cut_unicast(desk, laptop)  # different networks: no LAN path, no mDNS
    for n, host in hosts.items():
        host.spawn(sys.executable, "-m", "p2pgate", "--data-dir", str(nodes[n].data_dir.root),
                   "node", "--api", "127.0.0.1:0", "--listen", f"{host.ip}:7771", "--no-mdns",
                   "--no-dht", "--relay", f"ws://{relay.ip}:8443", log=tmp_path / f"{n}.log")
    for node in nodes.values():
        wait_for(lambda n=node: (n.data_dir.root / "node.json").exists(), what="start")

    def cli(n, *args, timeout=60):
        return hosts[n].run(sys.executable, "-m", "p2pgate", "--data-dir",
                            str(nodes[n].data_dir.root), *args, timeout=timeout)

    pair = subprocess.Popen(
        ["ip", "netns", "exec", desk.ns, sys.executable, "-m", "p2pgate", "--data-dir",
         str(nodes["desk"].data_dir.root), "pair"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert pair.stdout is not None
    first = pair.stdout.readline()
    code = first.split(":", 1)[1].strip()
    last = code.rsplit("-", 1)[1]
    other = next(w for w in WORDS if w != last)
    wrong = cli("laptop", "join", code.rsplit("-", 1)[0] + "-" + other)
    assert wrong.returncode != 0
    assert "wrong code" in wrong.stderr
    joined = cli("laptop", "join", code, "--json")
    assert joined.returncode == 0, joined.stderr
    out, err = pair.communicate(timeout=30)
    assert pair.returncode == 0, err
    assert f"Verification: {json.loads(joined.stdout)['verification']}" in out
    again = cli("laptop", "join", code)
    assert again.returncode != 0  # single use

    def peers(n):
        result = cli(n, "status", "--json")
        return json.loads(result.stdout)["peers"] if result.returncode == 0 else None

    linked = wait_for(lambda: peers("laptop"), timeout=30, what="the session after pairing")
    assert linked[0]["path"] == "relay"
