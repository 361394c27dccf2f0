"""Test hygiene shared by every test.

- blockbuster fails a test whose code blocks the running event loop
  (file I/O, sleeps, socket calls made synchronously inside a coroutine).
- Every test must leave no thread behind, and every async test no pending task.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

_THREAD_GRACE_S = 2.0


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Raise BlockingError when our code blocks the event loop."""
    with blockbuster_ctx() as bb:
        yield bb


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + _THREAD_GRACE_S
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    yield
    me = asyncio.current_task()
    for _ in range(3):  # let tasks that are finishing run to completion
        await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for t in leaked:
        t.cancel()
    # join asyncio.to_thread's workers now, so the thread check sees only real leaks
    await asyncio.get_running_loop().shutdown_default_executor()
    assert not leaked, f"test leaked tasks: {leaked}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "function", None)
        if fn is not None and inspect.iscoroutinefunction(fn):
            # right after the thread check: torn down after the test's own fixtures,
            # and before the thread check looks
            names = item.fixturenames  # type: ignore[attr-defined]
            at = names.index("no_leaked_threads") + 1 if "no_leaked_threads" in names else 0
            names.insert(at, "no_leaked_tasks")


@pytest.fixture
def allow_blocking(blockbuster: BlockBuster) -> Iterator[None]:
    """For a test that inspects files from inside the loop on purpose."""
    blockbuster.deactivate()
    yield
    blockbuster.activate()
