"""A real node process and a real `p2pgate relay` process in `access = "token"` mode, on
loopback: the node is given the relay as `http://HOST:PORT`, is refused for want of a
token (said once, with the fix), and logs in the moment the admin API hands it one."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.request

import pytest

from p2pgate.client import Client, ClientError
from p2pgate.relay.access_tokens import token_expiry
from tests.api.conftest import start_node
from tests.lab import wait_for


def p2pgate(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "p2pgate", *args], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def refusals(port: int) -> float:
    """How many logins the relay refused for want of a token (its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(r'auth_failures_total\{reason="token_missing"\} (\S+)', text)
    return float(found[1]) if found else 0.0


@pytest.fixture
def token_relay(tmp_path):
    """A relay process with access = "token"; yields (port, signing key path)."""
    key = tmp_path / "signing.key"
    printed = p2pgate("relay", "keygen", "--key", str(key))
    token_keys = next(line for line in printed.splitlines() if line.startswith("token_keys"))
    config = tmp_path / "relay.toml"
    config.write_text(f'listen = "127.0.0.1:0"\naccess = "token"\naudience = "my-fleet"\n'
                      f"{token_keys}\ndrain_timeout = 1\n")
    proc = subprocess.Popen([sys.executable, "-m", "p2pgate", "relay", "--config", str(config),
                             "--data-dir", str(tmp_path / "relay-home")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert "listening on" in line, line
    yield int(line.split("127.0.0.1:")[1].split()[0]), key
    proc.kill()
    proc.wait(10)
    proc.stdout.close()


def test_a_node_given_an_http_relay_url_logs_in_once_handed_a_token(
        tmp_path, token_relay, allow_blocking):
    port, key = token_relay
    node = start_node(tmp_path / "node", "--relay", f"http://127.0.0.1:{port}/")
    canonical = f"ws://127.0.0.1:{port}"
    try:
        device = p2pgate("--data-dir", str(node.data_dir), "id").strip()

        def relays():
            out = p2pgate("--data-dir", str(node.data_dir), "status", "--json")
            return json.loads(out)["relays"]

        wait_for(lambda: relays()[0]["refusal"] == "token_missing", what="refused")
        wait_for(lambda: refusals(port) >= 3, what="refused again and again")
        advice = (f"relay {canonical} needs an access token and we have none: ask the relay "
                  f"operator for a token (p2pgate relay token --device {device})")
        assert node.log().count(advice) == 1, node.log()

        token = p2pgate("relay", "token", "--key", str(key), "--device", device,
                        "--audience", "my-fleet", "--ttl", "1d").strip()
        out = p2pgate("--data-dir", str(node.data_dir), "relay-token", "set",
                      f"HTTP://127.0.0.1:{port}", token)
        assert f"Token for relay {canonical} handed to the node" in out
        wait_for(lambda: relays()[0]["logged_in"], timeout=10, what="logged in")
        [relay] = relays()  # (with its STUN status besides)
        assert {k: relay[k] for k in ("url", "logged_in", "has_token", "token_expires_at",
                                      "refusal")} == {
            "url": canonical, "logged_in": True, "has_token": True,
            "token_expires_at": token_expiry(token), "refusal": None}
        status = p2pgate("--data-dir", str(node.data_dir), "status")
        assert f"Relay {canonical}: logged in, token expires" in status
        log = node.log()
        assert "bad_signature" not in log
        assert token not in log and token.rsplit(".", 1)[1] not in log
    finally:
        node.stop()


async def test_the_token_endpoint_is_admin_only_and_checks_the_url(tmp_path, token_relay):
    port, _ = token_relay
    node = await asyncio.to_thread(start_node, tmp_path / "node", "--relay",
                                   f"ws://127.0.0.1:{port}")
    try:
        async with Client(node.url, node.admin_token) as admin:
            app = await admin.add_app("notes", ["notes:rw"])
            for url, status, code in (("ftp://127.0.0.1", 422, "bad_relay_url"),
                                      ("ws://127.0.0.1:1", 404, "unknown_relay")):
                with pytest.raises(ClientError) as err:
                    await admin.set_relay_token(url, "a.b.c")
                assert (err.value.status, err.value.code) == (status, code)
            with pytest.raises(ClientError) as err:
                await admin.set_relay_token(f"ws://127.0.0.1:{port}", "")
            assert err.value.status == 422
            async with Client(node.url, app.token) as client:
                for call in (client.relays(), client.set_relay_token(
                        f"ws://127.0.0.1:{port}", "a.b.c")):
                    with pytest.raises(ClientError) as err:
                        await call
                    assert err.value.status == 403
            assert (await admin.relays()).items[0].has_token is False
    finally:
        await asyncio.to_thread(node.stop)
