"""NAT traversal, one run per pair of NAT types: two nodes behind the NAT lab's routers
pair as a user would (`p2pgate pair` on one, `p2pgate join` on the other) through the
relay's mailbox, reach each other through the relay, then move to a WebRTC data
channel (ICE with the relay's STUN port, signalled sealed through the relay) wherever
the two NATs allow it, and stay on the relay where they cannot. A note written after
that arrives once. The relay host's wire (every frame in the internet namespace,
captured for the whole run) holds neither the note nor the pairing code's words.
Default settings; real node and relay processes.

Waits watch the nodes instead of sleeping or polling with new processes: one
`tests.programs.notes drive` program in each host prints the peers' paths as they
change and every change that arrives, and puts notes on request. Where the NATs cannot
punch, the wait ends when the answering node logs that the attempt failed (its 10 s
deadline), not after a fixed sleep."""

from __future__ import annotations

import itertools
import json
import secrets
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.lab import make_node_dir, wait_for
from tests.natlab import ATTEMPT_FAILED, NAT_TYPES, RELAY_IP, NatLab
from tests.netns.failover import Lines

pytestmark = pytest.mark.netns

RELAY = f"ws://{RELAY_IP}:8443"
UNPUNCHABLE = {frozenset({"symmetric"}), frozenset({"symmetric", "port-restricted"})}
STUN_COOKIE = bytes.fromhex("2112a442")  # in every STUN message (RFC 5389)


def expected_path(nat_a: str, nat_b: str) -> str:
    """LAB.md: any NAT × public or full cone, and port-restricted × port-restricted punch
    through; symmetric × symmetric and symmetric × port-restricted cannot."""
    return "relay" if frozenset({nat_a, nat_b}) in UNPUNCHABLE else "webrtc"


