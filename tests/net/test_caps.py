"""Caps on unauthenticated connections: the core, and a real listener under a flood."""

from __future__ import annotations

import asyncio
import contextlib

from p2pgate.net.admission import ConnectionCaps, admission_hello, source_of
from p2pgate.net.peers import Listener, dial

from .conftest import pair


def test_sources_are_addresses_and_ipv6_slash_64s():
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:ffff::9") == (
        "2001:db8:1:2::/64")
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("fe80::1%eth0") == "fe80::/64"
    assert source_of("memory") == "memory"


def test_a_newcomer_always_gets_in_and_the_heaviest_source_pays():
    caps: ConnectionCaps[str] = ConnectionCaps(total=6, per_source=3)
    assert [caps.enter("evil", f"e{i}") for i in range(3)] == [None, None, None]
    assert caps.enter("evil", "e3") == "e0"  # its own cap: its oldest goes
    assert caps.count("evil") == 3
    assert caps.enter("other", "o0") is None
    assert caps.enter("more", "m0") is None
    assert caps.enter("more", "m1") is None
    assert len(caps) == 6
    assert caps.enter("joiner", "j0") == "e1"  # full: the oldest of the heaviest source
    assert "j0" in caps
    assert caps.enter("more", "m2") == "e2"  # evil still holds the most (2 vs 2: older)
    caps.leave("j0")
    caps.leave("j0")  # leaving twice is harmless
    assert "j0" not in caps
    assert len(caps) == 5


async def _held_open(port: int, source: str, count: int, writers: list[asyncio.StreamWriter]
                     ) -> list[asyncio.StreamReader]:
    readers = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(source, 0))
        writer.write(admission_hello()[0])  # then silence instead of the tag
        readers.append(reader)
        writers.append(writer)
    return readers


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(0.5):
            while await reader.read(100):
                pass  # the challenge
            return True
    return False


async def test_one_source_holds_at_most_its_cap_and_a_trusted_peer_still_gets_in(devices):
    a, b = await devices("phone"), await devices("desk")
    await pair(a, b)
    sessions: asyncio.Queue = asyncio.Queue()
    listener = Listener(b.trust, b.hello, sessions.put)
    await listener.start("127.0.0.1", 0)
    writers: list[asyncio.StreamWriter] = []
    try:
        readers = await _held_open(listener.port, "127.0.4.1", 40, writers)
        await asyncio.sleep(0.5)
        closed = await asyncio.gather(*(_closed_by_peer(r) for r in readers))
        assert closed.count(False) == listener.caps.per_source  # the newest 16 stay
        assert closed[-listener.caps.per_source:] == [False] * listener.caps.per_source
        session = await dial(a.trust, a.hello(), b.identity.device_id, "127.0.0.1",
                             listener.port)
        other = await asyncio.wait_for(sessions.get(), 10)
        assert len(listener.caps) == listener.caps.per_source  # the session left the caps
        await session.close()
        await other.wait_closed()
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await listener.stop()


async def test_a_burst_pushes_out_connections_before_they_start_and_leaks_no_descriptor(
        devices):
    b = await devices("desk")
    listener = Listener(b.trust, b.hello, lambda s: asyncio.sleep(0),
                        caps=ConnectionCaps(total=4, per_source=2))
    await listener.start("127.0.0.1", 0)
    writers: list[asyncio.StreamWriter] = []
    try:
        readers = await asyncio.gather(*(_held_open(listener.port, "127.0.4.2", 1, writers)
                                         for _ in range(60)))
        await asyncio.sleep(0.5)
        closed = await asyncio.gather(*(_closed_by_peer(r) for [r] in readers))
        assert closed.count(False) == 2
        assert len(listener.caps) == 2
        assert len(listener._handlers) == 2  # the pushed-out tasks ended, sockets closed
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await listener.stop()
