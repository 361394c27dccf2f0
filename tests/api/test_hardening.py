"""Hardening of the local API (issue 17: items 14, 17, 19, 20), against real node processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import unicodedata
from urllib.parse import quote, urlsplit

import aiohttp
import pytest

from p2pgate.client import Client, ClientError

HEADER_TIMEOUT = 10.0  # p2pgate.api.server's defaults, which these tests do not tune
MAX_CONNECTIONS = 512


def _address(node):
    parts = urlsplit(node.url)
    return parts.hostname, parts.port


async def _closed_within(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection (fails past `within` s)."""
    async with asyncio.timeout(within):
        return await reader.read()


async def _health(node) -> int:
    async with aiohttp.ClientSession() as s, s.get(node.url + "/api/v1/health") as resp:
        return resp.status


# -- item 14: timeouts, keep-alive, connection cap -------------------------------------


async def test_slowloris_connections_are_closed_and_the_api_keeps_answering(node):
    host, port = _address(node)
    head = f"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Pad: ".encode()
    conns = [await asyncio.open_connection(host, port) for _ in range(500)]
    started = time.monotonic()

    async def drip(writer: asyncio.StreamWriter) -> None:
        try:
            for i in range(40):  # 1 byte per second, never a whole head
                writer.write(head[i:i + 1] if i < len(head) else b"a")
                await writer.drain()
                await asyncio.sleep(1)
        except (ConnectionError, OSError):
            return

    drippers = [asyncio.ensure_future(drip(w)) for _, w in conns]
    try:
        await asyncio.sleep(2)
        assert await _health(node) == 200  # meanwhile, the API answers
        closed = await asyncio.gather(*(_closed_within(r, HEADER_TIMEOUT + 15)
                                        for r, _ in conns))
        took = time.monotonic() - started
        assert all(b"200 OK" not in data for data in closed)
        print(f"500 slowloris connections closed after {took:.1f} s")
        assert await _health(node) == 200
    finally:
        for task in drippers:
            task.cancel()
        for _, writer in conns:
            writer.close()


async def test_a_refused_connection_is_closed_at_once(node):
    host, port = _address(node)
    for request in (
        f"GET /api/v1/node HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",  # no token: 401
        f"GET /api/v1/node HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Authorization: Bearer wrong\r\n\r\n",
        "GET /api/v1/health HTTP/1.1\r\nHost: evil.example\r\n\r\n",  # bad Host: 403
    ):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request.encode())
        started = time.monotonic()
        answer = await _closed_within(reader, 5)  # it stayed open 90 s and more before
        assert answer.split(b" ", 2)[1] in (b"401", b"403"), answer
        assert time.monotonic() - started < 5
        writer.close()


async def test_an_idle_keep_alive_connection_closes_after_seconds(node):
    host, port = _address(node)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    started = time.monotonic()
    answer = await _closed_within(reader, HEADER_TIMEOUT + 15)  # aiohttp's default: 3,630 s
    took = time.monotonic() - started
    print(f"an idle keep-alive connection closed after {took:.1f} s")
    assert answer.startswith(b"HTTP/1.1 200")
    assert took > 1  # kept alive for a while, not closed after the answer
    writer.close()


async def test_a_body_that_does_not_arrive_gets_408_and_the_connection_closes(node):
    host, port = _address(node)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"PUT /api/v1/collections/notes/docs/slow HTTP/1.1\r\n"
                  f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {node.admin_token}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":").encode())
    answer = await _closed_within(reader, HEADER_TIMEOUT + 15)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"request_timeout"' in answer
    writer.close()


async def test_connections_past_the_cap_get_503_and_the_api_recovers(node):
    host, port = _address(node)
    conns = [await asyncio.open_connection(host, port) for _ in range(MAX_CONNECTIONS + 40)]
    try:
        answers = await asyncio.gather(*(_closed_within(r, HEADER_TIMEOUT + 15)
                                         for r, _ in conns))
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        assert 40 <= len(refused) <= 45, len(refused)  # the rest: silent, timed out
        assert b'"too_many_connections"' in refused[0]
        assert await _health(node) == 200
    finally:
        for _, writer in conns:
            writer.close()


# -- item 17: the events WebSocket checks Origin ---------------------------------------


async def _ws_status(node, token, origin: str | None) -> int:
    headers = {} if origin is None else {"Origin": origin}
    async with aiohttp.ClientSession() as s:
        try:
            async with s.ws_connect(node.url + "/api/v1/events", headers=headers,
                                    protocols=("p2pgate.v1", f"bearer.{token}")):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def test_the_events_websocket_refuses_foreign_and_look_alike_origins(node_factory):
    node = await asyncio.to_thread(node_factory, "cors",
                                   config='cors_origins = ["https://app.example"]\n')
    async with Client(node.url, node.admin_token) as admin:
        token = (await admin.add_app("browser", ["notes:r"])).token
    _, port = _address(node)
    for origin in ("https://evil.example", "https://app.example.evil.example",
                   "https://app.example:444", "http://app.example", "null",
                   f"http://127.0.0.1:{port}.evil.example", f"http://localhost:{port}",
                   f"https://127.0.0.1:{port}"):
        assert await _ws_status(node, token, origin) == 403, origin
    for origin in (None, "https://app.example", f"http://127.0.0.1:{port}"):
        assert await _ws_status(node, token, origin) == 101, origin


