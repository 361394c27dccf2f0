"""CLI commands that go through the running node's API."""

import json
import subprocess
import sys


def cli(node, *args):
    return subprocess.run([sys.executable, "-m", "p2pgate", "--data-dir", str(node.data_dir),
                           *args], capture_output=True, text=True, timeout=60, check=False)


def test_status_app_devices_policy_through_the_node(node):
    status = cli(node, "status")
    assert status.returncode == 0, status.stderr
    assert "No peers connected." in status.stdout
    info = json.loads(cli(node, "status", "--json").stdout)
    assert info["node"]["api_url"] == node.url
    added = cli(node, "app", "add", "notes-app", "--scope", "notes:rw", "--json")
    token = json.loads(added.stdout)["token"]
    assert token.startswith("p2pg_")
    listed = cli(node, "app", "list")
    assert "notes-app" in listed.stdout
    assert token not in listed.stdout
    assert json.loads(cli(node, "app", "list", "--json").stdout)["items"][0]["scopes"] == [
        "notes:rw"]
    bad = cli(node, "app", "add", "x", "--scope", "notes:write")
    assert bad.returncode == 1
    assert bad.stderr.startswith("p2pgate: error: scope 'notes:write' must be")
    assert cli(node, "app", "revoke", "notes-app").returncode == 0
    assert json.loads(cli(node, "devices", "--json").stdout) == {"items": []}
    assert json.loads(cli(node, "policy", "--json").stdout) == {"items": []}
    missing = cli(node, "devices", "block", "AAAAAAA")
    assert missing.returncode == 1
    assert "device ID" in missing.stderr


def test_commands_fail_in_one_line_without_a_node(tmp_path):
    home = tmp_path / "idle"
    subprocess.run([sys.executable, "-m", "p2pgate", "--data-dir", str(home), "init"],
                   capture_output=True, check=True, timeout=60)
    for args in (["status"], ["devices"], ["app", "list"], ["policy"]):
        result = subprocess.run([sys.executable, "-m", "p2pgate", "--data-dir", str(home), *args],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 1
        assert result.stderr == (
            "p2pgate: error: no node is running (start one with `p2pgate node`)\n")
