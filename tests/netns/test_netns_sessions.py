"""Real node processes in network namespaces on one bridge."""

from __future__ import annotations

import json
import sys

import pytest

from tests.lab import make_node_dir, node_argv, trust_each_other, wait_for

pytestmark = pytest.mark.netns


def peers_of(host, node):
    result = host.run(sys.executable, "-m", "p2pgate", "--data-dir", str(node.data_dir.root),
                      "status", "--json")
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)["peers"]


def test_two_namespaces_open_a_pinned_session_and_a_stranger_learns_nothing(lab, tmp_path):
    phone_host, desk_host, stranger_host = lab.host("phone"), lab.host("desk"), lab.host("evil")
    phone, desk = make_node_dir(tmp_path, "phone"), make_node_dir(tmp_path, "desk")
    stranger = make_node_dir(tmp_path, "stranger")
    port = 7771
    trust_each_other(phone, desk, [f"{phone_host.ip}:{port}"], [f"{desk_host.ip}:{port}"])
    # the stranger believes it is paired with the desktop; the desktop never paired it
    trust_each_other(stranger, make_node_dir(tmp_path, "desk-imposter"),
                     b_addresses=[f"{desk_host.ip}:{port}"])
    nodes = [(phone_host, phone), (desk_host, desk), (stranger_host, stranger)]
    for host, node in nodes:
        host.spawn(*node_argv(node, f"{host.ip}:{port}"), log=tmp_path / f"{node.name}.log")
    for _, node in nodes:
        wait_for(lambda n=node: (n.data_dir.root / "node.json").exists(), what="node start")

    connected = wait_for(lambda: peers_of(desk_host, desk), what="phone-desk session")
    assert [p["name"] for p in connected] == ["phone"]
    assert connected[0]["path"] == "direct"
    assert connected[0]["address"].startswith(phone_host.ip)

    # a note written on the phone reaches the desktop across the veth links
    wrote = phone_host.run(sys.executable, "-m", "tests.programs.notes",
                           phone.runtime()["api_url"], phone.admin_token(), "put", "n1",
                           json.dumps({"title": "from the phone"}))
    assert wrote.returncode == 0, wrote.stderr
    def read():
        out = desk_host.run(sys.executable, "-m", "tests.programs.notes",
                            desk.runtime()["api_url"], desk.admin_token(), "get", "n1")
        return out.stdout.strip() if '"data"' in out.stdout else None

    seen = wait_for(read, what="note on the desktop")
    assert json.loads(seen)["data"] == {"title": "from the phone"}
    def human_status():
        out = desk_host.run(sys.executable, "-m", "p2pgate", "--data-dir",
                            str(desk.data_dir.root), "status").stdout
        return out if "100% synced" in out else None

    human = wait_for(human_status, what="a full progress bar")
    assert "phone" in human
    assert "direct" in human

    # the stranger is refused and learns nothing
    assert peers_of(stranger_host, stranger) == []
    assert [p["name"] for p in peers_of(desk_host, desk)] == ["phone"]
    probe = stranger_host.run(sys.executable, "-m", "tests.programs.probe", desk_host.ip,
                              str(port))
    assert probe.stdout.strip() == "0", probe.stderr
    desk_log = (tmp_path / "desk.log").read_text()
    assert "stranger" not in desk_log
