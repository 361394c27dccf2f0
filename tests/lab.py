"""Test lab: real node processes, paired registries, Linux network namespaces.

`Lab` makes per-test namespaces (unique names), a bridge in its own "switch"
namespace, veth links and addresses in 10.231.0.0/16 (inside the namespaces
only). It cuts and restores unicast between two hosts (blackhole routes; multicast
still flows) or a whole host (link down), starts processes inside a host, and
always cleans up: in `close()`, at interpreter exit, and for leftovers of a
crashed run with the same prefix.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from p2pgate.cli.firstrun import initialise
from p2pgate.identity import Identity
from p2pgate.identity.paths import DataDir
from p2pgate.storage.database import Database, load_key
from p2pgate.storage.keys import discovery_key
from p2pgate.storage.registry import DeviceRegistry

_counter = itertools.count()
T = TypeVar("T")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


def netns_available() -> bool:
    if shutil.which("ip") is None or os.geteuid() != 0:
        return False
    probe = f"p2pgprobe{os.getpid()}"
    ok = _ip("netns", "add", probe, check=False).returncode == 0
    _ip("netns", "del", probe, check=False)
    return ok


@dataclass
class Host:
    lab: Lab
    name: str
    ns: str
    veth: str
    ip: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def run(self, *argv: str, timeout: float = 60, check: bool = False
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True,
                              text=True, timeout=timeout, check=check)

    def spawn(self, *argv: str, log: Path) -> subprocess.Popen[str]:
        out = log.open("w")
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        out.close()
        self.processes.append(proc)
        return proc

    def link_down(self) -> None:
        _ip("-n", self.lab.switch, "link", "set", f"{self.veth}b", "down")

    def link_up(self) -> None:
        _ip("-n", self.lab.switch, "link", "set", f"{self.veth}b", "up")


class Lab:
    def __init__(self) -> None:
        self.prefix = f"p2pg{os.getpid() % 100000}x{next(_counter)}"
        self.subnet = 10 + next(_counter) % 200
        self.switch = f"{self.prefix}sw"
        self.hosts: dict[str, Host] = {}
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        _ip("-n", self.switch, "link", "set", "lo", "up")
        atexit.register(self.close)

    def host(self, name: str, other_subnet: bool = False) -> Host:
        """A namespace on the bridge; `other_subnet` puts it in a second /24 (reached
        through an on-link route, so no multicast name service spans both)."""
        n = len(self.hosts) + 1
        ns, veth = f"{self.prefix}{name[:4]}{n}", f"{self.prefix[-6:]}v{n}"
        ip = f"10.231.{(self.subnet + 100) % 256 if other_subnet else self.subnet}.{n}"
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", veth, "netns", ns, "type", "veth", "peer", "name", f"{veth}b",
            "netns", self.switch)
        _ip("-n", self.switch, "link", "set", f"{veth}b", "master", "br0")
        _ip("-n", self.switch, "link", "set", f"{veth}b", "up")
        _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", veth)
        _ip("-n", ns, "link", "set", veth, "up")
        _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", veth)
        _ip("-n", ns, "route", "add", "10.231.0.0/16", "dev", veth)  # other subnets, on-link
        host = Host(self, name, ns, veth, ip)
        self.hosts[name] = host
        return host

    def cut_unicast(self, a: Host, b: Host) -> None:
        _ip("-n", a.ns, "route", "add", "blackhole", f"{b.ip}/32")
        _ip("-n", b.ns, "route", "add", "blackhole", f"{a.ip}/32")

    def restore_unicast(self, a: Host, b: Host) -> None:
        _ip("-n", a.ns, "route", "del", "blackhole", f"{b.ip}/32", check=False)
        _ip("-n", b.ns, "route", "del", "blackhole", f"{a.ip}/32", check=False)

    def close(self) -> None:
        for host in self.hosts.values():
            for proc in host.processes:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        for host in self.hosts.values():
            _ip("netns", "del", host.ns, check=False)
        _ip("netns", "del", self.switch, check=False)
        self.hosts.clear()
        atexit.unregister(self.close)


# -- nodes ----------------------------------------------------------------------------

@dataclass
class NodeDir:
    data_dir: DataDir
    identity: Identity
    name: str

    @property
    def device_id(self) -> str:
        return str(self.identity.device_id)

    def runtime(self) -> dict[str, object]:
        return dict(json.loads((self.data_dir.root / "node.json").read_text()))

    def admin_token(self) -> str:
        return self.data_dir.admin_token.read_text().strip()


def make_node_dir(root: Path, name: str) -> NodeDir:
    data_dir = DataDir(root / name)
    result = initialise(data_dir, name)
    return NodeDir(data_dir, result.identity, name)


def trust_each_other(a: NodeDir, b: NodeDir, a_addresses: Sequence[str] = (),
                     b_addresses: Sequence[str] = (), k_pair: bytes | None = None) -> bytes:
    """Write a completed pairing into both registries (what pairing would leave)."""
    k = k_pair or os.urandom(32)

    async def _disc_key(node: NodeDir) -> bytes:
        db = await Database.open(node.data_dir.database, load_key(node.data_dir.database_key))
        try:
            return await discovery_key(db)  # the key the node advertises with
        finally:
            await db.close()

    async def _one(me: NodeDir, other: NodeDir, addresses: Sequence[str]) -> None:
        other_disc = await _disc_key(other)
        db = await Database.open(me.data_dir.database, load_key(me.data_dir.database_key))
        try:
            registry = DeviceRegistry(db)
            await registry.begin_pairing(other.identity.cert_der, other.name)
            await registry.complete_pairing(other.identity.device_id, k, other_disc)
            if addresses:
                await registry.record_seen(other.identity.device_id, addresses)
        finally:
            await db.close()

    asyncio.run(_one(a, b, list(b_addresses)))
    asyncio.run(_one(b, a, list(a_addresses)))
    return k


def disc_key_of(node: NodeDir) -> bytes:
    """The discovery key a node advertises with (read while it may be running)."""

    async def _read() -> bytes:
        db = await Database.open(node.data_dir.database, load_key(node.data_dir.database_key))
        try:
            row = await db.run(lambda c: c.execute(
                "SELECT value FROM meta WHERE key = 'disc_key'").fetchone())
            return bytes.fromhex(row[0])
        finally:
            await db.close()

    return asyncio.run(_read())


def node_argv(node: NodeDir, listen: str, api: str = "127.0.0.1:0", mdns: bool = False
              ) -> list[str]:
    return [sys.executable, "-m", "p2pgate", "--data-dir", str(node.data_dir.root), "node",
            "--api", api, "--listen", listen, "--no-dht", *([] if mdns else ["--no-mdns"])]


def wait_for(predicate: Callable[[], T], timeout: float = 30, interval: float = 0.2,
             what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
