"""SIGKILL of a process applying large sync batches to the libSQL store, at random points.

A child process syncs 2,000 documents from an in-memory replica into a replica on
an encrypted libSQL file, printing what each committed batch acknowledged; we
kill it at a random moment (12 runs per mode: version vectors, and filtered state
reconciliation). After each kill the store passes integrity_check, holds whole
batches only, keeps everything acknowledged, and a new sync completes.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from p2pgate.storage.database import connect, migrate
from p2pgate.storage.syncstore import LibsqlStorage
from sync import CollectionPolicy, PeerPolicy, Replica

KEY = "c" * 32
DOCS = 2000
RUNS = 12
T0 = 1_700_000_000.0
FILTER = PeerPolicy({"c": CollectionPolicy("both", {"k": 0})})

CHILD = textwrap.dedent("""
    import sys
    from tests.test_sync_crash import source, target, sync
    path, mode = sys.argv[1], sys.argv[2]
    a, (b, conn) = source(mode), target(path, mode)
    print("START", flush=True)
    sync(a, b, lambda: print("ACK", len(b.list_docs("c", limit=10**6)),
                             b.version_vector().get("A", 0), flush=True))
    print("DONE", flush=True)
""")


def source(mode: str) -> Replica:
    """The same 2,000 documents every time (time is an argument)."""
    a = Replica("A")
    for i in range(DOCS):
        a.put("c", f"d{i:05}", {"k": i % 2, "body": "b" * 200, "i": i}, T0 + i / 1000)
    if mode == "filtered":
        a.set_policy("B", FILTER)
    return a


def target(path: str, mode: str) -> tuple[Replica, object]:
    conn = connect(Path(path), KEY)
    migrate(conn)
    b = Replica("B", LibsqlStorage(conn))
    if mode == "filtered":
        b.set_policy("A", FILTER)
    return b, conn


def sync(a: Replica, b: Replica, acked=lambda: None) -> None:
    now = T0 + 10
    sa, sb = a.connect("B", now), b.connect("A", now)
    for _ in range(1000):
        moved = 0
        for data in sa.messages_to_send(now):
            sb.receive(data, now)  # one committed transaction per message
            acked()
            moved += 1
        for data in sb.messages_to_send(now):
            sa.receive(data, now)
            moved += 1
        if not moved:
            return
    raise AssertionError("sync does not settle")


def expected(a: Replica, mode: str) -> dict[str, dict]:
    docs = dict(a.list_docs("c", limit=10**6))
    return {k: v for k, v in docs.items() if mode == "complete" or v["k"] == 0}


@pytest.mark.parametrize("mode", ["complete", "filtered"])
def test_sigkill_while_applying_sync_batches(tmp_path, mode):
    rng = random.Random(5)
    a = source(mode)
    want = expected(a, mode)
    root = Path(__file__).resolve().parents[1]
    interrupted = 0
    for run in range(RUNS):
        path = tmp_path / f"{mode}{run}.db"
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), mode], cwd=root,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "START"
        time.sleep(rng.uniform(0.0, 0.18 if mode == "complete" else 0.1))
        child.send_signal(signal.SIGKILL)
        lines = child.stdout.read().split("\n")
        child.stdout.close()
        child.wait()
        acks = [tuple(map(int, line.split()[1:])) for line in lines if line.startswith("ACK")]
        docs_acked, seq_acked = acks[-1] if acks else (0, 0)
        interrupted += "DONE" not in lines

        b, conn = target(str(path), mode)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            held = dict(b.list_docs("c", limit=10**6))
            assert len(held) >= docs_acked
            assert b.version_vector().get("A", 0) >= seq_acked
            assert all(want[k] == v for k, v in held.items())  # whole documents only
            if mode == "complete":  # whole batches: exactly a prefix of A's log
                assert set(held) == {f"d{i:05}" for i in range(b.version_vector().get("A", 0))}
            sync(a, b)
            assert dict(b.list_docs("c", limit=10**6)) == want
        finally:
            conn.close()  # type: ignore[attr-defined]
    assert interrupted >= RUNS // 3  # many kills landed before the sync finished
