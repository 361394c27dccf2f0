"""Live sync between real nodes: partitions, conflicts, revocation."""

from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest

from tests.lab import make_node_dir, node_argv, trust_each_other, wait_for

pytestmark = pytest.mark.netns

API = textwrap.dedent("""
    import asyncio, json, sys
    from p2pgate.client import Client, ClientError
    async def main(url, token, op, *args):
        async with Client(url, token) as c:
            try:
                if op == "cput":
                    r = await c.put(args[0], args[1], json.loads(args[2]))
                elif op == "cget":
                    r = await c.get(args[0], args[1])
                elif op == "put":
                    r = await c.put("notes", args[0], json.loads(args[1]))
                elif op == "patch":
                    r = await c.patch("notes", args[0], json.loads(args[1]))
                elif op == "get":
                    r = await c.get("notes", args[0])
                elif op == "conflicts":
                    r = await c.conflicts("notes", args[0])
                elif op == "revoke":
                    r = await c.device_action(args[0], "revoke")
                print(r.model_dump_json())
            except ClientError as e:
                print(json.dumps({"error": e.status}))
    asyncio.run(main(*sys.argv[1:]))
""")


class Pair:
    def __init__(self, lab, tmp_path):
        self.lab = lab
        self.hosts = lab.host("phone"), lab.host("desk")
        self.nodes = make_node_dir(tmp_path, "phone"), make_node_dir(tmp_path, "desk")
        (ph, dh), (pn, dn) = self.hosts, self.nodes
        trust_each_other(pn, dn, [f"{ph.ip}:7771"], [f"{dh.ip}:7771"])
        for host, node in zip(self.hosts, self.nodes, strict=True):
            host.spawn(*node_argv(node, f"{host.ip}:7771"), log=tmp_path / f"{node.name}.log")
        for node in self.nodes:
            wait_for(lambda n=node: (n.data_dir.root / "node.json").exists(), what="start")

    def api(self, i, *args):
        host, node = self.hosts[i], self.nodes[i]
        out = host.run(sys.executable, "-c", API, node.runtime()["api_url"],
                       node.admin_token(), *args)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def cli(self, i, *args):
        host, node = self.hosts[i], self.nodes[i]
        out = host.run(sys.executable, "-m", "p2pgate", "--data-dir", str(node.data_dir.root),
                       *args)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def peers(self, i):
        host, node = self.hosts[i], self.nodes[i]
        out = host.run(sys.executable, "-m", "p2pgate", "--data-dir", str(node.data_dir.root),
                       "status", "--json")
        return json.loads(out.stdout)["peers"] if out.returncode == 0 else None


def test_conflicting_writes_across_a_partition_converge_and_the_loser_is_listed(lab, tmp_path):
    pair = Pair(lab, tmp_path)
    wait_for(lambda: pair.peers(0), what="session")
    pair.api(0, "put", "n1", json.dumps({"title": "first"}))
    wait_for(lambda: pair.api(1, "get", "n1").get("data") == {"title": "first"}, what="sync")

    pair.lab.cut_unicast(*pair.hosts)
    pair.api(0, "patch", "n1", json.dumps({"title": "phone's version"}))
    time.sleep(0.05)
    pair.api(1, "patch", "n1", json.dumps({"title": "desktop's version"}))
    pair.lab.restore_unicast(*pair.hosts)

    def converged():
        a, b = pair.api(0, "get", "n1"), pair.api(1, "get", "n1")
        return a.get("data") == b.get("data") and a["data"]["title"] != "first" and a
    doc = wait_for(converged, timeout=90, what="convergence after the partition heals")
    loser = ({"phone's version", "desktop's version"} - {doc["data"]["title"]}).pop()
    for i in (0, 1):
        conflicts = pair.api(i, "conflicts", "n1")["fields"]
        assert conflicts["title"]["value"] == loser


def test_revoking_the_phone_cuts_the_session_and_stops_sync_both_ways(lab, tmp_path):
    pair = Pair(lab, tmp_path)
    wait_for(lambda: pair.peers(1), what="session")
    pair.api(1, "revoke", pair.nodes[0].device_id)
    started = time.monotonic()
    wait_for(lambda: pair.peers(1) == [] and pair.peers(0) == [], timeout=5, interval=0.05,
             what="sessions closed")
    assert time.monotonic() - started < 3  # includes two CLI round trips per poll
    pair.api(0, "put", "after", json.dumps({"v": 1}))
    pair.api(1, "put", "after2", json.dumps({"v": 2}))
    time.sleep(6)  # longer than the redial interval: the phone keeps trying and is refused
    assert pair.api(1, "get", "after") == {"error": 404}
    assert pair.api(0, "get", "after2") == {"error": 404}
    assert pair.peers(1) == []


def test_a_none_collection_never_leaves_and_a_receive_only_one_never_flows_back(lab, tmp_path):
    pair = Pair(lab, tmp_path)
    desk_id = pair.nodes[1].device_id
    pair.cli(0, "policy", "set", desk_id, "diary", "none")
    pair.cli(0, "policy", "set", desk_id, "inbox", "receive")
    pair.cli(0, "policy", "set", desk_id, "work", "both", "--filter", '{"shared": true}')
    wait_for(lambda: pair.peers(0), what="session")

    pair.api(0, "cput", "diary", "d1", json.dumps({"text": "private"}))
    pair.api(1, "cput", "inbox", "i1", json.dumps({"from": "desktop"}))
    pair.api(0, "cput", "work", "w1", json.dumps({"shared": True, "v": 1}))
    pair.api(0, "cput", "work", "w2", json.dumps({"shared": False, "v": 2}))
    wait_for(lambda: pair.api(0, "cget", "inbox", "i1").get("data") == {"from": "desktop"},
             what="the inbox reaches the phone")
    pair.api(0, "cput", "inbox", "i1", json.dumps({"from": "phone, edited"}))
    pair.api(0, "cput", "inbox", "i2", json.dumps({"from": "phone"}))
    pair.api(0, "put", "marker", json.dumps({"after": "everything"}))
    wait_for(lambda: pair.api(1, "get", "marker").get("data") == {"after": "everything"},
             what="a later note reaches the desktop")
    wait_for(lambda: pair.api(1, "cget", "work", "w1").get("data") == {"shared": True, "v": 1},
             what="the matching work document reaches the desktop")

    assert pair.api(1, "cget", "diary", "d1") == {"error": 404}
    assert pair.api(1, "cget", "inbox", "i2") == {"error": 404}
    assert pair.api(1, "cget", "inbox", "i1")["data"] == {"from": "desktop"}
    assert pair.api(1, "cget", "work", "w2") == {"error": 404}

    # the document starts matching: now it is sent
    pair.api(0, "cput", "work", "w2", json.dumps({"shared": True, "v": 3}))
    wait_for(lambda: pair.api(1, "cget", "work", "w2").get("data") == {"shared": True, "v": 3},
             what="a document that starts matching reaches the desktop")
