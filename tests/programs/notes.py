"""An app on a device: the `notes` collection through the SDK (URL TOKEN OP ARGS...).

Document OPs print the document (or `{"error": STATUS}`): `put ID JSON`, `patch ID JSON`,
`get ID`, `conflicts ID`, and `cput`/`cget` with a collection first; `revoke DEVICE`.
Others: `ids`, `count` (pages through the collection), `events` (every change so far,
by ID), `watch ID` (prints change events until one for ID), `peers`, `relays`, `alone` (prints
`ready` once a peer is connected, then the wall-clock time at which none is), `path
WAS NOW` (prints `ready` once the first peer's path is WAS, then the time it is NOW), `write
PREFIX COUNT` (16 concurrent writers), `wait CURSOR` (until the node's cursor passes it),
`ticker PREFIX EVERY` (writes PREFIX0, PREFIX1, ... every EVERY seconds, each with its
wall-clock write time `t`, until killed; prints `ID T` once written), `arrivals` (prints
`ID TIME` for every change from now on, TIME the wall clock when the event arrived;
`ready` first), `drive` (one program for a test to watch and drive a node with, until
killed: prints `peers JSON` at start and whenever the peers' paths or session starts
change, JSON a compact `[{"path": ..., "since": ...}]`; `event ID TIME` for every change
from its start; `put ID` once it has put a note for each `put ID JSON` line on stdin).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from p2pgate.client import Client, ClientError


async def _count(c: Client) -> int:
    total, after = 0, None
    while True:
        page = await c.list_docs("notes", limit=1000, after=after)
        total += len(page.items)
        if page.next_after is None:
            return total
        after = page.next_after


async def _write(c: Client, prefix: str, count: int) -> None:
    async def worker(k: int) -> None:
        for i in range(k, count, 16):
            await c.put("notes", f"{prefix}{i:05d}", {"i": i, "body": "x" * 100})

    await asyncio.gather(*(worker(k) for k in range(16)))


async def _events(c: Client) -> list[str]:
    ids: list[str] = []

    async def collect() -> None:
        async for event in c.events(cursor=0):
            ids.append(event.id)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(collect(), 2)
    return ids


async def _document(c: Client, op: str, args: tuple[str, ...]) -> Any:
    if op == "cput":
        return await c.put(args[0], args[1], json.loads(args[2]))
    if op == "cget":
        return await c.get(args[0], args[1])
    if op == "put":
        return await c.put("notes", args[0], json.loads(args[1]))
    if op == "patch":
        return await c.patch("notes", args[0], json.loads(args[1]))
    if op == "get":
        return await c.get("notes", args[0])
    if op == "conflicts":
        return await c.conflicts("notes", args[0])
    return await c.device_action(args[0], "revoke")


async def _path_becomes(c: Client, was: str, now: str) -> None:
    async def path() -> str | None:
        items = (await c.peers()).items
        return str(items[0]["path"]) if items else None

    while await path() != was:  # noqa: ASYNC110 (polling another process)
        await asyncio.sleep(0.02)
    print("ready", flush=True)
    while await path() != now:  # noqa: ASYNC110 (polling another process)
        await asyncio.sleep(0.02)
    print(time.time())


async def _ticker(c: Client, prefix: str, every: float) -> None:
    n = 0
    while True:
        started, stamp = time.monotonic(), time.time()
        await c.put("notes", f"{prefix}{n}", {"t": stamp})
        print(f"{prefix}{n}", stamp, flush=True)
        n += 1
        await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))


async def _drive(c: Client) -> None:
    async def peers() -> None:
        shown = None
        while True:
            now = [{"path": p["path"], "since": p["since"]} for p in (await c.peers()).items]
            if now != shown:
                print("peers", json.dumps(now, separators=(",", ":")), flush=True)
                shown = now
            await asyncio.sleep(0.05)

    async def events(cursor: int) -> None:
        async for event in c.events(cursor=cursor):
            print("event", event.id, time.time(), flush=True)

    async def puts() -> None:
        while line := await asyncio.to_thread(sys.stdin.readline):
            _, doc, body = line.split(" ", 2)
            await c.put("notes", doc, json.loads(body))
            print("put", doc, flush=True)

    cursor = (await c.node()).cursor
    await asyncio.gather(peers(), events(cursor), puts())


async def _arrivals(c: Client) -> None:
    cursor = (await c.node()).cursor
    print("ready", flush=True)
    async for event in c.events(cursor=cursor):
        print(event.id, time.time(), flush=True)


async def main(url: str, token: str, op: str, *args: str) -> None:
    async with Client(url, token) as c:
        if op in ("put", "patch", "get", "conflicts", "cput", "cget", "revoke"):
            try:
                answer = (await _document(c, op, args)).model_dump(mode="json")
            except ClientError as exc:
                answer = {"error": exc.status}
            print(json.dumps({**answer, "at": time.time()} if op == "revoke" else answer))
        elif op == "alone":
            while not (await c.peers()).items:  # noqa: ASYNC110 (polling another process)
                await asyncio.sleep(0.02)
            print("ready", flush=True)
            while (await c.peers()).items:  # noqa: ASYNC110 (polling another process)
                await asyncio.sleep(0.02)
            print(time.time())
        elif op == "ids":
            print(json.dumps(sorted(d.id for d in (await c.list_docs("notes", limit=1000)).items)))
        elif op == "count":
            print(await _count(c))
        elif op == "events":
            print(json.dumps(await _events(c)))
        elif op == "watch":
            async for event in c.events(cursor=0):
                print(event.model_dump_json(), flush=True)
                if event.id == args[0]:
                    return
        elif op == "path":
            await _path_becomes(c, args[0], args[1])
        elif op == "peers":
            print(json.dumps((await c.peers()).items))
        elif op == "relays":
            print(json.dumps([r.model_dump(mode="json") for r in (await c.relays()).items]))
        elif op == "write":
            await _write(c, args[0], int(args[1]))
        elif op == "ticker":
            await _ticker(c, args[0], float(args[1]))
        elif op == "arrivals":
            await _arrivals(c)
        elif op == "drive":
            await _drive(c)
        elif op == "wait":
            while (await c.node()).cursor <= int(args[0]):  # noqa: ASYNC110 (another process)
                await asyncio.sleep(0.005)
        else:
            raise SystemExit(f"unknown op {op!r}")


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(*sys.argv[1:]), 900))
