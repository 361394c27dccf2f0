"""Relay identity: the relay proves its own key, logins are bound to it and to its own
URL, and `?id=RELAYID` pins a relay (in one process over loopback, and the CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys

import aiohttp
import pytest
from aiohttp import web

from p2pgate.identity import Identity

from .test_relay import device, relay

ADVICE_LOGGER = "p2pgate.relay.client"


async def _until(predicate):
    """Poll state that log records and a relay client's retries change (bounded)."""
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 (log records and retries have no event)
            await asyncio.sleep(0.02)


def _warnings(caplog, text):
    return [r for r in caplog.records
            if r.levelno == logging.WARNING and text in r.getMessage()]


async def test_a_relay_that_cannot_prove_the_pinned_key_is_refused_and_the_node_says_so(caplog):
    caplog.set_level(logging.DEBUG, ADVICE_LOGGER)
    wrong_id = Identity.generate().device_id  # written like a relay ID, but no relay's key
    async with relay() as r, aiohttp.ClientSession() as s:
        async with device(f"{r.url}?id={wrong_id}") as (client, _, _):
            await _until(lambda: len([m for m in caplog.records
                                      if "did not prove the key" in m.getMessage()]) >= 3)
            assert not client.connected
            assert client.refusal == "wrong_relay_key"
        # said once (a warning with the fix), repeats quietly; we never logged in
        assert len(_warnings(caplog, "did not prove the key of the relay ID")) == 1
        async with s.get(r.url.replace("ws://", "http://") + "/health") as resp:
            assert (await resp.json())["connections"] == 0


async def test_the_pinned_key_logs_in_and_the_pin_is_not_part_of_the_signed_url():
    async with relay() as r:
        relay_id = r.server.key.relay_id
        async with device(f"{r.url}/?id={str(relay_id).lower()}") as (client, ident, _):
            await asyncio.wait_for(client.wait_connected(), 10)
            assert client.url == r.url
            assert client.relay_id == relay_id
            assert r.server.broker.is_attached(ident.device_id)


