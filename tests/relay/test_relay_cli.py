"""`p2pgate relay` as an operator runs it: real processes, signals, tokens."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys

import aiohttp
import pytest

from p2pgate.identity import Identity
from p2pgate.relay.client import RelayClient


def p2pgate(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "p2pgate", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=60, check=False)


def test_keygen_and_token(tmp_path):
    key = tmp_path / "signing.key"
    made = p2pgate("relay", "keygen", "--key", str(key))
    assert made.returncode == 0, made.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert 'access = "token"' in made.stdout
    again = p2pgate("relay", "keygen", "--key", str(key))
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    device = Identity.generate().device_id
    token = p2pgate("relay", "token", "--key", str(key), "--device", str(device), "--ttl", "7d")
    assert token.returncode == 0
    assert token.stdout.count(".") == 2
    too_long = p2pgate("relay", "token", "--key", str(key), "--device", str(device),
                       "--ttl", "31d")
    assert too_long.returncode == 1
    assert "30 days" in too_long.stderr


def test_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "relay.toml"
    cfg.write_text('access = "everyone"\n')
    result = p2pgate("relay", "--config", str(cfg))
    assert result.returncode == 1
    assert result.stderr.startswith(f"p2pgate: error: {cfg}: access:")
    assert result.stderr.count("\n") == 1


@pytest.fixture
def relay_process(tmp_path):
    cfg = tmp_path / "relay.toml"
    cfg.write_text('listen = "127.0.0.1:0"\ndrain_timeout = 5\n')
    proc = subprocess.Popen([sys.executable, "-m", "p2pgate", "--data-dir", str(tmp_path / "home"),
                             "relay", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert "listening on" in line, line
    port = int(line.split("127.0.0.1:")[1].split()[0])
    yield proc, port, cfg
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    proc.stdout.close()


async def test_relay_process_serves_reloads_and_drains(relay_process):
    proc, port, cfg = relay_process
    url = f"ws://127.0.0.1:{port}"

    async def accept(_):
        return True

    async def ignore(stream):
        await stream.close()

    client = RelayClient(url, Identity.generate(), accept, ignore)
    task = asyncio.ensure_future(client.run(min_backoff=0.05, max_backoff=0.1))
    try:
        await asyncio.wait_for(client.wait_connected(), 10)
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert "p2pgate_relay_connections 1" in await r.text()
        await asyncio.to_thread(
            cfg.write_text, 'listen = "127.0.0.1:0"\ndrain_timeout = 5\nnot_a_key = 1\n')
        os.kill(proc.pid, signal.SIGHUP)  # a bad reload keeps the old config and the process
        await asyncio.sleep(0.3)
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGTERM)  # drains (drain_timeout = 5), then exits cleanly
        code = await asyncio.to_thread(proc.wait, 20)
        assert code == 0
        out = await asyncio.to_thread(proc.stdout.read)
        assert "config reload failed" in out
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
