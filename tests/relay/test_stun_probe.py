"""Our probe of a relay's STUN port: the sans-I/O core driven with numbers for time, its
codec checked against aioice's and our responder's, the status that decides whether
WebRTC lists the STUN server, and the UDP adapter and `RelayClient` over loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aioice import stun
from hypothesis import given
from hypothesis import strategies as st

from p2pgate.relay.stun import StunResponder
from p2pgate.relay.stun_probe import (
    GIVE_UP,
    BindingProbe,
    ProbeResult,
    StunStatus,
    parse_address,
)
from p2pgate.relay.stun_prober import probe_stun
from p2pgate.relay.stun_server import start_stun
from tests.relay.test_relay import device, relay

TID = bytes(range(12))


def test_the_request_is_a_binding_request_aioice_parses():
    request = stun.parse_message(BindingProbe(TID, 0.0).request)
    assert (request.message_method, request.message_class) == (stun.Method.BINDING,
                                                               stun.Class.REQUEST)
    assert request.transaction_id == TID


def test_the_request_goes_out_three_times_then_the_probe_gives_up_at_1_5_s():
    probe = BindingProbe(TID, 100.0)
    sent = []
    now = 100.0
    while (timer := probe.get_timer()) is not None:
        sent += [now] * len(probe.datagrams_to_send(now))
        now = timer
        probe.handle_timer(now)
        sent += [now] * len(probe.datagrams_to_send(now))
    assert sent == [100.0, 100.25, 100.75]
    assert now == 100.0 + GIVE_UP
    assert probe.result == ProbeResult(False)
    assert probe.datagrams_to_send(200.0) == []


@pytest.mark.parametrize(("source", "shown"), [(("198.51.100.7", 40123), "198.51.100.7:40123"),
                                               (("2001:db8::5", 3478), "[2001:db8::5]:3478")])
def test_our_responders_answer_ends_the_probe_with_the_reflexive_address(source, shown):
    probe = BindingProbe(TID, 0.0)
    [request] = probe.datagrams_to_send(0.0)
    answer = StunResponder().answer(request, source, now=0.0)
    assert answer is not None
    probe.receive(answer, 0.3)
    assert probe.result == ProbeResult(True, shown, 0.3)
    assert probe.get_timer() is None
    assert probe.datagrams_to_send(0.5) == []


def test_aioices_success_response_is_read_and_others_are_ignored():
    probe = BindingProbe(TID, 0.0)
    other = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=bytes(12))
    other.attributes["XOR-MAPPED-ADDRESS"] = ("192.0.2.9", 9)
    error = stun.Message(stun.Method.BINDING, stun.Class.ERROR, transaction_id=TID)
    error.attributes["ERROR-CODE"] = (400, "Bad Request")
    for ignored in (bytes(other), bytes(error), b"", b"\x01\x01" + bytes(30)):
        probe.receive(ignored, 0.1)
        assert probe.result is None
    plain = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=TID)
    plain.attributes["MAPPED-ADDRESS"] = ("203.0.113.4", 5000)  # a pre-RFC 5389 server
    plain.add_fingerprint()
    probe.receive(bytes(plain), 0.2)
    assert probe.result == ProbeResult(True, "203.0.113.4:5000", 0.2)


@given(st.binary(max_size=600))
def test_any_datagram_is_read_or_ignored_never_raises(data):
    probe = BindingProbe(TID, 0.0)
    probe.receive(data, 0.1)
    assert probe.result is None or probe.result.ok


def test_addresses_parse():
    assert parse_address("192.0.2.1:3478") == ("192.0.2.1", 3478)
    assert parse_address("[2001:db8::1]:3478") == ("2001:db8::1", 3478)
    assert parse_address("relay.example:1") == ("relay.example", 1)
    for bad in ("192.0.2.1", ":3478", "host:0", "host:70000", "host:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


def test_the_status_lists_stun_only_after_an_answer_and_says_when_to_probe_again():
    none = StunStatus()
    assert (none.state, none.use_stun(), none.needs_probe(0.0)) == (None, False, False)
    status = StunStatus("192.0.2.1:3478")
    assert (status.state, status.use_stun(), status.needs_probe(0.0)) == ("unknown", False,
                                                                          True)
    assert status.probed(ProbeResult(False), 10.0)  # changed: unknown -> failed
    assert (status.state, status.use_stun()) == ("failed", False)
    assert not status.needs_probe(29.0)
    assert status.needs_probe(30.0)  # a failure is retried after 20 s (before the next
    # attempt after a failed one, 30 s or more later)
    assert status.probed(ProbeResult(True, "198.51.100.2:4000"), 70.0)
    assert (status.state, status.use_stun(), status.reflexive) == ("ok", True,
                                                                   "198.51.100.2:4000")
    assert not status.needs_probe(669.0)
    assert status.needs_probe(670.0)  # a success is checked again after 10 min
    assert not status.probed(ProbeResult(True, "198.51.100.2:4001"), 100.0)  # still ok
    status.stale = True  # a network change
    assert status.needs_probe(101.0)
    status.probed(ProbeResult(False), 102.0)
    assert (status.stale, status.reflexive) == (False, None)


async def test_the_adapter_probes_our_stun_server_over_loopback():
    endpoint = await start_stun("127.0.0.1", 0)
    try:
        result = await probe_stun(f"127.0.0.1:{endpoint.port}")
    finally:
        endpoint.close()
    assert result.ok
    assert result.reflexive is not None and result.reflexive.startswith("127.0.0.1:")


async def test_a_silent_or_unknown_server_is_a_failed_probe():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        results = await asyncio.gather(
            probe_stun(f"127.0.0.1:{silent.getsockname()[1]}"),  # reads nothing, answers nothing
            probe_stun("not-an-address"), probe_stun("name.invalid:3478"))
    finally:
        silent.close()
    assert results == [ProbeResult(False)] * 3


async def test_the_relay_client_probes_the_stun_port_it_is_told_of():
    async with relay() as r:
        r.server.stun = await start_stun("127.0.0.1", 0)  # (closed by the relay's cleanup)
        async with device(r.url) as (client, _, _):
            await asyncio.wait_for(client.wait_connected(), 5)
            url = await client.stun_url()  # waits for the probe the welcome started
            assert url == f"stun:127.0.0.1:{r.server.stun.port}"
            assert client.stun.state == "ok"
            assert client.stun.reflexive.startswith("127.0.0.1:")


async def test_a_stun_port_that_does_not_answer_is_left_out_of_webrtc():
    async with relay() as r:
        # the welcome names it, and it drops every request (as over its rate limit)
        r.server.stun = await start_stun("127.0.0.1", 0, StunResponder(rate=0.0, burst=0))
        async with device(r.url) as (client, _, _):
            await asyncio.wait_for(client.wait_connected(), 5)
            assert await client.stun_url() is None
            assert client.stun.state == "failed"
            assert client.stun_address is not None and client.stun.reflexive is None
            assert client.current_stun_url() is None