@contextlib.asynccontextmanager
async def forwarding_relay(honest_url: str):
    """Relay M: it forwards every control connection to the honest relay H, query
    string (the device's challenge) included, with `Host` set to its own address, and
    records what H answers."""
    answers: list[dict] = []
    own: dict[str, str] = {}

    async def control(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        query = f"?{request.query_string}" if request.query_string else ""
        async with aiohttp.ClientSession() as s, s.ws_connect(
                honest_url + "/v1/control" + query, headers={"Host": own["host"]}) as up:
            async def device_to_h():
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    await up.send_str(msg.data)
                await up.close()

            forward = asyncio.ensure_future(device_to_h())
            try:
                async for msg in up:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    answers.append(msg.json())
                    await ws.send_str(msg.data)
            finally:
                forward.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await forward
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/v1/control", control)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    own["host"] = f"127.0.0.1:{port}"
    try:
        yield f"ws://127.0.0.1:{port}", answers
    finally:
        await runner.cleanup()


async def test_a_relay_cannot_log_in_elsewhere_as_a_device_that_logs_into_it(caplog):
    """Hardening #1: M hands the node H's nonce (and challenge), forwards the node's
    signature to H with Host = M's address; H must not welcome it as the node."""
    caplog.set_level(logging.INFO, ADVICE_LOGGER)
    async with relay() as h, forwarding_relay(h.url) as (m_url, answers), \
            device(m_url) as (client, ident, _):
        await _until(lambda: any(a.get("t") in ("welcome", "error") for a in answers))
        verdict = next(a for a in answers if a.get("t") in ("welcome", "error"))
        assert verdict.get("t") == "error", f"H logged M in as the node: {verdict}"
        assert verdict["reason"] == "wrong_url"
        assert not h.server.broker.is_attached(ident.device_id)
        await _until(lambda: client.refusal == "wrong_url")  # the node hears why
        assert not client.connected


async def test_a_device_dialing_a_host_name_without_public_url_is_told_why(caplog):
    caplog.set_level(logging.INFO, "p2pgate")
    async with relay() as r:
        port = r.url.rsplit(":", 1)[1]
        async with device(f"ws://localhost:{port}") as (client, _, _):
            await _until(lambda: client.refusal == "public_url_unset")
            assert not client.connected
        operator = _warnings(caplog, "public_url is not set")
        assert len(operator) == 1
        assert f'public_url = "ws://localhost:{port}"' in operator[0].getMessage()
        assert _warnings(caplog, f'must set public_url = "ws://localhost:{port}"')
    async with relay() as r:  # the operator's fix
        port = r.url.rsplit(":", 1)[1]
        r.server.reload(r.server.config.model_copy(
            update={"public_url": f"ws://localhost:{port}"}))
        async with device(f"ws://localhost:{port}") as (client, _, _):
            await asyncio.wait_for(client.wait_connected(), 10)


def _start_relay(data_dir, *, after=False):
    where = ["relay", "--data-dir", str(data_dir)] if after else ["--data-dir", str(data_dir),
                                                                  "relay"]
    proc = subprocess.Popen([sys.executable, "-m", "p2pgate", *where, "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "devices use:" in line:
            break
    port = int(next(x for x in lines if "listening on" in x).split("127.0.0.1:")[1].split()[0])
    printed = next(x for x in lines if x.startswith("relay ID:"))
    return proc, port, printed.removeprefix("relay ID:").strip(), "".join(lines)


def _health(port):
    return subprocess.run([sys.executable, "-c", "import urllib.request; print(urllib.request"
                           f".urlopen('http://127.0.0.1:{port}/health').read().decode())"],
                          capture_output=True, text=True, timeout=20, check=True).stdout


def _stop(proc):
    proc.terminate()
    out = proc.communicate(timeout=20)[0]
    assert proc.returncode == 0, out
    return out


def test_the_relay_id_printed_at_start_is_the_key_files_and_survives_restarts(tmp_path):
    from p2pgate.relay.relay_key import RelayKey  # (not on main: imported here)

    home = tmp_path / "relay-home"
    proc, port, printed, out = _start_relay(home)
    try:
        key_file = home / "relay.key"
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        assert printed == str(RelayKey.load(key_file).relay_id)
        assert f'"relay_id": "{printed}"' in _health(port)
    finally:
        _stop(proc)
    assert f"devices use: --relay ws://127.0.0.1:{port}?id={printed}" in out
    proc, port, again, _ = _start_relay(home, after=True)  # `relay --data-dir` works too
    try:
        assert f'"relay_id": "{printed}"' in _health(port)
    finally:
        _stop(proc)
    assert again == printed


async def test_a_pin_that_does_not_parse_is_never_dialed_unpinned(caplog):
    caplog.set_level(logging.INFO, ADVICE_LOGGER)
    async with relay() as r, device(f"{r.url}?id=NOT-A-RELAY-ID") as (client, ident, _):
        await _until(lambda: any("not a relay URL" in m.getMessage()
                                 for m in caplog.records))
        assert not client.connected
        assert not r.server.broker.is_attached(ident.device_id)


def test_the_relay_key_file_is_private_made_once_and_refused_when_others_can_read_it(tmp_path):
    import os

    from p2pgate.identity.paths import DataDir
    from p2pgate.relay.relay_key import RelayKey, RelayKeyError

    home = DataDir(tmp_path / "relay")
    first = RelayKey.load_or_create(home)
    assert RelayKey.load_or_create(home).relay_id == first.relay_id
    assert oct((home.root / "relay.key").stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in home.root.iterdir()] == ["relay.key"]  # no temp file left
    os.chmod(home.root / "relay.key", 0o644)
    with pytest.raises(RelayKeyError, match="chmod 600"):
        RelayKey.load_or_create(home)
