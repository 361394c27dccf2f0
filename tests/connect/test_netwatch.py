"""The network watcher: local addresses read from /proc's formats, a change reported once."""

from __future__ import annotations

from p2pgate.connect.netwatch import NetworkWatcher, _ipv4_locals, _ipv6_locals, local_addresses

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.0.1.0/24 2 0 2
        |-- 10.0.1.0
           /24 link UNICAST
        |-- 10.0.1.2
           /32 host LOCAL
        |-- 10.0.1.99
           /32 host LOCAL
        |-- 10.0.1.255
           /32 link BROADCAST
     |-- 127.0.0.1
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.0.1.2
        /32 host LOCAL
"""
IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
"""


def test_every_local_ipv4_address_is_read_secondary_ones_too():
    assert _ipv4_locals(FIB_TRIE) == {"10.0.1.2", "10.0.1.99", "127.0.0.1"}


def test_ipv6_addresses_are_read_with_their_interface():
    assert _ipv6_locals(IF_INET6) == {"::1%lo", "fd00::2%eth0", "fe80::fc:ff:fe00:1%eth0"}


def test_this_machines_addresses_leave_loopback_out(allow_blocking):
    assert not any(a.startswith(("127.", "::1%")) for a in local_addresses())


async def test_a_change_is_reported_once_with_what_was_added_and_removed():
    reads = iter([frozenset({"10.0.1.2"}), frozenset({"10.0.1.2"}),
                  frozenset({"10.0.1.99"}), frozenset({"10.0.1.99"})])
    changes = []
    watcher = NetworkWatcher(lambda added, removed: changes.append((added, removed)),
                             read=lambda: next(reads))
    assert [await watcher.check() for _ in range(4)] == [False, False, True, False]
    assert changes == [(frozenset({"10.0.1.99"}), frozenset({"10.0.1.2"}))]


async def test_a_failed_read_is_no_change():
    def broken():
        raise OSError("no /proc")

    changes = []
    watcher = NetworkWatcher(lambda *change: changes.append(change), read=broken)
    assert not await watcher.check()
    assert changes == [] and watcher.addresses is None
