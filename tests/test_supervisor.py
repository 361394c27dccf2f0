"""The supervisor logs a failing loop with its name and runs it again."""

from __future__ import annotations

import asyncio
import logging

from p2pgate.supervisor import Supervisor


async def test_a_failing_loop_is_logged_and_restarted(caplog):
    runs = []
    again = asyncio.Event()

    async def loop():
        runs.append(1)
        if len(runs) < 3:
            raise TimeoutError("the relay did not answer")
        again.set()

    sup = Supervisor(first_backoff=0.0)
    with caplog.at_level(logging.ERROR, "p2pgate.supervisor"):
        sup.spawn("dialing", loop)
        await asyncio.wait_for(again.wait(), 5)
    await sup.stop()
    assert len(runs) == 3
    assert sup.failures == {"dialing": 2}
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failed] == ["dialing failed: TimeoutError: the relay did "
                                                "not answer"] * 2
    assert failed[0].exc_info is not None


async def test_a_loop_that_returns_is_not_restarted_and_cancel_is_not_a_failure():
    runs = []

    async def once():
        runs.append(1)

    async def forever():
        await asyncio.Event().wait()

    sup = Supervisor(first_backoff=0.0)
    done = sup.spawn("once", once)
    await done
    sup.spawn("forever", forever)
    await asyncio.sleep(0)
    await sup.stop()
    assert runs == [1]
    assert sup.failures == {}


async def test_a_fired_task_is_kept_and_its_failure_logged(caplog):
    async def boom():
        raise OSError("no route")

    sup = Supervisor()
    with caplog.at_level(logging.ERROR, "p2pgate.supervisor"):
        task = sup.fire("mdns sighting", boom())
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
    assert sup.failures == {"mdns sighting": 1}
    assert "mdns sighting failed: OSError: no route" in caplog.text
