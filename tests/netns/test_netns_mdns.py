"""LAN discovery between real nodes in namespaces; a stranger learns nothing."""

from __future__ import annotations

import json
import sys

import pytest

from p2pgate.discovery.mdns import discovery_tag
from tests.lab import disc_key_of, make_node_dir, node_argv, trust_each_other, wait_for

pytestmark = pytest.mark.netns

BROWSE = ["-m", "tests.programs.mdns_browse"]


def test_paired_nodes_find_each_other_and_a_stranger_sees_only_noise(lab, tmp_path):
    phone_host, desk_host, evil = lab.host("phone"), lab.host("desk"), lab.host("evil")
    phone, desk = make_node_dir(tmp_path, "phone"), make_node_dir(tmp_path, "desk")
    trust_each_other(phone, desk)  # paired, but neither knows where the other is
    for host, node in ((phone_host, phone), (desk_host, desk)):
        host.spawn(sys.executable, "-m", "p2pgate", "--data-dir", str(node.data_dir.root),
                   "node", "--api", "127.0.0.1:0", "--listen", f"{host.ip}:7771", "--no-dht",
                   log=tmp_path / f"{node.name}.log")

    def peers(host, node):
        result = host.run(sys.executable, "-m", "p2pgate", "--data-dir",
                          str(node.data_dir.root), "status", "--json")
        return json.loads(result.stdout)["peers"] if result.returncode == 0 else None

    connected = wait_for(lambda: peers(desk_host, desk), timeout=30, what="mDNS session")
    assert connected[0]["name"] == "phone"
    assert "LAN: found" in (tmp_path / "desk.log").read_text()

    seen = json.loads(evil.run(sys.executable, *BROWSE, evil.ip, timeout=30).stdout)
    assert len(seen) == 2  # the services are visible ...
    text = json.dumps(seen)
    for node in (phone, desk):  # ... but say nothing about who runs them
        assert node.device_id not in text
        assert node.device_id.replace("-", "") not in text
        assert node.name not in text
    assert all(set(s["txt"]) == {"v", "n", "t"} for s in seen)


def test_revoking_a_device_rotates_the_discovery_key(lab, tmp_path):
    hosts = {n: lab.host(n) for n in ("phone", "desk", "laptop")}
    nodes = {n: make_node_dir(tmp_path, n) for n in hosts}
    trust_each_other(nodes["phone"], nodes["desk"])
    trust_each_other(nodes["laptop"], nodes["desk"])
    old_key = disc_key_of(nodes["desk"])
    for n, host in hosts.items():
        host.spawn(*node_argv(nodes[n], f"{host.ip}:7771", mdns=True), log=tmp_path / f"{n}.log")

    def cli(n, *args):
        return hosts[n].run(sys.executable, "-m", "p2pgate", "--data-dir",
                            str(nodes[n].data_dir.root), *args)

    def peer_names(n):
        out = cli(n, "status", "--json")
        return {p["name"] for p in json.loads(out.stdout)["peers"]} if out.returncode == 0 else None

    def desk_recognised_by(n, key):
        seen = json.loads(hosts[n].run(sys.executable, *BROWSE, hosts[n].ip,
                                       timeout=30).stdout)
        return any(discovery_tag(key, bytes.fromhex(s["txt"].get("n", ""))).hex()
                   == s["txt"].get("t") for s in seen)

    wait_for(lambda: peer_names("desk") == {"phone", "laptop"}, timeout=40, what="sessions")
    assert desk_recognised_by("phone", old_key)  # the check below can fail

    assert cli("desk", "devices", "revoke", nodes["phone"].device_id).returncode == 0
    wait_for(lambda: not desk_recognised_by("phone", old_key), timeout=30,
             what="the desktop advertising under a new key")
    new_key = disc_key_of(nodes["desk"])
    assert new_key != old_key
    assert desk_recognised_by("laptop", new_key)
    # the laptop learns the new key over its pinned session and keeps syncing
    wait_for(lambda: "has a new discovery key" in (tmp_path / "laptop.log").read_text(),
             timeout=30, what="the laptop learning the new key")
    wait_for(lambda: peer_names("laptop") == {"desk"}, timeout=30, what="the laptop's session")
    assert "has a new discovery key" not in (tmp_path / "phone.log").read_text()
