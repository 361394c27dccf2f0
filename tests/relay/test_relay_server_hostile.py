"""The relay server against hostile devices (issue 17, items 2, 3 and 7).

A real relay on loopback; the attackers are raw logged-in control WebSockets
(`attackers.logged_in`) sending what no RelayClient would, next to real clients.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import statistics
import subprocess
import sys
import time

import aiohttp
import pytest

from p2pgate.identity import Identity
from p2pgate.relay.broker import Broker
from p2pgate.relay.client import RelayUnavailable
from tests.relay.attackers import logged_in
from tests.relay.test_relay import device, relay

SIGNAL_DATA = "x" * 8000  # 8 KB of signalling, the most one message may carry


def _signal(to) -> str:
    return json.dumps({"t": "signal", "to": str(to), "data": SIGNAL_DATA})


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.exc_info or r.levelno >= logging.ERROR]


async def _collect(ws, into: list) -> None:
    """Read `ws` until it closes, keeping every JSON message."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            into.append(json.loads(msg.data))


# -- item 2: signalling ---------------------------------------------------------------


async def test_a_signal_flood_is_held_to_its_limits_and_the_target_s_peer_still_signals():
    """Failed before: all 1,000 signals (8 MB) reached the target."""
    target_id, peer_id = Identity.generate(), Identity.generate()
    received: list = []
    async with relay() as r, logged_in(r.url, target_id) as target, \
            logged_in(r.url) as flooder, logged_in(r.url, peer_id) as peer:
        reader = asyncio.ensure_future(_collect(target, received))
        try:
            started = time.monotonic()
            for _ in range(1000):
                await flooder.send_str(_signal(target_id.device_id))
            await peer.send_json({"t": "signal", "to": str(target_id.device_id),
                                  "data": {"sdp": "offer"}})
            for _ in range(1000):  # until the relay has handled all 1,001
                seen = sum(r.server.metrics.value("signals_total", outcome=outcome)
                           for outcome in ("forwarded", "dropped"))
                if seen == 1001 and any(m.get("data") == {"sdp": "offer"} for m in received):
                    break
                await asyncio.sleep(0.01)
            elapsed = time.monotonic() - started
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        flood = [m for m in received if m.get("data") == SIGNAL_DATA]
        assert any(m.get("data") == {"sdp": "offer"} for m in received)
        assert len(flood) <= 40 + 10 * elapsed + 5, (len(flood), elapsed)  # burst + rate
        assert r.server.metrics.value("signals_total", outcome="dropped") >= 900


async def _signal_round(url: str, target, count: int) -> float:
    """Seconds from a new device's first of `count` 8 KB signals to `target` until the
    relay answers a ping sent after them (it answers in order)."""
    async with logged_in(url, autoping=False) as ws:
        started = time.perf_counter()
        for _ in range(count):
            await ws.send_str(_signal(target))
        await ws.ping()
        while (await ws.receive(timeout=10)).type != aiohttp.WSMsgType.PONG:
            pass
        return time.perf_counter() - started


