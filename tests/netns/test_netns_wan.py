"""A laptop away from home: it finds the desktop through the DHT (a relay runs the
bootstrap node), syncs through the relay while unicast is cut, then moves to the
direct address it learnt from the desktop's private record."""

from __future__ import annotations

import json
import sys

import pytest

from tests.lab import make_node_dir, trust_each_other, wait_for
from tests.netns.test_netns_relay import API

pytestmark = pytest.mark.netns


def test_the_laptop_finds_home_through_the_dht_and_the_relay(lab, tmp_path):
    relay, desk, laptop = lab.host("relay"), lab.host("desk"), lab.host("laptop")
    hosts = {"desk": desk, "laptop": laptop}
    nodes = {n: make_node_dir(tmp_path, n) for n in hosts}
    trust_each_other(nodes["laptop"], nodes["desk"])  # paired; no idea where the other is
    relay.spawn(sys.executable, "-m", "p2pgate", "relay", "--listen", f"{relay.ip}:8443",
                "--dht-port", "4000", log=tmp_path / "relay.log")
    lab.cut_unicast(desk, laptop)
    for n, host in hosts.items():
        (nodes[n].data_dir.root / "config.toml").write_text(
            "direct_probe_interval = 2\nkeepalive = 0.5\nkeepalive_timeout = 1.5\n"
            "dht_lookup_interval = 2\n")
        host.spawn(sys.executable, "-m", "p2pgate", "--data-dir", str(nodes[n].data_dir.root),
                   "node", "--api", "127.0.0.1:0", "--listen", f"{host.ip}:7771", "--no-mdns",
                   "--relay", f"ws://{relay.ip}:8443", "--bootstrap", f"{relay.ip}:4000",
                   log=tmp_path / f"{n}.log")
    for node in nodes.values():
        wait_for(lambda n=node: (n.data_dir.root / "node.json").exists(), what="start")

    def api(n, *args):
        out = hosts[n].run(sys.executable, "-c", API, nodes[n].runtime()["api_url"],
                           nodes[n].admin_token(), *args)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else None

    def path(n):
        peers = api(n, "peers")
        return peers[0]["path"] if peers else None

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
