"""Hardening #15: one app's costly writes cannot stall the other apps' writes.

Against a real node process: app A grows a `set` field as the issue did (two
50,000-element `$add` PATCHes, then smaller ones up to the document size limit) and
hammers tiny PATCHes of that document; app B's small PUTs elsewhere must stay fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time

import aiohttp
import pytest

from p2pgate.client import Client

TARGET = 100_000  # set elements the issue reached
B_PUTS = 20
B_DEADLINE = 25.0  # seconds for B's puts (on main each took 4-5 s)


async def _send(session, node, method, path, token, body, headers=None):
    async with session.request(method, node.url + path, json=body, headers={
            "Authorization": f"Bearer {token}", **(headers or {})}) as resp:
        text = await resp.text()
        return resp.status, text, resp.headers


async def _grow(session, node, token) -> tuple[int, list[tuple[int, str]]]:
    """Grow big/d's set as the issue did; returns (elements in, refusals (status, body))."""
    path = "/api/v1/collections/big/docs/d"
    refused = []
    size = 0
    for chunk in (50_000, 50_000, *[2_000] * 50):
        if size >= TARGET:
            break
        values = list(range(size, size + chunk))
        status, text, _ = await _send(session, node, "PATCH", path, token,
                                      {"tags": {"$add": values}})
        if status == 200:
            size += chunk
        else:
            refused.append((status, text))
            if chunk == 2_000:
                break
    return size, refused


PATCHES = {  # A's tiny PATCH number i of hammer k: another field, or the large set itself
    "other field": lambda k, i: {f"n{k}": i},
    "one more element": lambda k, i: {"tags": {"$add": [-(k * 1_000_000 + i) - 1]}},
}


@pytest.mark.parametrize("shape", list(PATCHES))
async def test_a_large_document_does_not_stall_other_apps_writes(node, shape):
    async with Client(node.url, node.admin_token) as admin:
        await admin.declare("big", {"tags": "set"})
        a = (await admin.add_app("grower", ["big:rw"])).token
        b = (await admin.add_app("bystander", ["other:rw"])).token
    async with aiohttp.ClientSession() as session:
        status, _, _ = await _send(session, node, "PUT", "/api/v1/collections/big/docs/d", a,
                                   {"n": 0})
        assert status == 201
        size, refused = await _grow(session, node, a)
        for status, text in refused:
            assert status == 422, text
            assert '"code":"document_too_large"' in text.replace(" ", ""), text

        stop = asyncio.Event()
        a_latencies: list[float] = []

        async def hammer(k: int) -> None:
            i = 0
            while not stop.is_set():
                started = time.perf_counter()
                status, text, _ = await _send(session, node, "PATCH",
                                              "/api/v1/collections/big/docs/d", a,
                                              PATCHES[shape](k, i))
                assert status == 200, text
                a_latencies.append(time.perf_counter() - started)
                i += 1

        hammers = [asyncio.create_task(hammer(k)) for k in range(4)]
        b_latencies: list[float] = []
        try:
            await asyncio.sleep(0.5)  # A's writes are queued before B starts
            deadline = time.monotonic() + B_DEADLINE
            for i in range(B_PUTS):
                if time.monotonic() > deadline:
                    break
                started = time.perf_counter()
                status, text, _ = await _send(session, node, "PUT",
                                              f"/api/v1/collections/other/docs/o{i}", b,
                                              {"a": i})
                assert status == 201, text
                b_latencies.append(time.perf_counter() - started)
        finally:
            stop.set()
            for task in hammers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    b_latencies.sort()
    p95 = b_latencies[int(0.95 * (len(b_latencies) - 1))] if b_latencies else float("inf")
    print(f"\n{shape}: set elements {size}; A's tiny PATCH median "
          f"{statistics.median(a_latencies or [0]) * 1000:.0f} ms ({len(a_latencies)}); "
          f"B's PUT median {statistics.median(b_latencies or [0]) * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms ({len(b_latencies)} of {B_PUTS})")
    assert len(b_latencies) == B_PUTS, f"B did {len(b_latencies)} PUTs in {B_DEADLINE} s"
    assert p95 < 0.5
    assert a_latencies  # A was served too, not starved


async def test_a_write_past_the_size_limit_is_refused_whole_with_422(node):
    async with Client(node.url, node.admin_token) as admin:
        await admin.declare("big", {"tags": "set"})
        await admin.put("big", "d", {"title": "t"})
        version = (await admin.get("big", "d")).version
    async with aiohttp.ClientSession() as session:
        status, text, _ = await _send(session, node, "PATCH", "/api/v1/collections/big/docs/d",
                                      node.admin_token,
                                      {"title": "u", "tags": {"$add": list(range(50_000))}})
        assert status == 422, text
        assert '"code":"document_too_large"' in text.replace(" ", ""), text
        assert "limit is 2097152 bytes" in text
        status, text, _ = await _send(session, node, "PUT", "/api/v1/collections/big/docs/e",
                                      node.admin_token, {"tags": list(range(50_000))})
        assert status == 422, text
    async with Client(node.url, node.admin_token) as admin:
        doc = await admin.get("big", "d")
        assert (doc.data, doc.version) == ({"title": "t"}, version)  # nothing of it applied


async def test_prefer_return_minimal_gives_only_the_version(node):
    async with aiohttp.ClientSession() as session:
        path = "/api/v1/collections/notes/docs/n"
        minimal = {"Prefer": "return=minimal"}
        status, text, headers = await _send(session, node, "PUT", path, node.admin_token,
                                            {"a": 1}, minimal)
        assert (status, text, headers["Preference-Applied"]) == (201, "", "return=minimal")
        created = headers["ETag"]
        status, text, headers = await _send(session, node, "PATCH", path, node.admin_token,
                                            {"b": 2}, minimal)
        assert (status, text) == (204, "")
        assert headers["ETag"] != created
        status, text, again = await _send(session, node, "PATCH", path, node.admin_token,
                                          {"c": 3})
        assert status == 200 and '"b":2' in text.replace(" ", "")  # the default: the document
