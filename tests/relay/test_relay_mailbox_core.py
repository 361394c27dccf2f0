"""The pairing mailboxes' core (`rendezvous.Mailboxes`), with time passed in."""

from __future__ import annotations

from p2pgate.relay.rendezvous import Expired, Mailboxes, Opened, Refused, source_of

BOX = "a" * 64


def boxes(**kw) -> Mailboxes[str]:
    settings = {"wait": 3600.0, "max_boxes": 1000, "max_boxes_per_source": 8,
                "join_rate": 1 / 30, "join_burst": 6, "tries_per_box": 2, **kw}
    return Mailboxes(**settings)


def test_two_inviters_at_once_get_different_nameplates_from_1_to_99_first():
    mb = boxes(max_boxes_per_source=200)
    shown = [mb.open(f"inviter {i}", "10.0.0.1", 0.0, allocate=True) for i in range(120)]
    nameplates = [o.nameplate for o in shown]
    assert len(set(nameplates)) == 120  # never two open boxes on one nameplate
    assert sorted(nameplates[:99]) == list(range(1, 100))  # short ones while any is free
    assert all(100 <= n <= 999 for n in nameplates[99:])


def test_allocation_avoids_what_the_inviter_sees_on_its_lan_and_claims_must_be_free():
    mb = boxes()
    assert mb.open("a", "10.0.0.1", 0.0, allocate=True, avoid=set(range(1, 99))) == Opened(99)
    assert mb.open("b", "10.0.0.2", 0.0, nameplate=99) == Refused("nameplate_taken")
    assert mb.open("b", "10.0.0.2", 0.0, nameplate=42, name=BOX) == Opened(42)
    assert mb.open("c", "10.0.0.3", 0.0, name=BOX) == Refused("box_taken")
    assert mb.open("c", "10.0.0.3", 0.0) == Refused("malformed")  # neither nameplate nor box


def test_a_box_dies_with_its_connection_and_frees_its_slot_at_once():
    mb = boxes(max_boxes_per_source=1)
    assert mb.open("inviter", "10.0.0.1", 0.0, nameplate=7) == Opened(7)
    assert mb.open("second", "10.0.0.1", 0.0, nameplate=8) == Refused("ip_mailboxes")
    assert mb.join("10.0.0.9", 1.0, nameplate=7) == "inviter"
    mb.close("inviter")
    assert mb.join("10.0.0.9", 2.0, nameplate=7) == Refused("absent")  # gone, never matched
    assert mb.boxes_of("10.0.0.1") == 0
    assert mb.open("second", "10.0.0.1", 2.0, nameplate=7) == Opened(7)  # slot and nameplate


def test_a_box_lives_at_most_its_ttl_and_the_relay_s_wait():
    mb = boxes(wait=600.0)
    mb.open("short", "10.0.0.1", 100.0, nameplate=1, ttl=300.0)
    mb.open("long", "10.0.0.2", 100.0, nameplate=2, ttl=99999.0)
    assert mb.get_timer() == 400.0
    assert mb.handle_timer(399.0) == []
    assert mb.handle_timer(400.0) == [Expired("1", "short")]
    assert mb.handle_timer(700.0) == [Expired("2", "long")]
    assert len(mb) == 0


def test_squatters_are_capped_per_ipv4_address_and_per_ipv6_slash_64():
    mb = boxes(max_boxes_per_source=8)
    for i in range(8):  # one /64, many addresses
        assert isinstance(mb.open(f"s{i}", f"2001:db8:1:2::{i + 1}", 0.0, allocate=True), Opened)
    assert mb.open("s8", "2001:db8:1:2:ffff::9", 0.0, allocate=True) == Refused("ip_mailboxes")
    assert isinstance(mb.open("other", "2001:db8:1:3::1", 0.0, allocate=True), Opened)
    assert source_of("::ffff:10.1.2.3") == "10.1.2.3" == source_of("10.1.2.3")
    assert mb.boxes_of("2001:db8:1:2::abcd") == 8
    full = boxes(max_boxes=2)
    full.open("a", "10.0.0.1", 0.0, allocate=True)
    full.open("b", "10.0.0.2", 0.0, allocate=True)
    assert full.open("c", "10.0.0.3", 0.0, allocate=True) == Refused("mailboxes_full")


def test_a_scan_of_the_nameplates_is_slow_and_one_source_cannot_burn_a_code():
    mb = boxes()
    mb.open("inviter", "10.0.0.1", 0.0, nameplate=50)
    answers = [mb.join("192.0.2.7", 0.0, nameplate=n) for n in range(1, 100)]
    assert answers[:6] == [Refused("absent")] * 6  # a burst of 6 ...
    assert set(answers[6:]) == {Refused("join_rate")}  # ... then one every 30 s
    assert mb.join("192.0.2.7", 29.0, nameplate=50) == Refused("join_rate")
    assert mb.join("192.0.2.7", 30.0, nameplate=50) == "inviter"
    assert mb.join("192.0.2.7", 60.0, nameplate=50) == "inviter"
    # 2 tries per source and box: fewer than the 3 wrong codes that burn an offer
    assert mb.join("192.0.2.7", 90.0, nameplate=50) == Refused("box_tries")
    assert mb.join("192.0.2.8", 90.0, nameplate=50) == "inviter"  # another source may
