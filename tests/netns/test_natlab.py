"""The NAT lab's routers behave as the NAT types they stand for, seen through the relay's
STUN port (real relay processes in the lab's internet namespace, default settings)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.natlab import NAT_TYPES, RELAY_IP, SECOND_IP, STUN_PORT, THIRD_IP, send_datagram

pytestmark = pytest.mark.netns

RELAY = f"{RELAY_IP}:{STUN_PORT}"
SECOND = f"{SECOND_IP}:{STUN_PORT}"


@pytest.mark.parametrize("nat", NAT_TYPES)
def test_stun_sees_each_nat_type_as_it_is(natlab, nat, tmp_path):
    lab = natlab(nat)
    lab.start_relay(tmp_path / "relay")  # default settings: all addresses, STUN on 3478
    host = lab.a.host
    wan = lab.expected_address(lab.a)

    # the relay answers from the address asked (not the routing table's choice), or the
    # NAT would drop its answer at SECOND
    first, again, second = host.probe("mappings", RELAY, RELAY, SECOND)
    local = first["local"]
    assert all(r["mapped"] for r in (first, again, second)), (first, again, second)
    assert [r["mapped"][0] for r in (first, again, second)] == [wan] * 3
    assert again["mapped"] == first["mapped"]  # one mapping per destination, kept
    if nat == "symmetric":
        assert second["mapped"][1] != first["mapped"][1]  # a new port per destination
    else:
        assert [r["mapped"][1] for r in (first, again, second)] == [local] * 3  # preserved

    # a third party on the internet sends to the mapping, unasked
    probe = host.spawn(sys.executable, "-m", "tests.natlab", "probe", "inbound", RELAY, "1.5")
    opened = json.loads(probe.stdout.readline())
    assert opened["mapped"][0] == wan
    send_datagram(lab.internet, (THIRD_IP, 4000), tuple(opened["mapped"]), "unsolicited")
    result = json.loads(probe.stdout.readline())
    assert probe.wait(10) == 0
    probe.stdout.close()
    if nat in ("public", "full-cone"):
        assert result == {"received": "unsolicited", "from": [THIRD_IP, 4000]}
    else:
        assert result == {"received": None}


def test_a_stun_flood_from_one_address_gets_bounded_answers(natlab, tmp_path):
    lab = natlab("port-restricted")
    lab.start_relay(tmp_path / "relay", "--listen", f"{RELAY_IP}:8443")
    (flood,) = lab.a.host.probe("flood", RELAY, "300", "1.0")
    # the relay's defaults: bursts of 20 per source IP, then 10 per second
    assert 20 <= flood["answers"] <= 20 + 10 * flood["seconds"] + 2, flood
    (after,) = lab.a.host.probe("mappings", RELAY)  # the bucket refills: answered again
    assert after["mapped"][0] == lab.a.wan_ip
