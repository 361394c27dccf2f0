"""A tiny PATCH of a large document vs of a small one, on the node's real libSQL store.

The documents service runs in process on an encrypted libSQL file (durability full,
the default). One collection holds a small document and one whose `set` field is
grown to just under the 2 MiB stored-state limit. Each round times, interleaved:

- `small`: tiny PATCHes of the small document (the baseline);
- `large`: the same PATCHes of the large document, the document returned (default);
- `large minimal`: the same, without rendering it (`Prefer: return=minimal`);
- `large +1`: one more element `$add`ed to the large set itself (minimal);
- `large uncached`: the same with the state cache emptied before each write, so the
  whole state is decoded and every field encoded again (what every write cost before).

Five rounds, median of each round's median; ratios against `small`.

    .venv/bin/python bench/write_cost_bench.py [--ops 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from p2pgate.documents import Documents, DocumentTooLarge
from p2pgate.identity import Identity
from p2pgate.storage.database import Database

ROUNDS = 5


async def _grow(docs: Documents) -> int:
    size, chunk = 0, 2_000
    while True:
        try:
            await docs.patch("big", "large", {"tags": {"$add": list(range(size, size + chunk))}},
                             None)
        except DocumentTooLarge:
            return size
        size += chunk


async def _timed(ops: int, write: Callable[[int], Awaitable[Any]],
                 before: Callable[[], Awaitable[None]] | None = None) -> float:
    times = []
    for i in range(ops):
        if before is not None:
            await before()
        started = time.perf_counter()
        await write(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def main(ops: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = await Database.open(Path(tmp) / "db", "k" * 32)
        try:
            docs = await Documents.open(db, Identity.generate().device_id)
            await docs.declare("big", {"tags": "set"})
            await docs.put("big", "small", {"n": 0}, None)
            await docs.put("big", "large", {"n": 0}, None)
            elements = await _grow(docs)
            size = await db.run(lambda c: c.execute(
                "SELECT length(state) FROM sync_docs WHERE doc_id = 'large'").fetchone()[0])

            async def forget() -> None:
                await db.run(lambda _: docs._storage._cache.clear())  # noqa: SLF001

            targets: dict[str, Callable[[], Awaitable[float]]] = {
                "small": lambda: _timed(ops, lambda i: docs.patch(
                    "big", "small", {"n": i}, None)),
                "large": lambda: _timed(ops, lambda i: docs.patch(
                    "big", "large", {"n": i}, None)),
                "large minimal": lambda: _timed(ops, lambda i: docs.patch(
                    "big", "large", {"n": i}, None, render=False)),
                "large +1": lambda: _timed(ops, lambda i: docs.patch(
                    "big", "large", {"tags": {"$add": [-i - 1]}}, None, render=False)),
                "large uncached": lambda: _timed(ops, lambda i: docs.patch(
                    "big", "large", {"n": i}, None), forget),
            }
            results: dict[str, list[float]] = {name: [] for name in targets}
            for _ in range(ROUNDS):
                for name, run in targets.items():
                    results[name].append(await run())
        finally:
            await db.close()
    base = statistics.median(results["small"])
    print(f"large document: {elements} set elements, {size / 2**20:.2f} MiB stored state; "
          f"{ops} tiny PATCHes per target, median of {ROUNDS} rounds")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:15} {median * 1000:8.1f} ms   x{median / base:6.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20)
    asyncio.run(main(parser.parse_args().ops))
