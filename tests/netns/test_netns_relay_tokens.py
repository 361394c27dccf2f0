"""A relay in `access = "token"` mode, set up as `examples/devices/relay/` tells an
operator: devices with a token (one from config.toml, one handed over through the
CLI) log in and sync through it, whatever form of its URL they were given; a device
without one is refused and told, once, to ask the operator. No token is ever logged."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from p2pgate.relay.access_tokens import token_expiry
from tests.lab import make_node_dir, node_argv, trust_each_other, wait_for
from tests.netns.nodes import Devices

pytestmark = pytest.mark.netns

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "devices" / "relay" / "relay.toml"


def p2pgate(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "p2pgate", *args], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def operator_config(tmp_path: Path, public_url: str) -> tuple[Path, Path]:
    """The example relay.toml with what the operator's guide says to fill in."""
    key = tmp_path / "relay-signing.key"
    printed = p2pgate("relay", "keygen", "--key", str(key))
    token_keys = next(line for line in printed.splitlines() if line.startswith("token_keys"))
    text = EXAMPLE.read_text()
    text = re.sub(r"^token_keys = .*$", token_keys, text, flags=re.MULTILINE)
    text = re.sub(r"^public_url = .*$", f'public_url = "{public_url}"', text, flags=re.MULTILINE)
    assert 'access = "token"' in text and 'audience = "my-fleet"' in text
    config = tmp_path / "relay.toml"
    config.write_text(text)
    return config, key


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_token_relay_admits_devices_with_tokens_and_tells_the_others(lab, tmp_path):
    relay, phone, desk, stranger = (lab.host(n) for n in ("relay", "phone", "desk", "stray"))
    hosts = {"phone": phone, "desk": desk, "stranger": stranger}
    nodes = {n: make_node_dir(tmp_path, n) for n in hosts}
    trust_each_other(nodes["phone"], nodes["desk"], [f"{phone.ip}:7771"], [f"{desk.ip}:7771"])
    config, key = operator_config(tmp_path, f"http://{relay.ip}:8443/")
    relay.spawn(sys.executable, "-m", "p2pgate", "relay", "--config", str(config),
                "--listen", f"{relay.ip}:8443", log=tmp_path / "relay.log")
    tokens = {n: p2pgate("relay", "token", "--key", str(key), "--device", nodes[n].device_id,
                         "--audience", "my-fleet", "--ttl", "30d").strip()
              for n in ("phone", "desk")}
    lab.cut_unicast(phone, desk)  # they reach the relay, never each other

    # the phone: its token in config.toml, keyed by another spelling of the relay's URL
    (nodes["phone"].data_dir.root / "config.toml").write_text(
        f'[relay_tokens]\n"ws://{relay.ip}:8443" = "{tokens["phone"]}"\n')
    given = {"phone": f"http://{relay.ip}:8443", "desk": f"ws://{relay.ip}:8443/",
             "stranger": f"HTTP://{relay.ip}:8443"}
    for n, host in hosts.items():
        if n != "phone":
            (nodes[n].data_dir.root / "config.toml").write_text("")
        host.spawn(*node_argv(nodes[n], f"{host.ip}:7771"), "--relay", given[n],
                   log=tmp_path / f"{n}.log")
    devices = Devices(hosts, nodes)

    def relays(n):
        out = devices.cli(n, "status", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["relays"]

    canonical = f"ws://{relay.ip}:8443"
    wait_for(lambda: relays("phone")[0]["logged_in"], what="the phone logging in")
    # the desk has no token yet: refused, and told what to do
    wait_for(lambda: "needs an access token" in read(tmp_path / "desk.log"),
             what="the desk told it needs a token")
    login = {"url": canonical, "logged_in": False, "has_token": False,
             "token_expires_at": None, "refusal": "token_missing"}
    assert {k: relays("desk")[0][k] for k in login} == login
    handed = devices.cli("desk", "relay-token", "set", f"http://{relay.ip}:8443/",
                         tokens["desk"])
    assert handed.returncode == 0, handed.stderr
    assert f"Token for relay {canonical} handed to the node" in handed.stdout
    wait_for(lambda: relays("desk")[0]["logged_in"], timeout=10, what="the desk logging in")
    for n in ("phone", "desk"):
        assert relays(n)[0]["token_expires_at"] == token_expiry(tokens[n])
    status = devices.cli("desk", "status")
    assert f"Relay {canonical}: logged in, token expires" in status.stdout

    wait_for(lambda: devices.path("phone") == "relay" and devices.path("desk") == "relay",
             timeout=30, what="a relayed session")
    devices.api("phone", "put", "n1", json.dumps({"text": "through a token relay"}))
    wait_for(lambda: devices.api("desk", "ids") == ["n1"], what="sync through the relay")

    # the stranger has no token: refused every time, told once to ask the operator
    stranger_id = nodes["stranger"].device_id
    wait_for(lambda: read(tmp_path / "relay.log").count(
        f"auth failed from {stranger.ip}: token_missing") >= 3, timeout=30,
        what="the stranger refused again and again")
    log = read(tmp_path / "stranger.log")
    advice = f"ask the relay operator for a token (p2pgate relay token --device {stranger_id})"
    assert log.count(advice) == 1, log
    assert relays("stranger")[0]["refusal"] == "token_missing"

    # the token handed over through the CLI is kept: the desk logs in again after a restart
    desk_proc = desk.processes[-1]
    desk_proc.terminate()
    assert desk_proc.wait(30) == 0
    (nodes["desk"].data_dir.root / "node.json").unlink(missing_ok=True)
    desk.spawn(*node_argv(nodes["desk"], f"{desk.ip}:7771"), "--relay", given["desk"],
               log=tmp_path / "desk2.log")
    devices.wait_started("desk")
    wait_for(lambda: relays("desk")[0]["logged_in"], what="the desk logging in after restart")

    logs = {p.name: p.read_text() for p in tmp_path.glob("*.log")}
    for name, text in logs.items():
        assert "bad_signature" not in text, name
        for token in tokens.values():  # neither the whole token nor its signature part
            assert token not in text, name
            assert token.rsplit(".", 1)[1] not in text, name
