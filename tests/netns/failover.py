"""The failover journeys of a phone and a desktop on one LAN, both with a relay, on
default settings — shared by the netns test and `bench/failover_bench.py`.

(a) a writer on the phone puts a note every 100 ms; the direct path is cut
    (blackhole routes both ways): seconds from the cut until a note written after it
    reaches the desktop;
(b) the cut happens while both are idle; after `idle` seconds one note is written:
    seconds until it reaches the desktop;
(c) the route comes back: seconds until both are direct again; then every note the
    writer wrote is counted on both sides: each exactly once (no event lost or
    repeated).

Times are wall-clock stamps taken inside the namespaces (the writer stamps each note,
the desktop's event stream stamps each arrival), so process start-ups do not count.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from tests.lab import Lab, make_node_dir, node_argv, trust_each_other, wait_for
from tests.netns.nodes import Devices

WRITE_EVERY = 0.1


class Lines:
    """The stdout lines of a background program, each with the time it was read."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.lines = proc, []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((line.split(), time.time()))

    def wait_ready(self) -> None:
        wait_for(lambda: any(words == ["ready"] for words, _ in self.lines), timeout=30,
                 interval=0.02, what="a program to start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._thread.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@dataclass
class Pair:
    """The running phone and desktop (and relay) of one journey."""

    lab: Lab
    devices: Devices
    phone: object
    desk: object
    arrivals: Lines | None = None
    written: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.arrivals is not None:
            self.arrivals.stop()

    def paths(self) -> tuple[str | None, str | None]:
        return self.devices.path("phone"), self.devices.path("desk")

    def arrived(self) -> dict[str, float]:
        assert self.arrivals is not None
        seen: dict[str, float] = {}
        for words, _ in self.arrivals.lines:
            if len(words) == 2:
                seen.setdefault(words[0], float(words[1]))
        return seen

    def arrival_ids(self) -> list[str]:
        assert self.arrivals is not None
        return [words[0] for words, _ in self.arrivals.lines if len(words) == 2]


def start(lab: Lab, tmp_path) -> Pair:
    """A relay and two paired devices on one LAN, both using it; a direct session."""
    relay, phone, desk = lab.host("relay"), lab.host("phone"), lab.host("desk")
    hosts = {"phone": phone, "desk": desk}
    nodes = {n: make_node_dir(tmp_path, n) for n in hosts}
    trust_each_other(nodes["phone"], nodes["desk"], [f"{phone.ip}:7771"], [f"{desk.ip}:7771"])
    relay.spawn(sys.executable, "-m", "p2pgate", "relay", "--listen", f"{relay.ip}:8443",
                log=tmp_path / "relay.log")
    for n, host in hosts.items():  # no config.toml: every setting is the default
        host.spawn(*node_argv(nodes[n], f"{host.ip}:7771"), "--relay",
                   f"ws://{relay.ip}:8443", log=tmp_path / f"{n}.log")
    pair = Pair(lab, Devices(hosts, nodes), phone, desk)
    wait_for(lambda: pair.paths() == ("direct", "direct"), timeout=30, what="a direct session")
    pair.arrivals = Lines(pair.devices.spawn_notes("desk", "arrivals"))
    try:
        pair.arrivals.wait_ready()
    except BaseException:
        pair.close()
        raise
    return pair


def writes_after_a_cut(pair: Pair, prefix: str) -> float:
    """(a): seconds from the cut until a note written after it reaches the desktop."""
    writer = Lines(pair.devices.spawn_notes("phone", "ticker", prefix, str(WRITE_EVERY)))
    try:
        wait_for(lambda: len([i for i in pair.arrived() if i.startswith(prefix)]) >= 10,
                 timeout=30, interval=0.05, what="notes arriving on the direct path")
        cut = time.time()
        pair.lab.cut_unicast(pair.phone, pair.desk)
        after = wait_for(lambda: _first_after(pair, writer, prefix, cut), timeout=60,
                         interval=0.05, what="a note written after the cut arriving")
    finally:
        writer.stop()
    pair.written += [words[0] for words, _ in writer.lines if words]
    return after - cut


def _first_after(pair: Pair, writer: Lines, prefix: str, cut: float) -> float | None:
    """The arrival time of the first note written after `cut`."""
    arrived = pair.arrived()
    times = [arrived[words[0]] for words, _ in writer.lines
             if len(words) == 2 and float(words[1]) >= cut and words[0] in arrived]
    return min(times) if times else None


def restored(pair: Pair) -> float:
    """(c): seconds from restoring the route until both ends are direct again."""
    opened = time.time()
    pair.lab.restore_unicast(pair.phone, pair.desk)
    wait_for(lambda: pair.paths() == ("direct", "direct"), timeout=90, interval=0.1,
             what="the move back to the direct path")
    return time.time() - opened


def write_after_idle(pair: Pair, idle: float, doc: str) -> float:
    """(b): cut while idle, wait `idle` s, write one note: seconds until it arrives."""
    pair.lab.cut_unicast(pair.phone, pair.desk)
    time.sleep(idle)
    writer = Lines(pair.devices.spawn_notes("phone", "ticker", doc, "3600"))
    try:
        written = wait_for(lambda: next((float(w[1]) for w, _ in writer.lines if len(w) == 2),
                                        None), timeout=30, interval=0.02, what="the write")
        arrived = wait_for(lambda: pair.arrived().get(f"{doc}0"), timeout=60, interval=0.05,
                           what="the note written after the idle cut")
    finally:
        writer.stop()
    pair.written.append(f"{doc}0")
    return arrived - written


def events_once_each(pair: Pair) -> dict[str, int]:
    """(c): every note written arrived exactly once on the desktop and exists once on
    the phone; the counts of lost and repeated events on each side."""
    wait_for(lambda: set(pair.written) <= set(pair.arrived()), timeout=60,
             what="every note on the desktop")
    desk = pair.arrival_ids()
    phone = pair.devices.notes("phone", "events")
    return {"desk_lost": len(set(pair.written) - set(desk)),
            "desk_repeated": len(desk) - len(set(desk)),
            "phone_lost": len(set(pair.written) - set(phone)),
            "phone_repeated": len(phone) - len(set(phone))}
