"""Hostile and broken input at the listener: only our errors, and it keeps serving."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pgate.identity.deviceid import DeviceID
from p2pgate.net.admission import (
    ADMIT_MAGIC,
    PAIR_MAGIC,
    AdmissionListener,
    Admitted,
    Challenge,
    NeedMore,
    Pairing,
    Refused,
)
from p2pgate.net.peers import DialFailed, Listener, dial
from p2pgate.stream import FailingStream, SlowStream, TcpStream

from .conftest import pair

OUTCOMES = (NeedMore, Challenge, Admitted, Pairing, Refused)


@settings(max_examples=500)
@given(st.lists(st.one_of(st.binary(max_size=64), st.sampled_from(
    [ADMIT_MAGIC, PAIR_MAGIC, ADMIT_MAGIC + b"\x01", b"P2PG-"])), max_size=6))
def test_admission_core_takes_any_bytes(chunks):
    listener = AdmissionListener([(DeviceID(b"\x01" * 32), b"k" * 32)])
    for chunk in chunks:
        outcome = listener.receive(chunk)
        assert isinstance(outcome, OUTCOMES)
        assert not isinstance(outcome, Admitted)  # nobody without the key gets in


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4))
async def test_fuzzed_connections_never_hurt_the_listener(devices, payloads):
    a, b = await devices("phone"), await devices("desk")
    await pair(a, b)
    sessions: asyncio.Queue = asyncio.Queue()
    listener = Listener(b.trust, b.hello, sessions.put)
    await listener.start("127.0.0.1", 0)
    try:
        for payload in payloads:
            for prefix in (b"", ADMIT_MAGIC + b"\x01" + bytes(16)):
                reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
                writer.write(prefix + payload)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
        session = await dial(a.trust, a.hello(), b.identity.device_id, "127.0.0.1",
                             listener.port)
        other = await asyncio.wait_for(sessions.get(), 5)
        await session.send(b"ok")
        assert await other.receive() == b"ok"
        await session.close()
        await other.wait_closed()
    finally:
        await listener.stop()


async def test_a_connection_that_breaks_mid_handshake_is_a_clean_dial_failure(devices):
    a, b = await devices("phone"), await devices("desk")
    await pair(a, b)
    listener = Listener(b.trust, b.hello, lambda s: asyncio.sleep(0))
    await listener.start("127.0.0.1", 0)
    try:
        for broken_after in (5, 40, 300):
            stream = FailingStream(await TcpStream.connect("127.0.0.1", listener.port),
                                   broken_after)
            with pytest.raises(DialFailed):
                await dial(a.trust, a.hello(), b.identity.device_id, "127.0.0.1",
                           listener.port, stream=stream)
    finally:
        await listener.stop()


async def test_a_slow_link_still_makes_a_session(devices):
    a, b = await devices("phone"), await devices("desk")
    await pair(a, b)
    sessions: asyncio.Queue = asyncio.Queue()
    listener = Listener(b.trust, b.hello, sessions.put)
    await listener.start("127.0.0.1", 0)
    try:
        slow = SlowStream(await TcpStream.connect("127.0.0.1", listener.port), 0.02)
        session = await dial(a.trust, a.hello(), b.identity.device_id, "127.0.0.1",
                             listener.port, stream=slow)
        other = await asyncio.wait_for(sessions.get(), 5)
        await other.send(b"over a slow link")
        assert await session.receive() == b"over a slow link"
        await session.close()
        await other.wait_closed()
    finally:
        await listener.stop()
