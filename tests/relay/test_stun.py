"""The relay's STUN port: the sans-I/O responder checked against aioice's codec, and the
real UDP endpoint, welcome field and /health over loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import aiohttp
import pytest
from aioice import stun

from p2pgate.config import ConfigError
from p2pgate.relay.config import RelayConfig, load_relay_config
from p2pgate.relay.stun import StunResponder, stun_address
from p2pgate.relay.stun_server import start_stun
from tests.relay.test_relay import device, relay


def binding_request(**attributes) -> stun.Message:
    return stun.Message(stun.Method.BINDING, stun.Class.REQUEST, attributes=attributes)


def mapped(answer: bytes, request: stun.Message) -> tuple[str, int]:
    response = stun.parse_message(answer)  # checks the FINGERPRINT too
    assert response.message_method == stun.Method.BINDING
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == request.transaction_id
    return response.attributes["XOR-MAPPED-ADDRESS"]


@pytest.mark.parametrize("source", [("198.51.100.7", 40123), ("2001:db8::5", 3478),
                                    ("203.0.113.9", 1)])
def test_a_binding_request_gets_the_source_as_xor_mapped_address(source):
    request = binding_request()
    answer = StunResponder().answer(bytes(request), source, now=0.0)
    assert answer is not None
    assert mapped(answer, request) == source


def test_a_request_with_attributes_and_fingerprint_is_answered():
    request = binding_request(SOFTWARE="test", PRIORITY=1)
    request.add_fingerprint()
    answer = StunResponder().answer(bytes(request), ("10.1.2.3", 5), now=0.0)
    assert answer is not None and mapped(answer, request) == ("10.1.2.3", 5)


def test_a_dual_stack_socket_s_view_of_an_ipv4_client_is_answered_as_ipv4():
    request = binding_request()
    answer = StunResponder().answer(bytes(request), ("::ffff:192.0.2.1", 9), now=0.0)
    assert answer is not None and mapped(answer, request) == ("192.0.2.1", 9)


def _garbage() -> list[bytes]:
    good = bytes(binding_request())
    response = bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE))
    indication = bytes(stun.Message(stun.Method.BINDING, stun.Class.INDICATION))
    allocate = bytes(stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST))
    return [
        b"", b"\x00", good[:19], good + b"\x00\x00\x00\x00",  # short; length field lies
        good[:4] + b"\x00\x00\x00\x00" + good[8:],  # no magic cookie (RFC 3489 or noise)
        response, indication, allocate,
        good[:2] + b"\x00\x04" + good[4:] + b"\x00\x20\x00\x08",  # attribute overruns
        good[:2] + b"\x00\x02" + good[4:] + b"\x00\x20",  # half an attribute header
        b"\x00\x01" + (2000 - 20).to_bytes(2, "big") + good[4:20] + bytes(1980),  # oversize
        b"\x27" + os.urandom(63),  # what a kademlia datagram looks like: not STUN
        os.urandom(20) + b"\x00" * 12,
    ]


def test_garbage_gets_no_answer():
    responder = StunResponder()
    for datagram in _garbage():
        assert responder.answer(datagram, ("10.0.0.1", 1000), now=0.0) is None, datagram
    assert responder.answered == 0
    assert responder.dropped == len(_garbage())


def test_answers_are_rate_limited_per_source_ip_and_come_back_with_time():
    responder = StunResponder(rate=10.0, burst=20)
    request = bytes(binding_request())
    flood = [responder.answer(request, ("10.0.0.1", 1000 + i), now=0.0) for i in range(100)]
    assert sum(a is not None for a in flood) == 20  # the burst, whatever the source port
    assert responder.answer(request, ("10.0.0.2", 1000), now=0.0) is not None  # another IP
    assert responder.answer(request, ("10.0.0.1", 1000), now=0.05) is None
    assert responder.answer(request, ("10.0.0.1", 1000), now=0.2) is not None  # refilled
    assert responder.dropped == 81


def test_the_stun_address_told_to_devices():
    assert stun_address(None, ("192.0.2.1", 8443), 3478) == "192.0.2.1:3478"
    assert stun_address(None, ("::ffff:192.0.2.1", 8443), 3478) == "192.0.2.1:3478"
    assert stun_address(None, ("2001:db8::1", 8443), 3478) == "[2001:db8::1]:3478"
    assert stun_address("wss://relay.example.net", ("10.0.0.1", 8443), 3479) == (
        "relay.example.net:3479")  # the name devices dial, not the proxy-side address
    assert stun_address("ws://[2001:db8::2]:80", None, 3478) == "[2001:db8::2]:3478"
    assert stun_address(None, None, 3478) is None
    assert stun_address(None, ("10.0.0.1", 8443), 3478, "192.0.2.5") == "192.0.2.5:3478"
    assert stun_address(None, ("10.0.0.1", 8443), 3478, "0.0.0.0") == "10.0.0.1:3478"
    assert stun_address(None, ("2001:db8::1", 8443), 3478, "::") == "[2001:db8::1]:3478"


def test_config_defaults_to_3478_and_keeps_stun_off_the_dht_port():
    assert RelayConfig().stun_port == 3478
    assert load_relay_config(None, {"stun_port": 0}).stun_port == 0
    assert load_relay_config(None, {"stun_port": 0, "dht_port": 0}).stun_port == 0
    with pytest.raises(ConfigError, match="dht_port"):
        load_relay_config(None, {"stun_port": 4000, "dht_port": 4000})
    with pytest.raises(ConfigError, match="stun_port"):
        load_relay_config(None, {"stun_port": 70000})
    with pytest.raises(ConfigError, match="stun_host"):
        load_relay_config(None, {"stun_host": "relay.example.net"})  # an address, not a name


# -- the real UDP endpoint over loopback ------------------------------------------------

async def ask(sock: socket.socket, address: tuple[str, int], datagrams: list[bytes],
              wait: float = 0.5) -> list[bytes]:
    """Send `datagrams` to `address` from `sock`; every answer that came within `wait`."""
    loop = asyncio.get_running_loop()
    for datagram in datagrams:
        await loop.sock_sendto(sock, datagram, address)
    answers = []
    try:
        async with asyncio.timeout(wait):
            while True:
                answers.append(await loop.sock_recv(sock, 2048))
    except TimeoutError:
        return answers


@pytest.fixture
def udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def test_the_endpoint_answers_bindings_and_ignores_garbage(udp):
    endpoint = await start_stun("127.0.0.1", 0)
    try:
        request = binding_request()
        answers = await ask(udp, ("127.0.0.1", endpoint.port), [*_garbage(), bytes(request)])
        assert len(answers) == 1
        assert mapped(answers[0], request) == udp.getsockname()
    finally:
        endpoint.close()


async def test_the_welcome_tells_the_stun_address_and_health_shows_it():
    async with relay() as r:
        r.server.stun = await start_stun("127.0.0.1", 0)  # ephemeral: tests run side by side
        expected = f"127.0.0.1:{r.server.stun.port}"
        async with device(r.url) as (client, _, _):
            await asyncio.wait_for(client.wait_connected(), 5)
            assert client.stun_address == expected
        health_url = r.url.replace("ws://", "http://") + "/health"
        async with aiohttp.ClientSession() as s, s.get(health_url) as resp:
            assert (await resp.json())["stun"] == expected


async def test_without_stun_the_client_keeps_none():
    async with relay(stun_port=0) as r:
        await r.server.start_stun()  # 0 = off
        assert r.server.stun is None
        async with device(r.url) as (client, _, _):
            await asyncio.wait_for(client.wait_connected(), 5)
            assert client.stun_address is None
        async with aiohttp.ClientSession() as s, \
                s.get(r.url.replace("ws://", "http://") + "/health") as resp:
            assert (await resp.json())["stun"] is None


def free_udp_port(host="127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def test_stun_host_binds_another_address_and_devices_are_told_it(udp):
    port = free_udp_port("127.0.0.2")
    async with relay(stun_port=port, stun_host="127.0.0.2") as r:
        await r.server.start_stun()
        async with device(r.url) as (client, _, _):
            await asyncio.wait_for(client.wait_connected(), 5)
            assert client.stun_address == f"127.0.0.2:{port}"
        request = binding_request()
        (answer,) = await ask(udp, ("127.0.0.2", port), [bytes(request)])
        assert mapped(answer, request) == udp.getsockname()


def test_the_relay_command_serves_stun_on_the_flag_s_port(tmp_path):
    port = free_udp_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pgate", "--data-dir", str(tmp_path / "home"), "relay",
         "--listen", "127.0.0.1:0", "--stun-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "listening on" in proc.stdout.readline()
        assert proc.stdout.readline().strip() == f"STUN on UDP 127.0.0.1:{port}"
        request = binding_request()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.bind(("127.0.0.1", 0))
            sock.sendto(bytes(request), ("127.0.0.1", port))
            assert mapped(sock.recv(2048), request) == sock.getsockname()
    finally:
        proc.terminate()
        proc.wait(20)
        proc.stdout.close()
