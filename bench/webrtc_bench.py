"""WebRTC bench: data channel throughput against its baselines, and the move from the
relay to WebRTC per NAT pair (needs root: everything runs in network namespaces).

(1) Throughput, two processes in two namespaces on one bridge (tests/lab.py `Lab`), the
    receiver timing its first to its last byte; `--mib` MiB (32 by default), median of
    `--runs` interleaved runs, one pair of processes per run:
      raw      an aiortc data channel set up exactly like ours (`PeerAttempt`), messages
               of our `MESSAGE_SIZE`, `bufferedAmount` backpressure, aiortc's socket
               buffers: the baseline (target: stream >= 0.9x raw)
      rawbuf   the same with the UDP socket buffers WebRtcStream asks for
      stream   our `WebRtcStream` over it (the bare byte pipe, 64 KiB writes)
      stream16 the same as first written (16 KiB messages, default socket buffers)
      session  admission + pinned TLS + a `Session` over `WebRtcStream`, as the node uses
               it (64 KiB frames)
      tcp      a direct session over TCP between the same namespaces
      relay    a session relayed through `p2pgate relay` (its own process, a third
               namespace; the relay_bench rate settings)
(2) Connect time per NAT pair of tests/natlab.py: real relay and node processes with
    default settings, fresh devices each run; from the moment both nodes report a
    relayed session (its `since`) to both reporting `webrtc` (their `last_move.at`),
    p50 and p95, and the share of runs that end where the lab says they can
    (`webrtc` for punchable pairs, still `relay` after 12 s for the others).

    .venv/bin/python bench/webrtc_bench.py [--part throughput|connect|both] [--runs 5]
        [--mib 32] [--kinds raw,stream,session,tcp,relay] [--uvloop] [--profile]
        [--pairs port-restricted:port-restricted,...]

`--uvloop` runs the throughput workers on uvloop (it must be installed; it is not a
dependency). `--profile` runs each worker under cProfile and prints the top of the
sender's and the receiver's profile of the last run of each kind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import itertools
import json
import os
import pstats
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from relay_bench import RELAY_CONFIG  # noqa: E402 (limits raised out of the bench's way)
from session_throughput import CHUNK  # noqa: E402

KINDS = ("raw", "rawbuf", "stream", "stream16", "session", "tcp", "relay")
RELAY_PORT = 8443


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


# ---------------------------------------------------------------- (1) the two workers


def _say(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def _hear() -> dict[str, Any]:
    line = await asyncio.to_thread(sys.stdin.readline)
    if not line:
        raise SystemExit("the bench went away")
    return dict(json.loads(line))


async def _trust(root: str) -> tuple[Any, Any, Any]:
    from p2pgate.identity import Identity
    from p2pgate.identity.paths import DataDir
    from p2pgate.net import Trust
    from p2pgate.storage.database import Database, load_key
    from p2pgate.storage.registry import DeviceRegistry

    data_dir = DataDir(Path(root))
    identity = Identity.load(data_dir)
    db = await Database.open(data_dir.database, load_key(data_dir.database_key))
    trust = Trust(DeviceRegistry(db), data_dir.device_cert, data_dir.device_key)
    await trust.load()
    return identity, trust, db


class Receiver:
    """Counts bytes; `rate` once `total` arrived (first byte to last byte)."""

    def __init__(self, total: int) -> None:
        self.total, self.got, self.first = total, 0, 0.0
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def count(self, n: int) -> None:
        now = time.perf_counter()
        self.first = self.first or now
        self.got += n
        if self.got >= self.total and not self.done.done():
            self.done.set_result(self.got / max(now - self.first, 1e-9))


async def worker(args: argparse.Namespace) -> None:
    """One end of one transfer; the receiver speaks first (offer / ready), the sender
    answers, the receiver prints `{"rate": …}` once everything arrived."""
    from p2pgate.identity.deviceid import DeviceID
    from p2pgate.net import Listener, PeerHello, dial, webrtc
    from p2pgate.net.webrtc import PeerAttempt, WebRtcStream

    kind, total = args.worker, args.mib << 20
    raw_message = webrtc.MESSAGE_SIZE
    if args.message:
        webrtc.MESSAGE_SIZE = args.message
    if kind == "stream16":  # the stream as first written: 16 KiB messages, default buffers
        kind, webrtc.MESSAGE_SIZE, args.socket_buffer = "stream", 16 << 10, 0
    if args.window:
        webrtc.RECEIVE_WINDOW = args.window
    buffers = webrtc.SOCKET_BUFFER  # what rawbuf asks for, whatever ours are set to
    if args.socket_buffer >= 0:
        webrtc.SOCKET_BUFFER = args.socket_buffer
    profile = cProfile.Profile() if args.profile_to else None
    sending = args.worker_role == "send"
    payload = os.urandom(CHUNK)
    identity, trust, db = await _trust(args.dir)
    peer = DeviceID.parse(args.peer)
    hello = PeerHello(str(identity.device_id), args.worker_role)
    receiver = Receiver(total)
    tasks: list[asyncio.Future[Any]] = []

    async def on_session(session: Any) -> None:
        from p2pgate.net import SessionError

        with contextlib.suppress(SessionError):
            while True:
                receiver.count(len(await session.receive()))

    listener = Listener(trust, lambda: hello, on_session)
    stream: Any = None
    if kind in ("raw", "rawbuf", "stream", "session"):
        if sending:
            attempt = await PeerAttempt.answer((await _hear())["sdp"])
            _say({"sdp": attempt.local_sdp})
        else:
            attempt = await PeerAttempt.offer()
            _say({"sdp": attempt.local_sdp})
            await attempt.accept_answer((await _hear())["sdp"])
        channel = attempt.channel
        if kind in ("raw", "rawbuf"):
            await attempt._open.wait()  # noqa: SLF001 (a bench: the bare channel)
            if kind == "rawbuf":
                webrtc.enlarge_socket_buffers(attempt.pc, buffers)
            if not sending:
                channel.on("message", lambda m: receiver.count(len(m)))
        else:
            stream = await attempt.opened()
            if kind == "session" and not sending:
                tasks.append(asyncio.ensure_future(listener.handle(stream)))
            elif kind == "stream" and not sending:
                async def drain(s: WebRtcStream = stream) -> None:
                    while data := await s.read(1 << 20):
                        receiver.count(len(data))
                tasks.append(asyncio.ensure_future(drain()))
    elif kind == "tcp":
        if sending:
            where = await _hear()
            _say({})
        else:
            await listener.start(args.ip, 0)
            _say({"ip": args.ip, "port": listener.port})
            await _hear()
    else:  # relay
        from p2pgate.relay.client import RelayClient

        async def trusted(_: DeviceID) -> bool:
            return True

        relay = RelayClient(args.url, identity, trusted, listener.handle)
        tasks.append(asyncio.ensure_future(relay.run()))
        await relay.wait_connected()
        if sending:
            await _hear()
            _say({})
        else:
            _say({})
            await _hear()
    udp_before = _udp_counters()
    if profile is not None:
        profile.enable()
    if sending:
        if kind in ("raw", "rawbuf"):
            low = asyncio.Event()
            channel.bufferedAmountLowThreshold = webrtc.LOW_WATER
            channel.on("bufferedamountlow", low.set)
            message = os.urandom(raw_message)
            for _ in range(-(-total // len(message))):  # at least `total` bytes
                while channel.bufferedAmount > webrtc.HIGH_WATER:
                    low.clear()
                    await low.wait()
                channel.send(message)
        elif kind == "stream":
            for _ in range(total // CHUNK):
                await stream.write(payload)
        else:
            if kind == "session":
                session = await dial(trust, hello, peer, "webrtc", 0, stream=stream)
            elif kind == "tcp":
                session = await dial(trust, hello, peer, where["ip"], where["port"])
            else:
                session = await dial(trust, hello, peer, args.url, 0,
                                     stream=await relay.connect(peer))
            for _ in range(total // CHUNK):
                await session.send(payload)
        await _hear()  # the receiver has everything
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile_to)
        _say({})
        await asyncio.sleep(3600)  # the bench ends us
    rate = await receiver.done
    if profile is not None:
        profile.disable()
        profile.dump_stats(args.profile_to)
    _say({"rate": rate, "udp": {k: v - udp_before[k] for k, v in _udp_counters().items()}})
    await asyncio.sleep(3600)
    del db, tasks


def _udp_counters() -> dict[str, int]:
    """This namespace's UDP counters (/proc/net/snmp): drops show up as RcvbufErrors."""
    rows = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
            if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=True)
            if k in ("InDatagrams", "RcvbufErrors", "InErrors")}