# -- item 20 (second half): Host port, SIGTERM with an open socket ---------------------


async def test_a_host_with_anything_after_the_port_is_refused(node):
    _, port = _address(node)
    for host in (f"localhost:{port}@evil.example", f"127.0.0.1:{port}/evil.example",
                 f"localhost:{port}:1", "localhost:80x", f"[::1]:{port}@evil.example"):
        async with aiohttp.ClientSession() as s, s.get(
                node.url + "/api/v1/health", headers={"Host": host}) as resp:
            assert resp.status == 403, host
    for host in (f"localhost:{port}", "127.0.0.1", f"[::1]:{port}"):
        async with aiohttp.ClientSession() as s, s.get(
                node.url + "/api/v1/health", headers={"Host": host}) as resp:
            assert resp.status == 200, host


async def test_sigterm_with_an_open_events_socket_exits_within_5_s(node):
    async with Client(node.url, node.admin_token) as admin:
        token = (await admin.add_app("watcher", ["notes:r"])).token
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(node.url + "/api/v1/events",
                                protocols=("p2pgate.v1", f"bearer.{token}"))
        await asyncio.sleep(0.2)
        receiving = asyncio.ensure_future(ws.receive())  # like an app, always reading
        started = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(node.process.wait, 30)
        took = time.monotonic() - started
        print(f"SIGTERM with an open events socket: exit {code} after {took:.2f} s")
        assert code == 0, node.log()
        assert took < 5
        msg = await asyncio.wait_for(receiving, 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1001  # going away
        with contextlib.suppress(aiohttp.ClientError):
            await ws.close()


# -- item 19 (second half): document IDs are NFC ---------------------------------------


async def test_nfc_and_nfd_document_ids_name_one_document(node):
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    assert unicodedata.normalize("NFC", nfd) == nfc != nfd
    async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {node.admin_token}"}) as s:
        base = node.url + "/api/v1/collections/menu/docs/"
        async with s.put(base + quote(nfd), json={"v": "nfd"}) as resp:
            assert resp.status == 201
            assert (await resp.json())["id"] == nfc
        async with s.put(base + quote(nfc), json={"v": "nfc"}) as resp:
            assert resp.status == 200  # the same document, not a second one
        async with s.get(base + quote(nfd)) as resp:
            assert (await resp.json())["data"] == {"v": "nfc"}
        async with s.get(node.url + "/api/v1/collections/menu/docs",
                         params={"after": "cafe"}) as resp:
            assert [d["id"] for d in (await resp.json())["items"]] == [nfc]
    async with Client(node.url, node.admin_token) as admin:  # the SDK agrees
        assert (await admin.get("menu", nfd)).id == nfc
        assert [d.id for d in (await admin.list_docs("menu")).items] == [nfc]


# -- item 20: app tokens see no node-wide metadata -------------------------------------


async def test_an_app_token_learns_nothing_about_other_collections(node):
    async with Client(node.url, node.admin_token) as admin:
        token = (await admin.add_app("reader", ["notes:r"])).token
        await admin.put("notes", "n1", {"v": 1})
        async with Client(node.url, token) as app:
            with pytest.raises(ClientError) as err:
                await app.node()  # device name, ID, change count: admin only
            assert err.value.status == 403
            before = await app.list_docs("notes")
            doc = await app.get("notes", "n1")
            reset = await _first_event(app, 999_999)
            for i in range(7):  # activity elsewhere
                await admin.put("other", f"o{i}", {"i": i})
            node_cursor = (await admin.node()).cursor
            after = await app.list_docs("notes")
            assert after.cursor == before.cursor  # nothing the app may see changed
            assert after.items == before.items
            assert (await app.get("notes", "n1")).version == doc.version
            again = await _first_event(app, 999_999)  # a forged cursor: no global cursor
            assert (again.type, again.reason) == ("reset", "unknown cursor")
            assert again.cursor == reset.cursor != node_cursor
            # the app's own numbers still work: If-Match, since, resuming events
            written = await admin.put("notes", "n2", {"v": 2})
            change = await _first_event(app, after.cursor)
            assert (change.type, change.id) == ("change", "n2")
            assert change.cursor != written.cursor  # the admin's is the node's own
            since = await app.list_docs("notes", since=after.cursor)
            assert [d.id for d in since.items] == ["n2"]
            assert {change.cursor} == {d.cursor for d in since.items}
        async with Client(node.url, (await admin.add_app("writer", ["notes:rw"])).token) as w:
            mine = await w.get("notes", "n2")
            assert mine.version not in (written.version, doc.version)
            updated = await w.put("notes", "n2", {"v": 3}, if_match=mine.version)
            with pytest.raises(ClientError) as err:
                await w.put("notes", "n2", {"v": 4}, if_match=mine.version)
            assert err.value.status == 412
            with pytest.raises(ClientError) as err:
                await w.put("notes", "n2", {"v": 4}, if_match=written.version)  # admin's
            assert err.value.status == 412
            assert (await admin.get("notes", "n2")).data == updated.data == {"v": 3}


async def _first_event(client: Client, cursor: int):
    events = client.events(cursor=cursor)
    try:
        return await asyncio.wait_for(anext(events), 10)
    finally:
        await events.aclose()
