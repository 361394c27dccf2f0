"""Pair two real nodes through the CLI in their namespaces, then watch a note sync."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.lab import make_node_dir, node_argv, wait_for

pytestmark = pytest.mark.netns

WATCH = textwrap.dedent("""
    import asyncio, sys
    from p2pgate.client import Client
    async def main(url, token):
        async with Client(url, token) as c:
            async for event in c.events(cursor=0):
                print(event.model_dump_json(), flush=True)
                if event.id == "n1":
                    return
    asyncio.run(asyncio.wait_for(main(*sys.argv[1:]), 60))
""")

WRITE = textwrap.dedent("""
    import asyncio, json, sys
    from p2pgate.client import Client
    async def main(url, token):
        async with Client(url, token) as c:
            await c.put("notes", "n1", {"title": "written on the phone"})
    asyncio.run(main(*sys.argv[1:]))
""")


def cli(host, node, *args, timeout=60):
    return host.run(sys.executable, "-m", "p2pgate", "--data-dir", str(node.data_dir.root),
                    *args, timeout=timeout)


def test_pair_with_the_printed_code_then_a_note_flows_with_its_event(lab, tmp_path):
    phone_host, desk_host = lab.host("phone"), lab.host("desk")
    phone, desk = make_node_dir(tmp_path, "phone"), make_node_dir(tmp_path, "desk")
    for host, node in ((phone_host, phone), (desk_host, desk)):
        host.spawn(*node_argv(node, f"{host.ip}:7771", mdns=True),
                   log=tmp_path / f"{node.name}.log")
    for node in (phone, desk):
        wait_for(lambda n=node: (n.data_dir.root / "node.json").exists(), what="node start")

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
    joined = cli(phone_host, phone, "join", code, "--json")
    assert joined.returncode == 0, joined.stderr
    out, err = pair.communicate(timeout=30)
    assert pair.returncode == 0, err
    verification = json.loads(joined.stdout)["verification"]
    assert f"Verification: {verification}" in out
    assert json.loads(joined.stdout)["name"] == "desk"

    # both registries trust each other, and the session comes up by itself
    devices = json.loads(cli(desk_host, desk, "devices", "--json").stdout)["items"]
    assert [(d["name"], d["state"]) for d in devices] == [("phone", "trusted")]
    wait_for(lambda: json.loads(cli(desk_host, desk, "status", "--json").stdout)["peers"],
             what="session after pairing")

    watcher = subprocess.Popen(
        ["ip", "netns", "exec", desk_host.ns, sys.executable, "-c", WATCH,
         desk.runtime()["api_url"], desk.admin_token()], stdout=subprocess.PIPE, text=True)
    wrote = phone_host.run(sys.executable, "-c", WRITE, phone.runtime()["api_url"],
                           phone.admin_token())
    assert wrote.returncode == 0, wrote.stderr
    out, _ = watcher.communicate(timeout=60)
    event = json.loads(out.strip().splitlines()[-1])
    assert event["collection"] == "notes"
    assert event["id"] == "n1"
    assert event["origin"] == phone.device_id


def test_pair_through_the_api_with_the_uri(lab, tmp_path):
    phone_host, desk_host = lab.host("phone"), lab.host("desk")
    phone, desk = make_node_dir(tmp_path, "phone"), make_node_dir(tmp_path, "desk")
    for host, node in ((phone_host, phone), (desk_host, desk)):
        host.spawn(*node_argv(node, f"{host.ip}:7771"), log=tmp_path / f"{node.name}.log")
    for node in (phone, desk):
        wait_for(lambda n=node: (n.data_dir.root / "node.json").exists(), what="node start")
    offer = desk_host.run(sys.executable, "-c", API_CALL, desk.runtime()["api_url"],
                          desk.admin_token(), "/api/v1/pairing", "{}")
    offer = json.loads(offer.stdout)
    assert offer["qr_svg"].startswith("<svg")
    joined = phone_host.run(sys.executable, "-c", API_CALL, phone.runtime()["api_url"],
                            phone.admin_token(), "/api/v1/pairing/join",
                            json.dumps({"uri": offer["uri"]}))
    result = json.loads(joined.stdout)
    assert result["state"] == "paired"
    assert result["name"] == "desk"
    status = desk_host.run(sys.executable, "-c", API_CALL, desk.runtime()["api_url"],
                           desk.admin_token(), f"/api/v1/pairing/{offer['code'].split('-')[0]}",
                           "")
    assert json.loads(status.stdout)["verification"] == result["verification"]


API_CALL = textwrap.dedent("""
    import asyncio, json, sys
    from p2pgate.client import Client
    async def main(url, token, path, body):
        async with Client(url, token) as c:
            method = "POST" if body else "GET"
            _, payload, _ = await c.request(method, path, json.loads(body) if body else None)
            print(json.dumps(payload))
    asyncio.run(main(*sys.argv[1:]))
""")
