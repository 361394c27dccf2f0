"""Live sync between real nodes: partitions, conflicts, revocation."""

from __future__ import annotations

import json
import time

import pytest

from tests.lab import make_node_dir, node_argv, trust_each_other, wait_for
from tests.netns.nodes import Devices

pytestmark = pytest.mark.netns

class Pair:
    """A phone (0) and a desktop (1), paired, on one LAN, driven through `Devices`."""

    NAMES = ("phone", "desk")

    def __init__(self, lab, tmp_path):
        self.lab = lab
        self.hosts = {n: lab.host(n) for n in self.NAMES}
        self.nodes = {n: make_node_dir(tmp_path, n) for n in self.NAMES}
        trust_each_other(self.nodes["phone"], self.nodes["desk"],
                         [f"{self.hosts['phone'].ip}:7771"], [f"{self.hosts['desk'].ip}:7771"])
        for n, host in self.hosts.items():
            host.spawn(*node_argv(self.nodes[n], f"{host.ip}:7771"), log=tmp_path / f"{n}.log")
        self.devices = Devices(self.hosts, self.nodes)

    def api(self, i, *args):
        return self.devices.notes(self.NAMES[i], *args)

    def cli(self, i, *args):
        out = self.devices.cli(self.NAMES[i], *args)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def peers(self, i):
        return self.devices.peers(self.NAMES[i])


def test_conflicting_writes_across_a_partition_converge_and_the_loser_is_listed(lab, tmp_path):
    pair = Pair(lab, tmp_path)
    wait_for(lambda: pair.peers(0), what="session")
    pair.api(0, "put", "n1", json.dumps({"title": "first"}))
    wait_for(lambda: pair.api(1, "get", "n1").get("data") == {"title": "first"}, what="sync")

    pair.lab.cut_unicast(*pair.hosts.values())
    pair.api(0, "patch", "n1", json.dumps({"title": "phone's version"}))
    time.sleep(0.05)
    pair.api(1, "patch", "n1", json.dumps({"title": "desktop's version"}))
    pair.lab.restore_unicast(*pair.hosts.values())

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
    watchers = [pair.devices.spawn_notes(n, "alone") for n in Pair.NAMES]  # poll in-process
    assert [w.stdout.readline().strip() for w in watchers] == ["ready", "ready"]
    revoked_at = pair.api(1, "revoke", pair.nodes["phone"].device_id)["at"]
    closed_at = [float(w.communicate(timeout=10)[0]) for w in watchers]
    assert max(closed_at) - revoked_at < 3  # both sides dropped the session within 3 s
    pair.api(0, "put", "after", json.dumps({"v": 1}))
    pair.api(1, "put", "after2", json.dumps({"v": 2}))
    time.sleep(6)  # longer than the redial interval: the phone keeps trying and is refused
    assert pair.api(1, "get", "after") == {"error": 404}
    assert pair.api(0, "get", "after2") == {"error": 404}
    assert pair.peers(1) == []


def test_a_none_collection_never_leaves_and_a_receive_only_one_never_flows_back(lab, tmp_path):
    pair = Pair(lab, tmp_path)
    desk_id = pair.nodes["desk"].device_id
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