def _run_worker(args: argparse.Namespace) -> None:
    if args.uvloop:
        import uvloop

        uvloop.run(worker(args))
    else:
        asyncio.run(worker(args))


# ---------------------------------------------------------------- (1) the driver


def _worker_argv(args: argparse.Namespace, kind: str, role: str, node: Any, peer: Any,
                 ip: str, url: str, profile: Path | None) -> list[str]:
    argv = [sys.executable, __file__, "--worker", kind, "--worker-role", role,
            "--dir", str(node.data_dir.root), "--peer", peer.device_id, "--ip", ip,
            "--url", url, "--mib", str(args.mib)]
    if args.message:
        argv += ["--message", str(args.message)]
    if args.window:
        argv += ["--window", str(args.window)]
    if args.uvloop:
        argv.append("--uvloop")
    if args.socket_buffer >= 0:
        argv += ["--socket-buffer", str(args.socket_buffer)]
    if profile is not None:
        argv += ["--profile-to", str(profile)]
    return argv


def _readline(proc: subprocess.Popen[str], deadline: float, what: str, log: Path) -> str:
    """The worker's next line, or RuntimeError (with its log) past `deadline`."""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        ready = selector.select(max(0.0, deadline - time.monotonic()))
    line = proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
    if not line:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{what}: no answer (exit {proc.poll()})\n{tail}")
    return line


