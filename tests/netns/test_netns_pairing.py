"""Pair two real nodes through the CLI in their namespaces, then watch a note sync."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.lab import make_node_dir, node_argv, wait_for
from tests.netns.nodes import Devices

pytestmark = pytest.mark.netns


def test_pair_with_the_printed_code_then_a_note_flows_with_its_event(lab, tmp_path):
    hosts = {n: lab.host(n) for n in ("phone", "desk")}
    nodes = {n: make_node_dir(tmp_path, n) for n in hosts}
    for n, host in hosts.items():
        host.spawn(*node_argv(nodes[n], f"{host.ip}:7771", mdns=True), log=tmp_path / f"{n}.log")
    devices = Devices(hosts, nodes)
    desk_host, desk = hosts["desk"], nodes["desk"]

    # the desktop shows a code and a QR code and waits; the phone types the code
    # (it finds the desktop on the LAN by mDNS)
    pair = subprocess.Popen(
        ["ip", "netns", "exec", desk_host.ns, sys.executable, "-m", "p2pgate", "--data-dir",
         str(desk.data_dir.root), "pair"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    lines = []
    uri = None
    while uri is None:
        line = pair.stdout.readline()
        assert line, pair.stderr.read()
        lines.append(line)
        if line.startswith("or this URI:"):
            uri = line.split(":", 1)[1].strip()
    code = lines[0].split(":", 1)[1].strip()
    assert f"a={desk_host.ip}%3A7771" in uri
    joined = devices.cli("phone", "join", code, "--json")
    assert joined.returncode == 0, joined.stderr
    out, err = pair.communicate(timeout=30)
    assert pair.returncode == 0, err
    verification = json.loads(joined.stdout)["verification"]
    assert f"Verification: {verification}" in out
    assert json.loads(joined.stdout)["name"] == "desk"

    # both registries trust each other, and the session comes up by itself
    listed = json.loads(devices.cli("desk", "devices", "--json").stdout)["items"]
    assert [(d["name"], d["state"]) for d in listed] == [("phone", "trusted")]
    wait_for(lambda: devices.peers("desk"), what="session after pairing")

    watcher = devices.spawn_notes("desk", "watch", "n1")
    devices.notes("phone", "put", "n1", json.dumps({"title": "written on the phone"}))
    out, _ = watcher.communicate(timeout=60)
    event = json.loads(out.strip().splitlines()[-1])
    assert event["collection"] == "notes"
    assert event["id"] == "n1"
    assert event["origin"] == nodes["phone"].device_id


def test_pair_through_the_api_with_the_uri(lab, tmp_path):
    hosts = {n: lab.host(n) for n in ("phone", "desk")}
    nodes = {n: make_node_dir(tmp_path, n) for n in hosts}
    for n, host in hosts.items():
        host.spawn(*node_argv(nodes[n], f"{host.ip}:7771"), log=tmp_path / f"{n}.log")
    devices = Devices(hosts, nodes)
    offer = devices.call("desk", "POST", "/api/v1/pairing", "{}")["body"]
    assert offer["qr_svg"].startswith("<svg")
    result = devices.call("phone", "POST", "/api/v1/pairing/join",
                          json.dumps({"uri": offer["uri"]}))["body"]
    assert result["state"] == "paired"
    assert result["name"] == "desk"
    status = devices.call("desk", "GET", f"/api/v1/pairing/{offer['code'].split('-')[0]}")
    assert status["body"]["verification"] == result["verification"]
