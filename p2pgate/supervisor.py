"""Background tasks that never die silently.

Every long-running loop of the node (dialing, garbage collection, DHT publishing and
lookups, relay control connections, mDNS re-rolls) runs under a `Supervisor`: an
exception is logged with the component's name and the loop is started again after a
backoff that doubles up to a ceiling (and starts over once a run lasted longer than
the ceiling). A loop that returns has finished its work and is not restarted. One-off
tasks (`fire`) are referenced until they end, and their failures are logged too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

__all__ = ["Supervisor"]

log = logging.getLogger("p2pgate.supervisor")


class Supervisor:
    """Owns background tasks: restarts failed loops with backoff, logs every failure."""

    def __init__(self, first_backoff: float = 1.0, max_backoff: float = 60.0,
                 logger: logging.Logger = log) -> None:
        self._first = first_backoff
        self._max = max_backoff
        self._log = logger
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failures: dict[str, int] = {}  # component -> failures so far (for /node, tests)

    def spawn(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `loop()` until it returns; restart it with backoff whenever it raises."""
        return self._keep(asyncio.ensure_future(self._supervise(name, loop)))

    def fire(self, name: str, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run one task to its end, referenced, with its failure logged (not restarted)."""
        task = self._keep(asyncio.ensure_future(work))
        task.add_done_callback(lambda t: self._report(name, t))
        return task

    async def stop(self) -> None:
        """Cancel every task and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _keep(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _report(self, name: str, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failed(name, task.exception())

    def _failed(self, name: str, exc: BaseException | None) -> None:
        self.failures[name] = self.failures.get(name, 0) + 1
        self._log.error("%s failed: %s: %s", name, type(exc).__name__, exc,
                        exc_info=(type(exc), exc, exc.__traceback__) if exc else None)

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        backoff = self._first
        clock = asyncio.get_running_loop().time
        while True:
            started = clock()
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (the point: log whatever killed it)
                self._failed(name, exc)
            else:
                return
            if clock() - started > self._max:
                backoff = self._first
            self._log.info("%s restarts in %.1f s", name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max)