def one_transfer(args: argparse.Namespace, kind: str, hosts: dict[str, Any],
                 nodes: dict[str, Any], url: str, tmp: Path, profile: bool) -> float:
    """Bytes per second the receiver saw for one transfer of `kind`."""
    procs, logs = {}, {}
    deadline = time.monotonic() + 60 + (args.mib << 20) / 2e6  # 2 MB/s at the least
    try:
        for role, me, other in (("recv", "b", "a"), ("send", "a", "b")):
            prof = tmp / f"{kind}-{role}.prof" if profile else None
            logs[role] = tmp / f"{kind}-{role}.log"
            with logs[role].open("w") as err:
                procs[role] = subprocess.Popen(  # noqa: S603
                    ["ip", "netns", "exec", hosts[me].ns,  # noqa: S607
                     *_worker_argv(args, kind, role, nodes[me], nodes[other], hosts[me].ip,
                                   url, prof)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                    start_new_session=True, cwd=ROOT)

        def relay(src: str, dst: str) -> None:
            line = _readline(procs[src], deadline, f"{kind} {src}er", logs[src])
            procs[dst].stdin.write(line)  # type: ignore[union-attr]
            procs[dst].stdin.flush()  # type: ignore[union-attr]

        relay("recv", "send")
        relay("send", "recv")
        try:
            line = _readline(procs["recv"], deadline, f"{kind} receiver", logs["recv"])
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\nsender: {logs['send'].read_text()[-2000:]}") from None
        procs["send"].stdin.write("{}\n")  # type: ignore[union-attr]
        procs["send"].stdin.flush()  # type: ignore[union-attr] (it may write its profile)
        _readline(procs["send"], time.monotonic() + 30, f"{kind} sender", logs["send"])
        result = json.loads(line)
        if result["udp"].get("RcvbufErrors"):
            print(f"  ({kind}: the receiver's UDP socket dropped {result['udp']['RcvbufErrors']}"
                  f" of {result['udp']['InDatagrams']} datagrams)", file=sys.stderr)
        return float(result["rate"])
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def throughput(args: argparse.Namespace) -> None:
    from tests.lab import Lab, make_node_dir, trust_each_other

    kinds = [k for k in args.kinds.split(",") if k]
    lab = Lab()
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            hosts = {"a": lab.host("bencha"), "b": lab.host("benchb")}
            relay_host = lab.host("relay")
            nodes = {n: make_node_dir(tmp, n) for n in hosts}
            trust_each_other(nodes["a"], nodes["b"])
            url = f"ws://{relay_host.ip}:{RELAY_PORT}"
            if "relay" in kinds:
                (tmp / "relay.toml").write_text(RELAY_CONFIG)
                relay_host.spawn(sys.executable, "-m", "p2pgate", "--data-dir",
                                 str(tmp / "relaydata"), "relay", "--listen",
                                 f"{relay_host.ip}:{RELAY_PORT}", "--config",
                                 str(tmp / "relay.toml"), log=tmp / "relay.log")
            results: dict[str, list[float]] = {k: [] for k in kinds}
            for run in range(args.runs):
                order = kinds[run % len(kinds):] + kinds[:run % len(kinds)]
                for kind in order:
                    last = args.profile and run == args.runs - 1
                    results[kind].append(one_transfer(args, kind, hosts, nodes, url, tmp,
                                                      last))
                    print(f"  run {run + 1} {kind:8} {results[kind][-1] / 1e6:8.1f} MB/s",
                          file=sys.stderr, flush=True)
            _print_throughput(args, results)
            if args.profile:
                for kind in kinds:
                    for role in ("send", "recv"):
                        print(f"\n--- cProfile, {kind} {role}er (top 14 by own time)")
                        pstats.Stats(str(tmp / f"{kind}-{role}.prof")).sort_stats(
                            "tottime").print_stats(14)
    finally:
        lab.close()


def _print_throughput(args: argparse.Namespace, results: dict[str, list[float]]) -> None:
    loop = "uvloop" if args.uvloop else "asyncio"
    extra = "".join(f", {name} {value}" for name, value in
                    (("message", args.message), ("window", args.window)) if value)
    print(f"\nthroughput: {args.mib} MiB between two namespaces on a bridge, median of "
          f"{args.runs} interleaved runs, receiver's first to last byte ({loop}{extra})")
    raw = statistics.median(results["raw"]) if results.get("raw") else None
    labels = {"raw": "raw aiortc data channel", "rawbuf": "raw, socket buffers as ours",
              "stream": "WebRtcStream (bare)",
              "stream16": "WebRtcStream 16K, def. bufs",
              "session": "session over WebRtcStream", "tcp": "session over direct TCP",
              "relay": "session through the relay"}
    for kind, rates in results.items():
        median = statistics.median(rates)
        ratio = f"{median / raw:6.2f}x raw" if raw else ""
        spread = f"(min {min(rates) / 1e6:.1f}, max {max(rates) / 1e6:.1f})"
        print(f"  {labels[kind]:28} {median / 1e6:8.1f} MB/s  {ratio:12} {spread}")
    if raw and results.get("stream"):
        print(f"  target: stream >= 0.9x raw -> "
              f"{statistics.median(results['stream']) / raw:.2f}x")


# ---------------------------------------------------------------- (2) connect time


async def watch(root: str, token_name: str, seconds: float) -> None:
    """Inside a host: poll the node's peer list, print each new path with the node's
    own timestamps (`since`, `last_move`) until `webrtc` or `seconds` passed."""
    from p2pgate.client import Client

    runtime = Path(root) / "node.json"
    deadline = time.monotonic() + seconds
    while not runtime.exists():  # noqa: ASYNC110 (another process writes it)
        await asyncio.sleep(0.02)
    api = json.loads(runtime.read_text())["api_url"]
    token = (Path(root) / token_name).read_text().strip()
    seen = None
    async with Client(api, token) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                items = (await client.peers()).items
                path = items[0]["path"] if items else None
                if path != seen and path is not None:
                    seen = path
                    _say({"path": path, "since": items[0]["since"],
                          "last_move": items[0]["last_move"], "seen": time.time()})
                    if path == "webrtc":
                        return
            await asyncio.sleep(0.05)


UNPUNCHABLE = {frozenset({"symmetric"}), frozenset({"symmetric", "port-restricted"})}


def one_connect(lab: Any, tmp: Path, punchable: bool) -> tuple[bool, float | None]:
    """Whether the pair ended where the lab says it should (a punchable pair on webrtc
    within 30 s, another still on the relay after 12 s), and for a punchable pair the
    seconds from both relayed to both on webrtc (None if neither watcher saw the
    relayed session: it did not last one poll)."""
    from tests.lab import make_node_dir, trust_each_other
    from tests.natlab import RELAY_IP

    sides = {"a": lab.a, "b": lab.b}
    nodes = {n: make_node_dir(tmp, n) for n in sides}
    trust_each_other(nodes["a"], nodes["b"])
    token_name = nodes["a"].data_dir.admin_token.name
    wait = 30.0 if punchable else 12.0
    watchers, procs = {}, []
    try:
        for n, side in sides.items():
            watchers[n] = side.host.spawn(sys.executable, __file__, "--watch",
                                          str(nodes[n].data_dir.root), "--watch-timeout",
                                          str(wait + 20), "--token-name", token_name,
                                          log=tmp / f"watch-{n}.log")
            procs.append(side.host.spawn(
                sys.executable, "-m", "p2pgate", "--data-dir", str(nodes[n].data_dir.root),
                "node", "--api", "127.0.0.1:0", "--listen", f"{side.host.ip}:7771",
                "--no-mdns", "--no-dht", "--relay", f"ws://{RELAY_IP}:{RELAY_PORT}",
                log=tmp / f"{n}.log"))
        deadline = time.monotonic() + wait + 20
        relayed_by = time.monotonic() + wait + 20
        while time.monotonic() < deadline:
            lines = {n: _lines(tmp / f"watch-{n}.log") for n in sides}
            paths = {n: [x["path"] for x in lines[n]] for n in sides}
            if all("webrtc" in p for p in paths.values()):
                if not punchable:
                    return False, None
                starts = [x["since"] for n in sides for x in lines[n] if x["path"] == "relay"]
                end = max((x["last_move"] or {}).get("at", x["since"]) for n in sides
                          for x in lines[n] if x["path"] == "webrtc")
                return True, (end - max(starts) if starts else None)
            if all("relay" in p for p in paths.values()):
                relayed_by = min(relayed_by, time.monotonic() + wait)
                deadline = min(deadline, relayed_by)
            time.sleep(0.1)
        relayed = all("relay" in [x["path"] for x in _lines(tmp / f"watch-{n}.log")]
                      for n in sides)
        return not punchable and relayed, None
    finally:
        for proc in procs + list(watchers.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


def connect(args: argparse.Namespace) -> None:
    from tests.natlab import NAT_TYPES, NatLab

    if args.pairs:
        pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    else:
        pairs = list(itertools.combinations_with_replacement(NAT_TYPES, 2))
    rows = []
    for nat_a, nat_b in pairs:
        punchable = frozenset({nat_a, nat_b}) not in UNPUNCHABLE
        lab = NatLab(nat_a, nat_b)  # type: ignore[arg-type]
        times: list[float] = []
        ok = 0
        try:
            with tempfile.TemporaryDirectory() as tmp_name:
                tmp = Path(tmp_name)
                lab.start_relay(tmp / "relay", "--listen", f"0.0.0.0:{RELAY_PORT}")
                for run in range(args.runs):
                    run_dir = tmp / f"run{run}"
                    run_dir.mkdir()
                    good, took = one_connect(lab, run_dir, punchable)
                    ok += good
                    if took is not None:
                        times.append(took)
                    print(f"  {nat_a} x {nat_b} run {run + 1}: {'ok' if good else 'MISS'}"
                          f"{'' if took is None else f' {took:.2f} s'}",
                          file=sys.stderr, flush=True)
        finally:
            lab.close()
        rows.append((nat_a, nat_b, punchable, times, ok))
    print(f"\nrelay -> webrtc per NAT pair, {args.runs} runs each (fresh devices per run, "
          "default settings; from both relayed to both on webrtc, the nodes' own clocks)")
    print(f"  {'pair':34} {'expect':7} {'ok':>6} {'p50 s':>7} {'p95 s':>7}")
    for nat_a, nat_b, punchable, times, ok in rows:
        p50 = f"{statistics.median(times):7.2f}" if times else "      -"
        top = f"{p95(times):7.2f}" if times else "      -"
        print(f"  {nat_a + ' x ' + nat_b:34} {'webrtc' if punchable else 'relay':7} "
              f"{100 * ok // args.runs:5d}% {p50} {top}")
    print("  targets: 100 % for every pair, p50 <= 1.5 s for punchable pairs")


# ---------------------------------------------------------------- main


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # the labs' `finally` cleans up
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["throughput", "connect", "both"], default="both")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--pairs", default="", help="NAT_A:NAT_B,... (default: all)")
    parser.add_argument("--message", type=int, default=0,
                        help="bytes per WebRtcStream message (raw keeps MESSAGE_SIZE)")
    parser.add_argument("--window", type=int, default=0, help="WebRtcStream receive window")
    parser.add_argument("--socket-buffer", type=int, default=-1,
                        help="WebRtcStream's UDP socket buffers (0: leave the defaults)")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--profile", action="store_true")
    for hidden in ("--worker", "--worker-role", "--dir", "--peer", "--ip", "--url",
                   "--watch", "--token-name", "--profile-to"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--watch-timeout", type=float, default=60, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _run_worker(args)
    elif args.watch:
        asyncio.run(watch(args.watch, args.token_name, args.watch_timeout))
    else:
        if args.part in ("throughput", "both"):
            throughput(args)
        if args.part in ("connect", "both"):
            connect(args)


if __name__ == "__main__":
    main()
