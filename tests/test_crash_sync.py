"""kill -9 of a node in the middle of syncing 10k documents: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import signal
import socket

from p2pgate.client import Client
from tests.api.conftest import start_node
from tests.lab import make_node_dir, trust_each_other, wait_for

DOCS = 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def write_many(url, token, prefix, count, concurrency=16):
    async with Client(url, token) as c:
        async def worker(k):
            for i in range(k, count, concurrency):
                await c.put("notes", f"{prefix}{i:05d}", {"i": i, "body": "x" * 100})
        await asyncio.gather(*(worker(k) for k in range(concurrency)))


async def cursor_of(url, token):
    async with Client(url, token) as c:
        return (await c.node()).cursor


async def count_docs(url, token):
    async with Client(url, token) as c:
        total, after = 0, None
        while True:
            page = await c.list_docs("notes", limit=1000, after=after)
            total += len(page.items)
            if page.next_after is None:
                return total
            after = page.next_after


def test_kill_9_while_syncing_then_restart_converges(tmp_path, allow_blocking):
    ports = {"phone": free_port(), "desk": free_port()}
    dirs = {n: make_node_dir(tmp_path, n) for n in ports}
    trust_each_other(dirs["phone"], dirs["desk"], [f"127.0.0.1:{ports['phone']}"],
                     [f"127.0.0.1:{ports['desk']}"])

    def start(name):
        return start_node(dirs[name].data_dir.root, "--listen", f"127.0.0.1:{ports[name]}",
                          config="rate_limit = 100000\nrate_burst = 100000\n")

    phone = start("phone")
    asyncio.run(write_many(phone.url, phone.admin_token, "p", DOCS))
    phone.stop()
    desk = start("desk")  # the phone is away: these writes are the desktop's alone
    try:
        asyncio.run(write_many(desk.url, desk.admin_token, "d", 200, concurrency=4))
        phone = start("phone")  # the initial sync starts; pull the plug in the middle of it
        wait_for(lambda: asyncio.run(cursor_of(desk.url, desk.admin_token)) > 1200,
                 timeout=60, interval=0.02, what="sync under way")
        desk.stop(signal.SIGKILL)
        assert desk.process.returncode == -signal.SIGKILL

        desk = start("desk")
        survived = asyncio.run(count_docs(desk.url, desk.admin_token))
        assert survived >= 200  # every acknowledged desktop write is there
        assert survived < DOCS + 200, "the kill should land before the sync finished"
        wait_for(lambda: asyncio.run(count_docs(desk.url, desk.admin_token)) == DOCS + 200,
                 timeout=120, interval=0.5, what="desktop converged")
        wait_for(lambda: asyncio.run(count_docs(phone.url, phone.admin_token)) == DOCS + 200,
                 timeout=60, interval=0.5, what="phone converged")
    finally:
        phone.stop()
        desk.stop()
