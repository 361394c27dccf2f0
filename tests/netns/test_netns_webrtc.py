"""Two devices in two namespaces open a WebRTC data channel after exchanging the sealed
offer and answer through a real relay process's control connection (ICE with the
relay's STUN port), run admission, pinned TLS and a Session inside it, move 4 MiB and
close cleanly on both sides."""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.lab import make_node_dir, trust_each_other, wait_for

pytestmark = pytest.mark.netns


def _result(log) -> dict:
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def test_sealed_signalling_then_a_session_over_the_data_channel(lab, tmp_path):
    relay, a, b = lab.host("relay"), lab.host("webA"), lab.host("webB")
    nodes = {n: make_node_dir(tmp_path, n) for n in ("a", "b")}
    trust_each_other(nodes["a"], nodes["b"])
    relay.spawn(sys.executable, "-m", "p2pgate", "relay", "--listen", f"{relay.ip}:8443",
                log=tmp_path / "relay.log")
    url = f"ws://{relay.ip}:8443"
    program = (sys.executable, "-m", "tests.programs.webrtc_peer")
    answerer = b.spawn(*program, str(nodes["b"].data_dir.root), url, nodes["a"].device_id,
                       "answer", log=tmp_path / "b.log")
    wait_for(lambda: "ready" in (tmp_path / "b.log").read_text() or answerer.poll() is not None,
             timeout=30, what="the answerer on the relay")
    started = time.monotonic()
    offerer = a.spawn(*program, str(nodes["a"].data_dir.root), url, nodes["b"].device_id,
                      "offer", log=tmp_path / "a.log")
    assert offerer.wait(45) == 0, (tmp_path / "a.log").read_text()
    assert answerer.wait(15) == 0, (tmp_path / "b.log").read_text()
    took = time.monotonic() - started
    sent, got = _result(tmp_path / "a.log"), _result(tmp_path / "b.log")
    assert sent["path"] == got["path"] == "webrtc"
    assert sent["stun"] == got["stun"] == f"stun:{relay.ip}:3478"  # the relay's, not Google's
    assert sent["remote"].startswith(f"{b.ip}:") and got["remote"].startswith(f"{a.ip}:")
    assert got["bytes"] == sent["bytes"] == 4 << 20  # nothing lost on close
    assert got["sha256"] == sent["sha256"]
    assert got["close_reason"] == "all sent"  # the offerer's clean close reached the peer
    assert sent["refused"] == got["refused"] == 0
    assert "Traceback" not in (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    print(f"webrtc: channel open after {sent['connect_s']} s, session after "
          f"{sent['session_s']} s; 4 MiB at {got['mb_per_s']} MB/s (received); "
          f"whole run {took:.1f} s")


def test_simultaneous_offers_end_in_one_session(lab, tmp_path):
    relay, a, b = lab.host("relay"), lab.host("webA"), lab.host("webB")
    nodes = {n: make_node_dir(tmp_path, n) for n in ("a", "b")}
    trust_each_other(nodes["a"], nodes["b"])
    relay.spawn(sys.executable, "-m", "p2pgate", "relay", "--listen", f"{relay.ip}:8443",
                log=tmp_path / "relay.log")
    url = f"ws://{relay.ip}:8443"
    program = (sys.executable, "-m", "tests.programs.webrtc_peer")
    procs = {}
    for me, other, host in (("a", "b", a), ("b", "a", b)):
        procs[me] = host.spawn(*program, str(nodes[me].data_dir.root), url,
                               nodes[other].device_id, "glare", log=tmp_path / f"{me}.log")
    wait_for(lambda: all("ready" in (tmp_path / f"{n}.log").read_text() for n in procs),
             timeout=30, what="both devices on the relay")
    for n in procs:  # both offer at once
        (nodes[n].data_dir.root / "go").touch()
    results = {}
    for n, proc in procs.items():
        assert proc.wait(45) == 0, (tmp_path / f"{n}.log").read_text()
        results[n] = _result(tmp_path / f"{n}.log")
    offerer = [n for n, r in results.items() if "lost" not in r]
    assert len(offerer) == 1, results  # exactly one attempt stood
    answerer = "b" if offerer == ["a"] else "a"
    assert results[answerer]["answered"] and results[answerer]["path"] == "webrtc"
    assert results[answerer]["bytes"] == 4 << 20
    assert results[answerer]["sha256"] == results[offerer[0]]["sha256"]
    lower = min(nodes, key=lambda n: nodes[n].identity.device_id.digest)
    if "superseded" in results[answerer]["lost"]:  # both offers were out: the tie-break
        assert offerer == [lower]
    print(f"glare: {offerer[0]}'s offer stood (lower ID: {lower}); "
          f"the other side: {results[answerer]['lost']}")