class Cell:
    """A lab run: the capture and relay in the internet namespace, two unpaired nodes
    behind the routers, and a `drive` program on each (its peers and events, our puts)."""

    def __init__(self, lab: NatLab, tmp_path) -> None:
        self.lab, self.tmp = lab, tmp_path
        self.capture = tmp_path / "internet.cap"
        self.programs: list[Lines] = []
        lab.internet.spawn(sys.executable, "-m", "tests.programs.capture", str(self.capture),
                           log=tmp_path / "capture.log")
        self.hosts = {"a": lab.a.host, "b": lab.b.host}
        self.nodes = {n: make_node_dir(tmp_path, n) for n in self.hosts}
        wait_for(self.capture.exists, timeout=30, interval=0.05, what="the capture")
        for n, host in self.hosts.items():  # they start while the relay does (and retry)
            host.spawn(sys.executable, "-m", "p2pgate", "--data-dir",
                       str(self.nodes[n].data_dir.root), "node", "--api", "127.0.0.1:0",
                       "--listen", f"{host.ip}:7771", "--no-mdns", "--no-dht",
                       "--relay", RELAY, log=self.log(n))
        lab.start_relay(tmp_path / "relay", "--listen", "0.0.0.0:8443")
        for n in self.hosts:
            wait_for((self.nodes[n].data_dir.root / "node.json").exists, timeout=30,
                     interval=0.05, what=f"{n} to start")
        self.drive = {n: self.program(n, "drive", stdin=True) for n in self.hosts}

    def log(self, n: str):
        return self.tmp / f"{n}.log"

    def close(self) -> None:
        for program in self.programs:
            if program.proc.stdin is not None:
                program.proc.stdin.close()
            program.stop()

    def argv(self, n: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[n].ns, sys.executable, *args]

    def program(self, n: str, *args: str, stdin: bool = False) -> Lines:
        """`tests.programs.notes ARGS` running in the background on node n."""
        node = self.nodes[n]
        lines = Lines(subprocess.Popen(
            self.argv(n, "-m", "tests.programs.notes", str(node.runtime()["api_url"]),
                      node.admin_token(), *args), stdout=subprocess.PIPE, text=True,
            stdin=subprocess.PIPE if stdin else None))
        self.programs.append(lines)
        return lines

    def notes(self, n: str, *args: str):
        node = self.nodes[n]
        out = subprocess.run(self.argv(n, "-m", "tests.programs.notes",
                                       str(node.runtime()["api_url"]), node.admin_token(),
                                       *args), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else None

    def put(self, n: str, doc: str, body: dict) -> None:
        """A note put through node n's `drive` program (it prints `put ID` when done)."""
        stdin = self.drive[n].proc.stdin
        assert stdin is not None
        stdin.write(f"put {doc} {json.dumps(body)}\n")
        stdin.flush()
        wait_for(lambda: ["put", doc] in [w for w, _ in self.drive[n].lines], timeout=30,
                 interval=0.05, what=f"the put of {doc} on {n}")

    def events(self, n: str) -> list[str]:
        """The IDs of the changes node n has shown since its `drive` program started."""
        return [w[1] for w, _ in self.drive[n].lines if w[:1] == ["event"]]

    def cli(self, n: str, *args: str) -> list[str]:
        return self.argv(n, "-m", "p2pgate", "--data-dir", str(self.nodes[n].data_dir.root),
                         *args)

    def peers(self, n: str) -> list[dict]:
        """The peers node n showed last."""
        shown = [w[1] for w, _ in self.drive[n].lines if w[:1] == ["peers"]]
        return json.loads(shown[-1]) if shown else []

    def path(self, n: str) -> str | None:
        peers = self.peers(n)
        return peers[0]["path"] if peers else None

    def history(self, n: str) -> list[tuple[str, float]]:
        """Every (path, session start) node n showed, in order."""
        return [(p["path"], p["since"]) for w, _ in self.drive[n].lines if w[:1] == ["peers"]
                for p in json.loads(w[1])]

    def pair(self, inviter: str, joiner: str, by: str) -> dict[str, str]:
        """`p2pgate pair` on the inviter, `p2pgate join CODE-OR-URI` on the joiner (`by`
        "code" or "uri"); the code and URI."""
        shown = subprocess.Popen(self.cli(inviter, "pair"), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            assert shown.stdout is not None
            lines: list[str] = []
            while not lines or not lines[-1].startswith("or this URI:"):
                line = shown.stdout.readline()
                assert line, shown.stderr.read() if shown.stderr else ""
                lines.append(line)
            code = lines[0].split(":", 1)[1].strip()
            uri = lines[-1].split(":", 1)[1].strip()
            joined = subprocess.run(self.cli(joiner, "join", uri if by == "uri" else code,
                                             "--json"),
                                    capture_output=True, text=True, timeout=60)
            assert joined.returncode == 0, joined.stderr
            out, err = shown.communicate(timeout=30)
            assert shown.returncode == 0, err
        finally:
            if shown.poll() is None:
                shown.kill()
                shown.communicate(timeout=10)
        result = json.loads(joined.stdout)
        assert result["name"] == inviter
        assert f"Verification: {result['verification']}" in out
        return {"code": code, "uri": uri}

    def wire(self) -> bytes:
        return self.capture.read_bytes()


def inviter_and_way(nat_a: str, nat_b: str) -> tuple[str, str, str]:
    """Who shows the code, who joins, and with what. The inviter sits behind a NAT where
    one does, and the joiner scans its URI: the URI's LAN address is unreachable from
    the other network, so the join goes on to the relay's mailbox (the URI's box). Two
    public hosts reach each other's addresses: the joiner types the code, which carries
    none, and meets the inviter in the mailbox by nameplate."""
    if nat_b != "public":
        return "b", "a", "uri"
    if nat_a != "public":
        return "a", "b", "uri"
    return "b", "a", "code"


def assert_paired_through_the_mailbox(wire: bytes, pairing: dict[str, str]) -> None:
    """The relay's mailbox JSON (relay to node frames are unmasked): it opened the offer's
    box with the code's nameplate and spliced a joiner to the inviter; the words and
    the URI's secret never crossed the wire in plain text (SPAKE2, then AEAD)."""
    nameplate, words = pairing["code"].split("-", 1)
    secret = parse_qs(urlsplit(pairing["uri"]).query)["k"][0]
    assert f'{{"t": "open", "nameplate": {nameplate}}}'.encode() in wire
    assert wire.count(b'{"t": "spliced"}') >= 2  # the joiner's side and the inviter's
    assert words.encode() not in wire
    assert pairing["code"].encode() not in wire
    assert secret.encode() not in wire


@pytest.mark.parametrize(("nat_a", "nat_b"),
                         list(itertools.combinations_with_replacement(NAT_TYPES, 2)))
def test_the_path_ends_on_webrtc_where_the_nats_allow_it(natlab, nat_a, nat_b, tmp_path):
    cell = Cell(natlab(nat_a, nat_b), tmp_path)
    try:
        want = expected_path(nat_a, nat_b)
        note = f"the relay must not read {nat_a} x {nat_b} {secrets.token_hex(8)}"
        inviter, joiner, way = inviter_and_way(nat_a, nat_b)
        pairing = cell.pair(inviter, joiner, way)
        assert_paired_through_the_mailbox(cell.wire(), pairing)
        wait_for(lambda: cell.path("a") in ("relay", "webrtc"), timeout=30, interval=0.05,
                 what="a session after pairing")
        if want == "webrtc":
            wait_for(lambda: cell.path("a") == cell.path("b") == "webrtc", timeout=40,
                     interval=0.05, what=f"the move to webrtc ({nat_a} x {nat_b})")
        else:
            wait_for(lambda: cell.path("b") == "relay", timeout=30, interval=0.05,
                     what="b's side of the relayed session")
            wait_for(lambda: any(ATTEMPT_FAILED.search(cell.log(n).read_text())
                                 for n in ("a", "b")), timeout=40, interval=0.1,
                     what=f"the webrtc attempt to fail ({nat_a} x {nat_b})")
        sessions = {n: cell.peers(n) for n in ("a", "b")}
        cell.put("a", "after", {"text": note})
        wait_for(lambda: "after" in cell.events("b"), timeout=30, interval=0.05,
                 what="the note on b")
        for n in ("a", "b"):
            assert cell.peers(n) == sessions[n]  # the same session (no move, no redial)
            assert sessions[n][0]["path"] == want
            paths = [p for p, _ in cell.history(n)]
            assert paths[0] == "relay", paths  # relayed first
            if want == "webrtc":  # then moved for good (the core's two race fixes)
                assert set(paths[paths.index("webrtc"):]) == {"webrtc"}, paths
            else:  # the failed attempt left the relayed session alone
                assert set(paths) == {"relay"}, paths
        assert cell.events("b").count("after") == 1
        wire = cell.wire()
        assert note.encode() not in wire
        assert STUN_COOKIE in wire  # the nodes' STUN probes and ICE gathering
        assert b"GET /v1/splice" in wire  # the relayed session's splice
        assert len(wire) > 10_000
    finally:
        cell.close()


def test_the_move_to_webrtc_loses_and_repeats_nothing_under_a_writer(natlab, tmp_path):
    """The writer runs before the two devices pair (a note every 100 ms), so the relayed
    session that pairing brings up, and the move to webrtc right after, both happen
    mid-writing: no note lost or repeated across the move."""
    cell = Cell(natlab("port-restricted", "port-restricted"), tmp_path)
    try:
        writer = cell.program("a", "ticker", "w", "0.1")
        wait_for(lambda: len(writer.lines) >= 3, timeout=30, interval=0.05,
                 what="the writer")
        cell.pair("b", "a", "uri")
        wait_for(lambda: cell.path("a") == cell.path("b") == "webrtc", timeout=40,
                 interval=0.05, what="the move to webrtc")
        moved = time.time()
        wait_for(lambda: len([w for w, t in writer.lines if t > moved + 1]) >= 3, timeout=30,
                 interval=0.05, what="notes written after the move")
        writer.stop()
        [peer] = cell.notes("a", "peers")
        assert (peer["last_move"]["from"], peer["last_move"]["to"]) == ("relay", "webrtc")
        stamps = [float(words[1]) for words, _ in writer.lines if len(words) == 2]
        relayed_since = min(since for path, since in cell.history("a") if path == "relay")
        during = [t for t in stamps if relayed_since < t < peer["last_move"]["at"]]
        assert during, "no note written while the session was relayed"
        assert peer["last_move"]["at"] < max(stamps)  # it moved mid-writing
        written = [words[0] for words, _ in writer.lines if words]
        wait_for(lambda: set(written) <= set(cell.events("b")), timeout=30, interval=0.05,
                 what="every note on b")
        seen = cell.events("b")
        assert len(seen) == len(set(seen))  # none twice, and (waited above) none lost
        in_flight = f"w{len(written)}"  # put when the writer stopped, before it printed
        assert set(seen) <= {*written, in_flight}
    finally:
        cell.close()
