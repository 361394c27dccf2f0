"""NAT lab: two hosts behind emulated NAT routers, an "internet" namespace between them.

    host A — router A — internet (relay, STUN) — router B — host B

Each link is a veth pair; the routers run nftables (LAB.md "NAT lab"):

- `public`: no rules; the internet routes the host's subnet, so the host is reachable.
- `port-restricted`: plain `masquerade` (port-preserving, endpoint-independent mapping;
  only the address and port a host sent to may answer).
- `full-cone`: the same plus a DNAT of every inbound UDP datagram to the host, so anyone
  may send to a mapping once it exists.
- `symmetric`: `masquerade fully-random`: a new random port per destination.

Every router has a `forward` and an `input` chain with policy drop (the input chain keeps
a probe addressed to the router from creating a conntrack entry that moves its NAT).
Names are unique per lab (`p2pg<pid>n<k>…`), and `close()` (also at exit) kills the
lab's processes and deletes its namespaces. Addresses exist only inside them:
LAN A 10.0.1.0/24, LAN B 10.0.2.0/24, WAN links 198.51.100.0/30 and 203.0.113.0/30,
addresses 192.0.2.1-3 on the internet's loopback (the relay on all of them).

`python -m tests.natlab probe OP …` is the STUN client run inside a host (aioice's
codec over a plain UDP socket); it prints one JSON line per result, and imports neither
p2pgate nor `tests.lab` (a probe starts in a fraction of a second).
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

NatType = Literal["public", "port-restricted", "full-cone", "symmetric"]
NAT_TYPES: tuple[NatType, ...] = ("public", "port-restricted", "full-cone", "symmetric")
RELAY_IP, SECOND_IP, THIRD_IP = "192.0.2.1", "192.0.2.2", "192.0.2.3"
STUN_PORT = 3478  # the relay's default
# a node's INFO line when an attempt it answered ends without a data channel
ATTEMPT_FAILED = re.compile(r"webrtc (attempt from \S+ failed|offer from \S+ not answered)")
_counter = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


@dataclass
class Namespace:
    ns: str
    ip: str = ""
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def run(self, *argv: str, timeout: float = 30, check: bool = True, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True,
                              text=True, timeout=timeout, check=check, input=stdin)

    def spawn(self, *argv: str, log: Path | None = None) -> subprocess.Popen[str]:
        out = log.open("w") if log is not None else subprocess.PIPE
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdout=out,
                                stderr=subprocess.STDOUT if log else None, text=True,
                                start_new_session=True)
        if log is not None:
            out.close()  # type: ignore[union-attr]
        self.processes.append(proc)
        return proc

    def probe(self, *args: str, timeout: float = 30) -> list[dict]:
        out = self.run(sys.executable, "-m", "tests.natlab", "probe", *args, timeout=timeout)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


@dataclass
class Side:
    host: Namespace
    router: Namespace
    nat: NatType
    wan_ip: str  # the router's address on the internet


def router_rules(nat: NatType, wan: str, lan: str, host_ip: str) -> str:
    """The router's nftables ruleset for `nat` (LAB.md), `wan`/`lan` its interfaces."""
    if nat == "public":
        return ""
    masquerade = "masquerade fully-random" if nat == "symmetric" else "masquerade"
    cone = nat == "full-cone"
    prerouting = (f"""chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;
    iifname "{wan}" meta l4proto udp dnat ip to {host_ip}
  }}""" if cone else "")
    return f"""
table inet nat {{
  {prerouting}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    oifname "{wan}" {masquerade}
  }}
}}
table inet filter {{
  chain forward {{ type filter hook forward priority filter; policy drop;
    ct state established,related accept
    {"ct status dnat accept" if cone else ""}
    iifname "{lan}" oifname "{wan}" accept
  }}
  chain input {{ type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname "lo" accept
    iifname "{lan}" accept
  }}
}}
"""