@pytest.fixture
def relay_process(tmp_path):
    """`p2pgate relay` with its defaults (on loopback), in its own process."""
    cfg = tmp_path / "relay.toml"
    cfg.write_text('listen = "127.0.0.1:0"\n')
    proc = subprocess.Popen([sys.executable, "-m", "p2pgate", "relay", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, line
        yield f"ws://127.0.0.1:{int(line.split('127.0.0.1:')[1].split()[0])}"
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


async def _drain(ws) -> None:
    async for _ in ws:
        pass


async def test_signal_timing_does_not_tell_online_from_absent_devices(relay_process):
    """A relay process; 300 signals then a ping, 9 rounds each, interleaved, to a device
    that is online and to absent IDs: the distributions overlap and their medians are
    close. Failed before: forwarding took longer to an online device (measured here
    2-4x, the ranges disjoint)."""
    url = relay_process
    online_id = Identity.generate()
    times: dict[str, list[float]] = {"online": [], "absent": []}
    async with logged_in(url, online_id) as online:
        reader = asyncio.ensure_future(_drain(online))
        try:
            for n in range(9):
                for kind in ("online", "absent") if n % 2 else ("absent", "online"):
                    target = (online_id if kind == "online" else Identity.generate()).device_id
                    times[kind].append(await _signal_round(url, target, 300))
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    on, off = sorted(times["online"]), sorted(times["absent"])
    summary = {k: [round(t * 1000, 1) for t in sorted(v)] for k, v in times.items()}
    print("signal rounds (ms):", summary)
    assert on[0] <= off[-1] and off[0] <= on[-1], summary  # the ranges overlap
    # before the fix: 2-4x. The bound leaves room for a loaded CI machine, where this
    # process also drains the online device's deliveries (seen: 1.35x under load)
    assert statistics.median(on) < 1.6 * statistics.median(off), summary
    assert statistics.median(off) < 1.6 * statistics.median(on), summary


# -- item 3: invitations ----------------------------------------------------------------


async def test_a_stranger_flooding_invitations_does_not_block_the_target_s_peer():
    """A stranger sends 300 connects/s to the target; its real peer still gets a
    session 5/5. Failed before: the target's one invitation bucket was the
    stranger's (the peer got `unavailable`)."""
    a_id, b_id = Identity.generate(), Identity.generate()
    async with relay() as r, device(r.url, a_id, trusts=[b_id]) as (a, _, _), \
            device(r.url, b_id, trusts=[a_id]) as (b, _, b_sessions), \
            logged_in(r.url) as stranger:
        await asyncio.wait_for(a.wait_connected(), 5)
        await asyncio.wait_for(b.wait_connected(), 5)
        answers: list = []

        async def flood():
            req = 0
            while True:
                for _ in range(30):
                    req += 1
                    await stranger.send_json({"t": "connect", "req": req,
                                              "to": str(b_id.device_id)})
                await asyncio.sleep(0.1)

        tasks = [asyncio.ensure_future(flood()),
                 asyncio.ensure_future(_collect(stranger, answers))]
        successes = 0
        try:
            await asyncio.sleep(0.5)
            for _ in range(5):
                try:
                    stream = await a.connect(b_id.device_id)
                except RelayUnavailable:
                    continue
                other = await asyncio.wait_for(b_sessions.get(), 5)
                await stream.close()
                await other.close()
                successes += 1
                await asyncio.sleep(0.5)  # within our own (requester, target) rate
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert successes == 5
        assert answers and all(m["t"] == "unavailable" for m in answers)


def test_invitations_are_limited_per_pair_and_per_requester():
    a, b, c = (Identity.generate().device_id for _ in range(3))
    targets = [Identity.generate().device_id for _ in range(40)]
    broker = Broker(unavailable_delay=1.0, invite_rate=1.0, max_sessions_per_device=99)
    for dev in (a, b, c, *targets):
        broker.attach(dev)
    assert [len(broker.request(a, b, n, now=0.0)) for n in range(4)] == [1, 1, 0, 0]
    assert len(broker.request(c, b, 5, now=0.0)) == 1  # b's other peers are not held up
    assert len(broker.request(a, b, 6, now=1.0)) == 1  # the pair's bucket refills
    sent = sum(len(broker.request(c, t, 100 + n, now=0.0)) for n, t in enumerate(targets))
    assert sent == 16 - 1  # c's own cap over all its targets (burst 16; one spent above)


# -- item 7: hostile logins, sessions nobody splices -----------------------------------


def _login_text(time_text: str, cert: str | None = None) -> str:
    cert = cert or base64.b64encode(Identity.generate().cert_der).decode()
    return f'{{"t": "auth", "cert": "{cert}", "time": {time_text}, "sig": "AAAA"}}'


BAD_LOGINS = [
    "[1, 2]", "42", '"auth"', "null", _login_text("1" + "0" * 400), _login_text("Infinity"),
    _login_text("-Infinity"), _login_text("NaN"), _login_text("1e400"), _login_text('"12"'),
    _login_text("[1]"), _login_text("true"), _login_text("1", cert='[1]" , "x": "'),
    '{"t": "auth", "cert": [1], "time": 1, "sig": "AAAA"}',
    '{"t": "auth", "cert": "AAAA", "time": 1, "sig": {"a": 1}, "token": 5}',
    "[" * 3000 + "]" * 3000,
]


async def test_hostile_logins_get_a_clear_refusal_and_no_traceback(caplog):
    """Failed before: 10**400 and Infinity raised OverflowError (a traceback per try,
    and no answer)."""
    caplog.set_level(logging.INFO)
    async with relay() as r, aiohttp.ClientSession() as s:
        for text in BAD_LOGINS:
            async with s.ws_connect(r.url + "/v1/control") as ws:
                await ws.receive_json(timeout=5)
                await ws.send_str(text)
                msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.TEXT, (text[:40], msg)
                assert json.loads(msg.data) == {"t": "error", "reason": "malformed"}
        assert r.server.metrics.value("auth_failures_total", reason="malformed") == len(
            BAD_LOGINS)
    assert _tracebacks(caplog) == []


async def test_sessions_accepted_but_never_spliced_do_not_hold_the_drain():
    """Four sessions accepted, never spliced: SIGTERM's drain ends at once. Failed
    before: it waited its full drain_timeout (30 s)."""
    b_id = Identity.generate()
    async with relay() as r, logged_in(r.url) as a, logged_in(r.url, b_id) as b:
        for req in range(4):
            await a.send_json({"t": "connect", "req": req, "to": str(b_id.device_id)})
            invite = await b.receive_json(timeout=5)
            await b.send_json({"t": "accept", "sid": invite["sid"]})
            assert (await a.receive_json(timeout=5))["t"] == "ready"
            assert (await b.receive_json(timeout=5))["t"] == "ready"
        assert r.server.broker.sessions == 4
        started = time.monotonic()
        async with asyncio.timeout(10):
            await r.server.drain()
        assert time.monotonic() - started < 2


def test_a_ready_session_nobody_splices_expires_and_frees_its_slots():
    a, b = Identity.generate().device_id, Identity.generate().device_id
    broker = Broker(unavailable_delay=1.0, invite_rate=100, max_sessions_per_device=1,
                    splice_wait=30.0)
    broker.attach(a)
    broker.attach(b)
    [invite] = broker.request(a, b, 1, now=0.0)
    sid = str(invite.message["sid"])
    ready = broker.answer(b, sid, True, now=0.5)
    assert broker.request(a, b, 2, now=1.0) == []  # over the session limit
    broker.handle_timer(2.0)
    assert broker.sessions == 1 and broker.get_timer() == 30.5
    assert broker.handle_timer(30.4) == [] and broker.sessions == 1
    broker.handle_timer(30.5)
    assert broker.sessions == 0 and broker.expired == 1
    assert len(broker.request(a, b, 3, now=31.0)) == 1  # its slots are free again
    key = str(ready[0].message["key"])
    assert broker.claim(sid, key) is None  # its keys are void

    [invite] = broker.request(b, a, 4, now=40.0)  # a claimed session does not expire
    sid = str(invite.message["sid"])
    ready = broker.answer(a, sid, True, now=40.0)
    assert broker.claim(sid, str(ready[0].message["key"])) == b
    broker.handle_timer(100.0)
    assert broker.sessions == 1
    assert broker.spliced == 0  # one side only: it does not hold a drain either


async def test_the_relay_counts_out_unspliced_sessions_when_their_deadline_passes():
    """The wiring: the server arms the broker's splice deadline and /health follows.
    (The 30 s default is the broker core's test above; here the deadline is 0.5 s so
    the test does not wait 30 s.) Failed before: /health counted them forever."""
    b_id = Identity.generate()
    async with relay() as r, logged_in(r.url) as a, logged_in(r.url, b_id) as b, \
            aiohttp.ClientSession() as s:
        r.server.broker.splice_wait = 0.5
        await a.send_json({"t": "connect", "req": 1, "to": str(b_id.device_id)})
        invite = await b.receive_json(timeout=5)
        await b.send_json({"t": "accept", "sid": invite["sid"]})
        ready = await a.receive_json(timeout=5)
        health = r.url.replace("ws://", "http://") + "/health"
        async with s.get(health) as resp:
            assert (await resp.json())["sessions"] == 1
        await asyncio.sleep(1.0)
        async with s.get(health) as resp:
            assert (await resp.json())["sessions"] == 0
        async with s.ws_connect(r.url + "/v1/splice") as ws:  # its key is void now
            await ws.send_json({"sid": ready["sid"], "key": ready["key"]})
            assert (await ws.receive(timeout=5)).type != aiohttp.WSMsgType.TEXT
        assert r.server.metrics.value("refusals_total", reason="bad_splice_key") == 1
