"""The devices walkthrough, as a newcomer runs it: two nodes, pairing, the notes app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.api.conftest import start_node
from tests.lab import wait_for

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "examples" / "devices" / "notes.py"


def p2pgate(node, *args):
    out = subprocess.run([sys.executable, "-m", "p2pgate", "--data-dir", str(node.data_dir),
                          *args], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def notes(node, token, *args):
    env = {**os.environ, "P2PGATE_API": node.url, "P2PGATE_TOKEN": token}
    return subprocess.run([sys.executable, str(NOTES), *args], capture_output=True, text=True,
                          timeout=60, env=env, check=False)


def test_phone_and_desktop_walkthrough(tmp_path, allow_blocking):
    nodes = {}
    for name in ("desktop", "phone"):
        config = (ROOT / "examples" / "devices" / name / "config.toml").read_text()
        nodes[name] = start_node(tmp_path / name, config=config)  # flags pick free ports
    desktop, phone = nodes["desktop"], nodes["phone"]
    try:
        pair = subprocess.Popen([sys.executable, "-m", "p2pgate", "--data-dir",
                                 str(desktop.data_dir), "pair"], stdout=subprocess.PIPE,
                                text=True)
        uri = None
        while uri is None:
            line = pair.stdout.readline()
            assert line
            if line.startswith("or this URI:"):
                uri = line.split(":", 1)[1].strip()
        joined = p2pgate(phone, "join", uri)
        out, _ = pair.communicate(timeout=30)
        digits = joined.split("Verification: ")[1].split()[0]
        assert f"Verification: {digits}" in out
        tokens = {n: json.loads(p2pgate(node, "app", "add", "notes", "--scope", "notes:rw",
                                        "--json"))["token"] for n, node in nodes.items()}
        wait_for(lambda: json.loads(p2pgate(desktop, "status", "--json"))["peers"],
                 what="session")
        watcher = subprocess.Popen(
            [sys.executable, str(NOTES), "watch"], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "P2PGATE_API": desktop.url, "P2PGATE_TOKEN": tokens["desktop"]})
        added = notes(phone, tokens["phone"], "add", "Groceries", "milk")
        note_id = added.stdout.strip()
        line = watcher.stdout.readline()
        watcher.kill()
        watcher.wait(10)
        watcher.stdout.close()
        phone_short = json.loads(p2pgate(phone, "status", "--json"))["node"]["short_id"]
        assert f"{note_id} changed by {phone_short}" in line
        listed = notes(desktop, tokens["desktop"], "list").stdout
        assert f"{note_id}  Groceries  milk" in listed
    finally:
        for node in nodes.values():
            node.stop()


def test_the_laptop_config_is_a_valid_node_config():
    from p2pgate.config import load_config

    config = load_config(ROOT / "examples" / "devices" / "laptop" / "config.toml", {})
    assert config.relays == ("wss://relay.example.net",)
    assert config.bootstrap == (("relay.example.net", 4000),)
    assert config.dht and config.mdns


def test_the_relay_config_is_a_valid_relay_config():
    from p2pgate.relay.config import load_relay_config

    config = load_relay_config(ROOT / "examples" / "devices" / "relay" / "relay.toml")
    assert config.access == "token"
    assert config.public_url == "wss://relay.example.net"
    assert config.audience == "my-fleet"
