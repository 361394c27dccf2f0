"""A stranger on the LAN while a pairing code is open (real nodes in namespaces).

The advertisement must not let anyone search the 6.5 M codes offline, an offer opened
right after start-up must be found, and wrong words must reach the inviter, say
"wrong code", count, and burn the code at the third (one address guesses 3 times,
then once per 100 s).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys

import pytest

from p2pgate.pairing.codes import WORDS
from tests.lab import make_node_dir, node_argv
from tests.netns.nodes import Devices

pytestmark = pytest.mark.netns


def _derivations(code: bytes, nonces: list[bytes]) -> list[str]:
    """Hex of what a careless advertisement could carry: the issue's HMAC of the code
    under each advertised nonce, and plain hashes of the code."""
    key = hashlib.sha256(b"p2pgate-pairing-mdns" + code).digest()
    return [hashlib.sha256(code).hexdigest()[:16], hashlib.blake2b(code).hexdigest()[:16],
            *(hmac.digest(key, b"p2pgate-mdns" + n, "sha256")[:8].hex() for n in nonces)]


def offline_search(txt_values: list[str], nonces: list[bytes], nameplate: int) -> list[str]:
    """Every code of this nameplate whose derivation shows up in any TXT value."""
    windows = {v[i:i + 16] for v in txt_values for i in range(max(1, len(v) - 15))}
    hits = []
    for w1 in WORDS:
        for w2 in WORDS:
            code = f"{nameplate}-{w1}-{w2}"
            if not windows.isdisjoint(_derivations(code.encode(), nonces)):
                hits.append(code)
    return hits


def test_the_offline_search_finds_a_code_advertised_the_old_way():
    code, nonce = "33-tulip-cloud", bytes(range(8))  # what main advertised before the fix
    key = hashlib.sha256(b"p2pgate-pairing-mdns" + code.encode()).digest()
    tag = hmac.digest(key, b"p2pgate-mdns" + nonce, "sha256")[:8].hex()
    assert offline_search(["1", nonce.hex(), "0011223344556677", tag], [nonce], 33) == [code]


def test_stranger_learns_no_code_an_early_offer_is_found_wrong_words_count(lab, tmp_path):
    hosts = {n: lab.host(n) for n in ("desk", "phone", "evil")}
    nodes = {n: make_node_dir(tmp_path, n) for n in hosts}
    for n, host in hosts.items():
        host.spawn(*node_argv(nodes[n], f"{host.ip}:7771", mdns=True), log=tmp_path / f"{n}.log")

    devices = Devices(hosts, nodes, wait=False)
    api = devices.call

    def join(n, code):
        return devices.cli(n, "join", code, "--json")

    def failures(nameplate):
        return api("desk", "GET", f"/api/v1/pairing/{nameplate}")["body"]["failures"]

    # the offer is opened the moment the desktop's API answers (LAN discovery not up yet)
    devices.wait_started("desk")
    offer = api("desk", "POST", "/api/v1/pairing", "{}")["body"]
    nameplate = int(offer["code"].split("-")[0])
    for n in ("phone", "evil"):
        devices.wait_started(n)

    # a stranger captures every TXT record and searches the codes of that nameplate
    seen = json.loads(hosts["evil"].run(sys.executable, "-m", "tests.programs.mdns_browse",
                                        hosts["evil"].ip, "4", timeout=30).stdout)
    showing = [s for s in seen if s["txt"].get("p")]
    assert [s["txt"]["p"] for s in showing] == [str(nameplate)]  # found by nameplate ...
    values = [v for s in seen for v in (*s["txt"].values(), s["name"], s["server"])]
    nonces = [bytes.fromhex(s["txt"]["n"]) for s in seen]
    assert offline_search(values, nonces, nameplate) == []  # ... and nothing else about the code
    words = offer["code"].split("-", 1)[1]
    assert not any(w in json.dumps(seen) for w in words.split("-"))

    # wrong words reach the inviter, say so, and count there
    wrong = f"{nameplate}-" + ("fig-fox" if words == "acid-acorn" else "acid-acorn")
    refused = join("phone", wrong)
    assert refused.returncode != 0
    assert "wrong code" in refused.stderr
    assert failures(nameplate) == 1

    # a stranger racing the phone with wrong words cannot pair; the phone can
    racer = subprocess.Popen(["ip", "netns", "exec", hosts["evil"].ns, sys.executable, "-m",
                              "p2pgate", "--data-dir", str(nodes["evil"].data_dir.root), "join",
                              wrong], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    joined = join("phone", offer["code"])
    if joined.returncode != 0 and "another device is pairing" in joined.stderr:
        joined = join("phone", offer["code"])  # the racer held the offer for a moment
    assert joined.returncode == 0, joined.stderr
    racer.communicate(timeout=60)
    assert racer.returncode != 0
    listed = api("desk", "GET", "/api/v1/devices")["body"]["items"]
    assert [d["name"] for d in listed] == ["phone"]
    assert api("evil", "GET", "/api/v1/devices")["body"]["items"] == []

    # three wrong tries burn a code: the right words are refused afterwards
    offer = api("desk", "POST", "/api/v1/pairing", "{}")["body"]
    nameplate, words = int(offer["code"].split("-")[0]), offer["code"].split("-", 1)[1]
    wrong = f"{nameplate}-" + ("fig-fox" if words == "acid-acorn" else "acid-acorn")
    tries = [join("evil", wrong).stderr for _ in range(3)]
    assert all("wrong code" in t for t in tries), tries
    # one address may guess 3 times, then once per 100 s: if the racer's guess counted,
    # the third try is refused before SPAKE2 and costs the offer nothing
    limited = [t for t in tries if "too many wrong codes from this address" in t]
    assert failures(nameplate) == 3 - len(limited)
    if limited:  # a third wrong code from another address burns it
        assert "wrong code" in join("phone", wrong).stderr
    assert failures(nameplate) == 3
    burned = join("evil", offer["code"])
    assert burned.returncode != 0
    assert "burned" in burned.stderr
    assert api("evil", "GET", "/api/v1/devices")["body"]["items"] == []