class NatLab:
    """The five namespaces, routers configured for `nat_a` and `nat_b`."""

    def __init__(self, nat_a: NatType, nat_b: NatType = "port-restricted") -> None:
        self.prefix = f"p2pg{os.getpid() % 100000}n{next(_counter)}"
        self.short = self.prefix[-7:]
        self.namespaces: list[Namespace] = []
        atexit.register(self.close)
        try:
            self.internet = self._namespace("inet")
            for address in (RELAY_IP, SECOND_IP, THIRD_IP):
                _ip("-n", self.internet.ns, "addr", "add", f"{address}/32", "dev", "lo")
            self.internet.ip = RELAY_IP
            self._forwarding(self.internet)
            self.a = self._side("a", nat_a, lan=1, wan_net="198.51.100")
            self.b = self._side("b", nat_b, lan=2, wan_net="203.0.113")
        except BaseException:
            self.close()
            raise

    def _namespace(self, name: str) -> Namespace:
        ns = Namespace(f"{self.prefix}{name}")
        _ip("netns", "add", ns.ns)
        self.namespaces.append(ns)
        _ip("-n", ns.ns, "link", "set", "lo", "up")
        return ns

    def _link(self, one: Namespace, other: Namespace, tag: str) -> tuple[str, str]:
        """A veth pair between two namespaces; its two interface names."""
        a, b = f"{self.short}{tag}0", f"{self.short}{tag}1"
        _ip("link", "add", a, "netns", one.ns, "type", "veth", "peer", "name", b,
            "netns", other.ns)
        _ip("-n", one.ns, "link", "set", a, "up")
        _ip("-n", other.ns, "link", "set", b, "up")
        return a, b

    @staticmethod
    def _forwarding(ns: Namespace) -> None:
        ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")

    def _side(self, name: str, nat: NatType, lan: int, wan_net: str) -> Side:
        host, router = self._namespace(f"h{name}"), self._namespace(f"r{name}")
        host_if, lan_if = self._link(host, router, f"{name}l")
        wan_if, inet_if = self._link(router, self.internet, f"{name}w")
        host.ip, router.ip = f"10.0.{lan}.2", f"{wan_net}.2"
        _ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", host_if)
        _ip("-n", host.ns, "route", "add", "default", "via", f"10.0.{lan}.1")
        _ip("-n", router.ns, "addr", "add", f"10.0.{lan}.1/24", "dev", lan_if)
        _ip("-n", router.ns, "addr", "add", f"{router.ip}/30", "dev", wan_if)
        _ip("-n", router.ns, "route", "add", "default", "via", f"{wan_net}.1")
        _ip("-n", self.internet.ns, "addr", "add", f"{wan_net}.1/30", "dev", inet_if)
        self._forwarding(router)
        if nat == "public":  # the internet routes the host's subnet: it is reachable
            _ip("-n", self.internet.ns, "route", "add", f"10.0.{lan}.0/24", "via", router.ip)
        else:
            router.run("nft", "-f", "-", stdin=router_rules(nat, wan_if, lan_if, host.ip))
        return Side(host, router, nat, router.ip)

    def expected_address(self, side: Side) -> str:
        """The address the internet sees `side`'s host at."""
        return side.host.ip if side.nat == "public" else side.wan_ip

    def start_relay(self, data_dir: Path, *argv: str) -> subprocess.Popen[str]:
        """`p2pgate relay ARGV` in the internet namespace (by default on all its addresses,
        STUN on 3478); waits until its STUN port is up."""
        from tests.lab import wait_for  # (not at the top: the probe runs without p2pgate)

        log = data_dir.with_suffix(".log")
        proc = self.internet.spawn(sys.executable, "-m", "p2pgate", "--data-dir",
                                   str(data_dir), "relay", *argv, log=log)
        wait_for(lambda: "STUN on UDP" in log.read_text() or proc.poll() is not None,
                 timeout=30, interval=0.05, what="the relay's STUN port")
        assert proc.poll() is None, log.read_text()
        return proc

    def close(self) -> None:
        for ns in self.namespaces:
            for proc in ns.processes:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        for ns in self.namespaces:
            _ip("netns", "del", ns.ns, check=False)
        self.namespaces.clear()
        atexit.unregister(self.close)


# -- the STUN client run inside a host -------------------------------------------------

def _query(sock: socket.socket, server: tuple[str, int], timeout: float = 1.0,
           tries: int = 3) -> tuple[str, int] | None:
    """One Binding transaction (with retransmissions); the XOR-MAPPED-ADDRESS or None."""
    from aioice import stun

    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    request.add_fingerprint()
    sock.settimeout(timeout)
    for _ in range(tries):
        sock.sendto(bytes(request), server)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, _source = sock.recvfrom(2048)
            except TimeoutError:
                break
            try:
                response = stun.parse_message(data)
            except ValueError:
                continue
            if response.transaction_id == request.transaction_id:
                address = response.attributes["XOR-MAPPED-ADDRESS"]
                return str(address[0]), int(address[1])
    return None


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def _probe(op: str, args: list[str]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))  # noqa: S104 (inside the lab's host namespace)
    local = sock.getsockname()[1]
    if op == "mappings":  # each STUN server in turn, from one local port
        for server in args:
            print(json.dumps({"local": local, "server": server,
                              "mapped": _query(sock, _address(server))}), flush=True)
    elif op == "inbound":  # open a mapping, then wait for anything unsolicited
        server, wait = _address(args[0]), float(args[1])
        print(json.dumps({"local": local, "mapped": _query(sock, server)}), flush=True)
        sock.settimeout(wait)
        try:
            data, source = sock.recvfrom(2048)
            print(json.dumps({"received": data.decode(errors="replace"),
                              "from": list(source)}), flush=True)
        except TimeoutError:
            print(json.dumps({"received": None}), flush=True)
    elif op == "flood":  # `count` requests at once; answers within `wait`
        from aioice import stun

        server, count, wait = _address(args[0]), int(args[1]), float(args[2])
        started = time.monotonic()
        for _ in range(count):
            sock.sendto(bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST)), server)
        answers = 0
        sock.settimeout(0.2)
        while time.monotonic() < started + wait:
            try:
                sock.recvfrom(2048)
                answers += 1
            except TimeoutError:
                continue
        print(json.dumps({"sent": count, "answers": answers,
                          "seconds": time.monotonic() - started}), flush=True)
    else:
        raise SystemExit(f"unknown probe {op!r}")


def send_datagram(ns: Namespace, source: tuple[str, int], to: tuple[str, int], text: str
                  ) -> None:
    """Send one UDP datagram from `source` inside `ns` (a third party on the internet)."""
    ns.run(sys.executable, "-c",
           "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
           "s.bind((sys.argv[1], int(sys.argv[2]))); "
           "s.sendto(sys.argv[5].encode(), (sys.argv[3], int(sys.argv[4])))",
           source[0], str(source[1]), to[0], str(to[1]), text)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "probe":
        raise SystemExit("usage: python -m tests.natlab probe OP ARGS…")
    _probe(sys.argv[2], sys.argv[3:])
