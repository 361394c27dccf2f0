"""Pairing by the QR code's URI through a real relay process: the phone and the
desktop share a LAN segment but cannot reach each other (blackhole routes both ways),
both nodes run on default settings with `--relay`. The URI's nameplate is the one
the relay allocated; the pairing exchange runs through the relay's mailbox, and the
paired devices' session then comes up through the relay."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.lab import make_node_dir, node_argv, wait_for
from tests.netns.nodes import Devices

pytestmark = pytest.mark.netns


def test_pair_by_uri_through_the_relay_when_the_devices_cannot_reach_each_other(lab, tmp_path):
    relay, phone, desk = lab.host("relay"), lab.host("phone"), lab.host("desk")
    hosts = {"phone": phone, "desk": desk}
    nodes = {n: make_node_dir(tmp_path, n) for n in hosts}
    relay.spawn(sys.executable, "-m", "p2pgate", "relay", "--listen", f"{relay.ip}:8443",
                log=tmp_path / "relay.log")
    wait_for(lambda: relay.run("python3", "-c", f"import socket; socket.create_connection("
                               f"('{relay.ip}', 8443), 1)").returncode == 0, what="the relay")
    lab.cut_unicast(phone, desk)  # they reach the relay, never each other
    url = f"ws://{relay.ip}:8443"
    for n, host in hosts.items():
        host.spawn(*node_argv(nodes[n], f"{host.ip}:7771", mdns=True), "--relay", url,
                   log=tmp_path / f"{n}.log")
    devices = Devices(hosts, nodes)

    pair = subprocess.Popen(
        ["ip", "netns", "exec", desk.ns, sys.executable, "-m", "p2pgate", "--data-dir",
         str(nodes["desk"].data_dir.root), "pair"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert pair.stdout is not None
    lines, uri = [], None
    while uri is None:
        line = pair.stdout.readline()
        assert line, pair.stderr.read() if pair.stderr else ""
        lines.append(line)
        if line.startswith("or this URI:"):
            uri = line.split(":", 1)[1].strip()
    code = lines[0].split(":", 1)[1].strip()
    query = parse_qs(urlsplit(uri).query)
    assert query["c"] == [code]
    assert query["r"] == [url]  # where the phone meets the desktop
    assert f"{desk.ip}:7771" in query["a"][0]  # (blackholed for the phone)

    started = time.monotonic()
    joined = devices.cli("phone", "join", uri, "--json")
    took = time.monotonic() - started
    assert joined.returncode == 0, joined.stderr
    out, err = pair.communicate(timeout=30)
    assert pair.returncode == 0, err
    result = json.loads(joined.stdout)
    assert result["name"] == "desk"
    assert f"Verification: {result['verification']}" in out
    print(f"join by URI through the relay took {took:.2f} s (CLI start-up included)")

    listed = json.loads(devices.cli("desk", "devices", "--json").stdout)["items"]
    assert [(d["name"], d["state"]) for d in listed] == [("phone", "trusted")]
    wait_for(lambda: devices.path("phone") == "relay", timeout=30,
             what="the relayed session after pairing")
    again = devices.cli("phone", "join", uri)
    assert again.returncode != 0  # single use: the offer's box closed with it
