"""The node's relay client against a hostile relay (issue 17, items 5 and 6).

The relay is an aiohttp server that welcomes any login and then sends what the test
says: malformed control messages, thousands of unsolicited `ready`s, splice frames
larger than any session frame. The client is the real `RelayClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgate.connect.dialing import Dialer
from p2pgate.errors import RemoteProtocolError
from p2pgate.identity import Identity
from p2pgate.relay.client import SPLICE_MAX_MESSAGE, RelayClient
from p2pgate.relay.wire import decode_device_message, decode_login, decode_relay_message
from p2pgate.supervisor import Supervisor
from tests.relay.attackers import hostile_relay, open_fds
from tests.relay.test_relay import _spliced, device, relay

MALFORMED = [
    "[1,2,3]", "42", "not json", '"text"', '{"t": "invite"}', '{"t": "invite", "sid": [1]}',
    '{"t": "invite", "sid": "s", "from": "not a device"}',
    '{"t": "ready", "req": 1e400, "sid": "s", "key": "k", "peer": "x"}',
    '{"t": "unavailable", "req": Infinity}', '{"t": "unavailable", "req": NaN}',
    '{"t": "ready", "req": 1' + "0" * 400 + "}", '{"t": "ready", "sid": "s"}',
    '{"t": "signal", "from": 12}', "[" * 5000 + "]" * 5000, '{"t": "ready", "req": true}',
]


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.exc_info or r.levelno >= logging.ERROR]


async def test_malformed_relay_messages_end_one_control_connection_never_the_client(caplog):
    """Each malformed message ends its control connection with one log line; the client
    logs in again and still answers a real invitation afterwards. Failed before: a
    number like 1e400 or deep nesting escaped as OverflowError/RecursionError
    ("unexpected failure" with a traceback)."""
    caplog.set_level(logging.INFO)
    peer = Identity.generate()
    answers: asyncio.Queue = asyncio.Queue()

    async def script(ws, hostile):
        if hostile.logins <= len(MALFORMED):
            await ws.send_str(MALFORMED[hostile.logins - 1])
            await ws.receive(timeout=5)  # the client hangs up
            return
        await ws.send_json({"t": "invite", "sid": "real", "from": str(peer.device_id)})
        answers.put_nowait(await ws.receive_json(timeout=5))
        await ws.receive()

    async with hostile_relay(script) as hostile, \
            device(hostile.url, trusts=[peer]) as (client, _, _):
        answer = await asyncio.wait_for(answers.get(), 20)
        assert answer == {"t": "accept", "sid": "real"}
        assert hostile.logins == len(MALFORMED) + 1
        assert client.connected
    assert _no_tracebacks(caplog) == []
    bad = [r for r in caplog.records if "sent a bad message" in r.getMessage()]
    assert len(bad) == len(MALFORMED)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                    | st.text(max_size=70),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=10)
KINDS = st.sampled_from(["ready", "unavailable", "invite", "signal", "connect", "accept",
                         "refuse", "auth", "x"])
FIELDS = st.dictionaries(st.sampled_from(["req", "sid", "key", "peer", "from", "to", "data",
                                          "cert", "time", "sig", "token"]), JSON)


@settings(max_examples=100, deadline=None)
@given(kind=KINDS, fields=FIELDS, other=JSON)
def test_any_json_decodes_or_raises_our_protocol_error(kind, fields, other):
    import json
    for value in ({"t": kind, **fields}, other):
        text = json.dumps(value)
        for decode in (decode_relay_message, decode_device_message):
            with contextlib.suppress(RemoteProtocolError):
                decode(text)
        if isinstance(value, dict):
            with contextlib.suppress(RemoteProtocolError):
                decode_login(value)


async def test_a_dead_visitor_client_is_not_kept_by_the_dialer():
    """Failed before: the dialer handed out the cached visitor whose task had ended."""
    async def script(ws, hostile):
        await ws.receive()

    async def refuse(_):
        return False

    async def close(stream):
        await stream.close()

    supervisor = Supervisor()
    made: list[RelayClient] = []

    def visit(url):
        made.append(RelayClient(url, Identity.generate(), refuse, close))
        return made[-1]

    dialer = Dialer(None, None, None, [], visit, supervisor)  # type: ignore[arg-type]
    try:
        async with hostile_relay(script) as hostile:
            first = await dialer._visitor(hostile.url)
            assert first is not None and first.connected
            [task] = dialer.visitor_tasks()
            task.cancel()  # however it ended, it is gone
            with contextlib.suppress(asyncio.CancelledError):
                await task
            second = await dialer._visitor(hostile.url)
            assert second is not first and second is not None and second.connected
            assert len(dialer.visitor_tasks()) == 1
            await supervisor.stop()  # before the relay stops: it waits on our connection
    finally:
        await supervisor.stop()


async def test_unsolicited_ready_messages_open_no_splice():
    """3,000 `ready`s for nothing the node asked for or accepted: no splice, no fds.
    Failed before: each one opened a splice (fds grew by thousands)."""
    peer, stranger = Identity.generate(), Identity.generate()
    answered = asyncio.Event()

    async def script(ws, hostile):
        for n in range(3000):
            ready = {"t": "ready", "sid": f"s{n}", "key": "k" * 22,
                     "peer": str((stranger if n % 3 else peer).device_id)}
            if n % 2:
                ready["req"] = n
            await ws.send_json(ready)
        await ws.send_json({"t": "invite", "sid": "real", "from": str(peer.device_id)})
        assert (await ws.receive_json(timeout=10))["t"] == "accept"
        answered.set()
        await ws.send_json({"t": "ready", "sid": "real", "key": "k" * 22,
                            "peer": str(peer.device_id)})  # the one it accepted
        await ws.receive()

    async with hostile_relay(script) as hostile, \
            device(hostile.url, trusts=[peer]) as (client, _, sessions):
        await asyncio.wait_for(client.wait_connected(), 10)
        before = await open_fds()
        await asyncio.wait_for(answered.wait(), 60)
        stream = await asyncio.wait_for(sessions.get(), 10)  # the accepted one is spliced
        await asyncio.sleep(0.5)  # time for any other splice to open
        after = await open_fds()
        assert hostile.splices == 1
        assert after - before < 30, (before, after)
        assert client.unsolicited == 3000
        await stream.close()


async def test_a_splice_frame_larger_than_a_session_frame_ends_the_splice():
    """Failed before: max_msg_size=0 took frames of any size into memory."""
    async def script(ws, hostile):
        ask = await ws.receive_json(timeout=5)
        await ws.send_json({"t": "ready", "req": ask["req"], "sid": "s", "key": "k",
                            "peer": ask["to"]})
        await ws.receive()

    async def splice(ws):
        await ws.send_bytes(b"x" * (1 << 20))  # a large but possible frame passes
        await ws.send_bytes(b"y" * (SPLICE_MAX_MESSAGE + 1))
        await ws.receive(timeout=10)

    peer = Identity.generate()
    async with hostile_relay(script, splice) as hostile, device(hostile.url) as (client, _, _):
        await asyncio.wait_for(client.wait_connected(), 10)
        stream = await client.connect(peer.device_id)
        got = bytearray()
        while chunk := await asyncio.wait_for(stream.read(), 10):
            got += chunk
        await stream.close()
        assert bytes(got) == b"x" * (1 << 20)


async def test_a_write_larger_than_the_relay_frame_limit_crosses_the_splice():
    """A 1 MiB write goes out in frames the relay accepts (its max_frame is 256 KiB).
    Failed before: one 1 MiB frame, which the relay refused, ending the splice."""
    async with relay() as r:
        stack, a, b = await _spliced(r, Identity.generate(), Identity.generate())
        async with stack:
            payload = bytes(range(256)) * 4096
            await a.write(payload)
            got = bytearray()
            while len(got) < len(payload):
                chunk = await asyncio.wait_for(b.read(), 10)
                assert chunk
                got += chunk
            assert bytes(got) == payload
