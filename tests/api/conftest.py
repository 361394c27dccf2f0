"""A real node process per test (or module), reached through its API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class RunningNode:
    data_dir: Path
    process: subprocess.Popen[str]
    url: str
    admin_token: str
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text()


def start_node(data_dir: Path, *extra: str, env: dict[str, str] | None = None,
               config: str | None = None) -> RunningNode:
    data_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (data_dir / "config.toml").write_text(config)
    runtime = data_dir / "node.json"
    runtime.unlink(missing_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "p2pgate", "--data-dir", str(data_dir), "node",
         "--api", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--no-mdns", "--no-dht", *extra],
        stdout=log, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
    )
    log.close()
    deadline = time.monotonic() + 30
    while not runtime.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"node did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    url = json.loads(runtime.read_text())["api_url"]
    token = (data_dir / "admin.token").read_text().strip()
    return RunningNode(data_dir, process, url, token, log_path)


@pytest.fixture
def node_factory(tmp_path):
    """Starts nodes; from async tests call it through `asyncio.to_thread` (it blocks)."""
    nodes: list[RunningNode] = []

    def factory(name: str = "node", *extra: str, **kw) -> RunningNode:
        node = start_node(tmp_path / name, *extra, **kw)
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.stop(signal.SIGKILL)


@pytest.fixture
def node(node_factory):
    return node_factory()
