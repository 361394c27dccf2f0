import os
import signal
import subprocess
import sys
import textwrap

import pytest

from p2pgate.storage.database import (
    MIGRATIONS,
    Database,
    StoreError,
    connect,
    migrate,
    schema_version,
)

KEY = "0123456789abcdef" * 4
MARKER = b"PLAINTEXT-MARKER-7f3a"


def _raw_files(path):
    return [p for p in (path, path.with_name(path.name + "-wal"),
                        path.with_name(path.name + "-shm")) if p.exists()]


async def _insert_marker_rows(db, n=200):
    def _ins(conn):
        for i in range(n):
            conn.execute(
                "INSERT INTO devices (device_id, name, cert_der, k_pair, state, first_seen)"
                " VALUES (?, ?, ?, ?, 'trusted', 0)",
                (f"dev-{i}", MARKER.decode() + str(i), MARKER * 3, MARKER),
            )

    await db.write(_ins)


async def test_database_and_wal_files_hold_no_plaintext(tmp_path, allow_blocking):
    path = tmp_path / "p.db"
    db = await Database.open(path, KEY)
    await _insert_marker_rows(db)
    files_while_open = _raw_files(path)
    assert any(p.name.endswith("-wal") for p in files_while_open), "expected WAL mode"
    for p in files_while_open:
        assert MARKER not in p.read_bytes(), p.name
    rows = await db.run(lambda c: c.execute("SELECT count(*) FROM devices").fetchone())
    assert rows[0] == 200
    await db.close()
    for p in _raw_files(path):
        assert MARKER not in p.read_bytes(), p.name


async def test_wrong_or_missing_key_is_a_clear_error(tmp_path):
    path = tmp_path / "p.db"
    async with await Database.open(path, KEY) as db:
        await _insert_marker_rows(db, 1)
    with pytest.raises(StoreError, match="wrong database key"):
        await Database.open(path, "not-the-key")
    with pytest.raises(StoreError, match="empty database key"):
        await Database.open(path, "")


async def test_fresh_file_migrates_to_latest(tmp_path):
    async with await Database.open(tmp_path / "p.db", KEY) as db:
        assert await db.schema_version() == len(MIGRATIONS)
        tables = await db.run(
            lambda c: {r[0] for r in c.execute("SELECT name FROM sqlite_master").fetchall()}
        )
    assert {"devices", "meta", "app_tokens", "schema_version"} <= tables


async def test_migration_from_previous_version_keeps_data(tmp_path):
    path = tmp_path / "p.db"
    async with await Database.open(path, KEY, target_version=len(MIGRATIONS) - 1) as old:
        assert await old.schema_version() == len(MIGRATIONS) - 1
        await _insert_marker_rows(old, 3)
    async with await Database.open(path, KEY) as db:
        assert await db.schema_version() == len(MIGRATIONS)
        rows = await db.run(
            lambda c: c.execute("SELECT device_id, policy FROM devices ORDER BY 1").fetchall()
        )
    assert rows == [("dev-0", "{}"), ("dev-1", "{}"), ("dev-2", "{}")]


def test_migrating_twice_is_a_no_op_and_newer_schema_is_refused(tmp_path):
    conn = connect(tmp_path / "p.db", KEY)
    try:
        assert migrate(conn) == len(MIGRATIONS)
        assert migrate(conn) == len(MIGRATIONS)
        conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) + 1,))
        with pytest.raises(StoreError, match="newer than this p2pgate"):
            migrate(conn)
        assert schema_version(conn) == len(MIGRATIONS) + 1
    finally:
        conn.close()


async def test_failed_write_rolls_back_every_row(tmp_path):
    async with await Database.open(tmp_path / "p.db", KEY) as db:

        def _half_then_fail(conn):
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('a', '1')"
            )
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await db.write(_half_then_fail)
        count = await db.run(lambda c: c.execute("SELECT count(*) FROM meta").fetchone()[0])
        assert count == 0


async def test_large_integers_up_to_2_pow_53_survive(tmp_path):
    big = 2**53 - 1
    async with await Database.open(tmp_path / "p.db", KEY) as db:
        await db.write(lambda c: c.execute(
            "INSERT INTO devices (device_id, name, cert_der, state, first_seen)"
            " VALUES ('x', 'x', x'00', 'trusted', ?)", (big,)))
        got = await db.run(lambda c: c.execute("SELECT first_seen FROM devices").fetchone()[0])
    assert got == big


async def test_closed_database_refuses_work(tmp_path):
    db = await Database.open(tmp_path / "p.db", KEY)
    await db.close()
    with pytest.raises(StoreError, match="closed"):
        await db.run(lambda c: None)


# -- crash safety: SIGKILL in the middle of a multi-row write ------------------------

ROWS = 400
CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from p2pgate.storage.database import Database

    async def main(path, key, pause_at, rows):
        db = await Database.open(Path(path), key)
        def write(conn):
            for i in range(rows):
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)", (f"row-{i}", "x" * 500))
                if i == pause_at:
                    print("MID", flush=True)
                    time.sleep(60)
                elif pause_at < 0:
                    time.sleep(0.002)  # slow enough for a random kill to land mid-write
        await db.write(write)
        print("DONE", flush=True)
        await db.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    """
)


def _count_rows(path):
    conn = connect(path, KEY)
    try:
        migrate(conn)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return conn.execute("SELECT count(*) FROM meta").fetchone()[0]
    finally:
        conn.close()


def _spawn(path, pause_at):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), KEY, str(pause_at), str(ROWS)],
        stdout=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize("pause_at", [0, ROWS // 2, ROWS - 1])
def test_sigkill_mid_write_leaves_none_of_it(tmp_path, pause_at):
    path = tmp_path / "crash.db"
    child = _spawn(path, pause_at)
    try:
        assert child.stdout.readline().strip() == "MID"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert _count_rows(path) == 0


def test_sigkill_at_random_moments_leaves_all_or_none(tmp_path):
    import random
    import time

    seen = set()
    for run in range(8):
        path = tmp_path / f"crash-{run}.db"
        child = _spawn(path, pause_at=-1)
        time.sleep(random.uniform(0.2, 1.6))
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
        count = _count_rows(path) if path.exists() else 0
        assert count in (0, ROWS)
        seen.add(count)
    # a completed write survives too
    path = tmp_path / "complete.db"
    child = _spawn(path, pause_at=-1)
    out, _ = child.communicate(timeout=60)
    assert "DONE" in out
    assert _count_rows(path) == ROWS
