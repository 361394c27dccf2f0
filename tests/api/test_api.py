"""The local API end to end, against a real node process."""

from __future__ import annotations

import asyncio
import io
import json

import aiohttp
import pytest
from openapi_spec_validator import validate

from p2pgate.client import Client, ClientError


@pytest.fixture
async def admin(node):
    async with Client(node.url, node.admin_token) as client:
        yield client


async def raw(node, method, path, *, token=None, body=None, headers=None, data=None):
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = io.BytesIO(json.dumps(body).encode())
        hdrs["Content-Type"] = "application/json"
    async with aiohttp.ClientSession() as s, s.request(
        method, node.url + path, data=data, headers=hdrs
    ) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None), resp.headers


def assert_error(status, payload, expected_status, code=None):
    assert status == expected_status, payload
    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"code", "message", "request_id"}
    if code:
        assert payload["error"]["code"] == code


async def test_health_needs_no_token_and_node_needs_one(node):
    status, body, headers = await raw(node, "GET", "/api/v1/health")
    assert (status, body["status"]) == (200, "ok")
    assert headers["X-Request-ID"]
    status, body, _ = await raw(node, "GET", "/api/v1/node")
    assert_error(status, body, 401, "unauthorized")
    status, body, _ = await raw(node, "GET", "/api/v1/node", token="wrong")
    assert_error(status, body, 401)


async def test_a_collection_name_with_a_trailing_newline_is_refused(node):
    status, body, _ = await raw(node, "PUT", "/api/v1/collections/notes%0A/docs/n1",
                                token=node.admin_token, body={"title": "looks like notes"})
    assert_error(status, body, 400, "bad_collection")  # `$` alone matched before the newline


@pytest.mark.parametrize("body", [
    b"[" * 10_000 + b"]" * 10_000,
    b'{"n": ' + b"7" * 5000 + b"}",
    b'{"title": "\\ud800"}',
    b'{"\\ud800": 1}',
    b'{"body": {"$splice": [0, 0, "\\ud800"]}}',
    b'{"a": ' + b'{"a": ' * 64 + b"1" + b"}" * 65,
])
async def test_hostile_json_bodies_get_a_400_not_a_500(node, body):
    for method in ("PUT", "PATCH"):
        status, answer, _ = await raw(node, method, "/api/v1/collections/notes/docs/n1",
                                      token=node.admin_token, data=io.BytesIO(body),
                                      headers={"Content-Type": "application/json"})
        assert_error(status, answer, 400, "invalid_json")


async def test_documents_crud_etag_and_if_match(admin):
    created = await admin.put("notes", "n1", {"title": "Hello", "n": 1})
    assert created.data == {"title": "Hello", "n": 1}
    got = await admin.get("notes", "n1")
    assert got.version == created.version
    with pytest.raises(ClientError) as err:
        await admin.put("notes", "n1", {"title": "x"}, if_match="not-the-version")
    assert err.value.status == 412
    updated = await admin.put("notes", "n1", {"title": "Bye"}, if_match=got.version)
    assert updated.data == {"title": "Bye"}
    assert updated.version != got.version
    with pytest.raises(ClientError) as err:
        await admin.patch("notes", "n1", {"n": 2}, if_match=got.version)
    assert err.value.status == 412
    deleted = await admin.delete("notes", "n1", if_match=updated.version)
    assert deleted.deleted
    with pytest.raises(ClientError) as err:
        await admin.get("notes", "n1")
    assert err.value.status == 404


async def test_put_status_and_etag_header(node, admin):
    status, body, headers = await raw(node, "PUT", "/api/v1/collections/c/docs/d",
                                      token=node.admin_token, body={"a": 1})
    assert status == 201
    assert headers["ETag"] == f'"{body["version"]}"'
    status, _, _ = await raw(node, "PUT", "/api/v1/collections/c/docs/d",
                             token=node.admin_token, body={"a": 2})
    assert status == 200
    status, _, _ = await raw(node, "GET", "/api/v1/collections/c/docs/d",
                             token=node.admin_token, headers={"If-None-Match": headers["ETag"]})
    assert status == 200  # the document changed since that ETag


async def test_patch_operators_on_every_field_type(admin):
    fields = {"likes": "counter", "tags": "set", "body": "text"}
    assert await admin.declare("posts", fields) == fields
    await admin.put("posts", "p", {"title": "t", "likes": 1, "tags": ["a"], "body": "hello"})
    doc = await admin.patch("posts", "p", {
        "title": "T", "extra": {"nested": True},
        "likes": {"$inc": 4}, "tags": {"$add": ["b", "c"]}, "body": {"$splice": [5, 0, " world"]},
    })
    assert doc.data == {"title": "T", "extra": {"nested": True}, "likes": 5,
                        "tags": ["a", "b", "c"], "body": "hello world"}
    doc = await admin.patch("posts", "p", {
        "likes": {"$inc": -2}, "tags": {"$remove": ["a"]}, "body": {"$splice": [0, 5, "HELLO"]},
        "extra": None,
    })
    assert doc.data == {"title": "T", "likes": 3, "tags": ["b", "c"], "body": "HELLO world"}
    bad_patches = (
        {"title": {"$inc": 1}}, {"likes": {"$add": [1]}}, {"tags": {"$splice": [0, 0, "x"]}},
        {"likes": {"$inc": "x"}}, {"body": {"$splice": [99, 0, "x"]}}, {"x": {"$nope": 1}},
    )
    for bad in bad_patches:
        with pytest.raises(ClientError) as err:
            await admin.patch("posts", "p", bad)
        assert err.value.status == 422, bad


async def test_patch_of_missing_document_is_404_and_conflicts_empty(admin):
    with pytest.raises(ClientError) as err:
        await admin.patch("notes", "nope", {"a": 1})
    assert err.value.status == 404
    await admin.put("notes", "c", {"a": 1})
    conflicts = await admin.conflicts("notes", "c")
    assert conflicts.fields == {}


async def test_list_pagination_and_since(admin):
    for i in range(7):
        await admin.put("items", f"i{i}", {"n": i})
    page = await admin.list_docs("items", limit=3)
    assert [d.id for d in page.items] == ["i0", "i1", "i2"]
    page2 = await admin.list_docs("items", limit=3, after=page.next_after)
    assert [d.id for d in page2.items] == ["i3", "i4", "i5"]
    cursor = page2.cursor
    await admin.patch("items", "i1", {"n": 100})
    changed = await admin.list_docs("items", since=cursor)
    assert [d.id for d in changed.items] == ["i1"]


async def test_bad_requests(node):
    t = node.admin_token
    cases = [
        (await raw(node, "PUT", "/api/v1/collections/c/docs/d", token=t, data=b"{nope",
                   headers={"Content-Type": "application/json"}), 400, "invalid_json"),
        (await raw(node, "PUT", "/api/v1/collections/c/docs/d", token=t, body=[1]), 400,
         "not_an_object"),
        (await raw(node, "GET", "/api/v1/collections/bad$name/docs", token=t), 400,
         "bad_collection"),
        (await raw(node, "GET", "/api/v1/collections/c/docs?limit=abc", token=t), 400,
         "bad_query"),
        (await raw(node, "PUT", "/api/v1/collections/c", token=t, body={"fields": {"a": "x"}}),
         422, "invalid"),
        (await raw(node, "GET", "/api/v1/collections/c/docs/missing", token=t), 404,
         "not_found"),
        (await raw(node, "GET", "/api/v1/nothing-here", token=t), 404, None),
    ]
    for (status, payload, _), expected, code in cases:
        assert_error(status, payload, expected, code)


async def test_changing_a_field_type_after_use_is_a_conflict(admin):
    await admin.declare("k", {"likes": "counter"})
    await admin.put("k", "d", {"likes": 1})
    with pytest.raises(ClientError) as err:
        await admin.declare("k", {"likes": "set"})
    assert err.value.status == 409


async def test_oversized_body_is_413(node):
    status, payload, _ = await raw(node, "PUT", "/api/v1/collections/c/docs/d",
                                   token=node.admin_token,
                                   body={"blob": "x" * (1 << 20)})
    assert_error(status, payload, 413)


async def test_wrong_host_is_refused(node):
    status, payload, _ = await raw(node, "GET", "/api/v1/health",
                                   headers={"Host": "evil.example:8771"})
    assert_error(status, payload, 403, "bad_host")
    status, _, _ = await raw(node, "GET", "/api/v1/health", headers={"Host": "localhost:1"})
    assert status == 200


async def test_app_token_scopes(node, admin):
    await admin.put("notes", "n", {"a": 1})
    await admin.put("secret", "s", {"a": 1})
    ro = (await admin.add_app("reader", ["notes:r"])).token
    rw = (await admin.add_app("writer", ["notes:rw"])).token
    short = (await admin.add_app("short", ["notes:rw"], ttl=0.5)).token
    gone = (await admin.add_app("gone", ["notes:rw"])).token
    await admin.revoke_app("gone")

    async def status_of(method, path, token, body=None):
        return (await raw(node, method, path, token=token, body=body))[0]

    assert await status_of("GET", "/api/v1/collections/notes/docs/n", ro) == 200
    assert await status_of("PUT", "/api/v1/collections/notes/docs/n", ro, {"a": 2}) == 403
    assert await status_of("GET", "/api/v1/collections/secret/docs/s", rw) == 403
    assert await status_of("PUT", "/api/v1/collections/notes/docs/n", rw, {"a": 3}) == 200
    assert await status_of("GET", "/api/v1/devices", rw) == 403
    assert await status_of("GET", "/api/v1/apps", rw) == 403
    assert await status_of("GET", "/api/v1/collections/notes/docs/n", gone) == 401
    assert await status_of("GET", "/api/v1/collections/notes/docs/n", short) == 200
    await asyncio.sleep(0.6)
    assert await status_of("GET", "/api/v1/collections/notes/docs/n", short) == 401
    listed = await admin.apps()
    assert sorted(a.name for a in listed.items) == ["reader", "short", "writer"]
    assert "token" not in listed.model_dump_json()


async def test_rate_limit_gives_429_with_retry_after(node_factory):
    node = await asyncio.to_thread(node_factory, "limited",
                                   config="rate_limit = 1\nrate_burst = 3\n")
    statuses = []
    for _ in range(5):
        status, payload, headers = await raw(node, "GET", "/api/v1/node", token=node.admin_token)
        statuses.append(status)
    assert statuses[:3] == [200, 200, 200]
    assert statuses[-1] == 429
    assert_error(status, payload, 429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1


async def test_openapi_document_is_valid_3_1(node):
    status, doc, _ = await raw(node, "GET", "/api/v1/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    await asyncio.to_thread(validate, doc)
    assert "/api/v1/collections/{c}/docs/{id}" in doc["paths"]
    doc_path = doc["paths"]["/api/v1/collections/{c}/docs/{id}"]
    assert {"get", "put", "patch", "delete"} <= set(doc_path)


async def _collect(events, n):
    out = []
    async for event in events:
        out.append(event)
        if len(out) == n:
            break
    return out


async def test_events_scoped_and_resumed_without_gap_or_duplicate(node, admin):
    token = (await admin.add_app("watcher", ["notes:r"])).token
    async with Client(node.url, token) as watcher:
        start = (await watcher.list_docs("notes")).cursor  # cursors are the token's own
        stream = watcher.events(cursor=start)
        await admin.put("notes", "a", {"v": 1})
        await admin.put("hidden", "x", {"v": 1})
        await admin.put("notes", "b", {"v": 1})
        first = await asyncio.wait_for(_collect(stream, 2), 10)
        assert [(e.collection, e.id) for e in first] == [("notes", "a"), ("notes", "b")]
        await stream.aclose()
        # dropped: changes happen while nobody listens, then we resume from the last cursor
        await admin.put("notes", "c", {"v": 1})
        await admin.delete("notes", "a")
        resumed = watcher.events(cursor=first[-1].cursor)
        live = asyncio.ensure_future(_collect(resumed, 3))
        await asyncio.sleep(0.3)
        await admin.put("notes", "d", {"v": 1})
        rest = await asyncio.wait_for(live, 10)
        assert [(e.id, e.deleted) for e in rest] == [("c", False), ("a", True), ("d", False)]
        cursors = [e.cursor for e in first + rest]  # opaque for an app token: not ordered
        assert len(set(cursors)) == len(cursors)
        await resumed.aclose()


async def test_a_revoked_token_receives_no_more_events_on_an_open_socket(node, admin):
    token = (await admin.add_app("watcher", ["notes:r"])).token
    start = (await admin.node()).cursor
    async with aiohttp.ClientSession() as s, s.ws_connect(
            node.url + f"/api/v1/events?cursor={start}",
            protocols=("p2pgate.v1", f"bearer.{token}")) as ws:
        await admin.put("notes", "before", {"v": 1})
        first = await asyncio.wait_for(ws.receive(), 10)
        assert json.loads(first.data)["id"] == "before"  # the check below can fail
        await admin.revoke_app("watcher")
        await admin.put("notes", "after", {"v": 1})
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4401


async def test_events_websocket_auth_by_subprotocol_and_never_query(node, admin):
    token = (await admin.add_app("browser", ["notes:r"])).token
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(node.url + "/api/v1/events",
                                protocols=("p2pgate.v1", f"bearer.{token}")) as ws:
            assert ws.protocol == "p2pgate.v1"
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            async with s.ws_connect(node.url + f"/api/v1/events?token={token}"):
                pass
        assert err.value.status == 401


async def test_expired_cursor_gets_a_reset(node_factory):
    node = await asyncio.to_thread(node_factory, "small", config="event_retention = 5\n")
    async with Client(node.url, node.admin_token) as admin:
        for i in range(12):
            await admin.put("notes", f"n{i}", {"i": i})
        events = admin.events(cursor=1)
        first = await asyncio.wait_for(anext(events), 10)
        assert first.type == "reset"
        assert first.reason == "cursor expired"
        assert first.cursor == (await admin.node()).cursor
        await events.aclose()
        recent = admin.events(cursor=first.cursor - 3)
        got = await asyncio.wait_for(_collect(recent, 3), 10)
        assert [e.type for e in got] == ["change"] * 3
        await recent.aclose()


async def test_sigterm_mid_requests_loses_no_acknowledged_write(node_factory):
    node = await asyncio.to_thread(node_factory, "busy")
    acknowledged: list[str] = []
    enough = asyncio.Event()

    async def writer(k):
        async with Client(node.url, node.admin_token) as c:
            for i in range(10_000):
                try:
                    await c.put("notes", f"w{k}-{i}", {"i": i})
                except Exception:
                    return
                acknowledged.append(f"w{k}-{i}")
                if len(acknowledged) >= 50:
                    enough.set()

    tasks = [asyncio.ensure_future(writer(k)) for k in range(4)]
    await asyncio.wait_for(enough.wait(), 30)
    code = await asyncio.to_thread(node.stop)
    await asyncio.gather(*tasks)
    assert code == 0, node.log()
    restarted = await asyncio.to_thread(node_factory, "busy")
    async with Client(restarted.url, restarted.admin_token) as c:
        seen = set()
        after = None
        while True:
            page = await c.list_docs("notes", limit=1000, after=after)
            seen.update(d.id for d in page.items)
            if page.next_after is None:
                break
            after = page.next_after
    missing = set(acknowledged) - seen
    assert not missing, f"{len(missing)} acknowledged writes lost"


async def test_cors_is_off_unless_an_origin_is_allowed(node, node_factory):
    hdrs = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    status, _, headers = await raw(node, "OPTIONS", "/api/v1/node", headers=hdrs)
    assert status in (403, 405)
    assert "Access-Control-Allow-Origin" not in headers
    cors = await asyncio.to_thread(node_factory, "cors",
                                   config='cors_origins = ["https://app.example"]\n')
    status, _, headers = await raw(cors, "OPTIONS", "/api/v1/node", headers=hdrs)
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    status, _, headers = await raw(cors, "GET", "/api/v1/node", token=cors.admin_token,
                                   headers={"Origin": "https://app.example"})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    status, _, headers = await raw(cors, "OPTIONS", "/api/v1/node",
                                   headers={**hdrs, "Origin": "https://evil.example"})
    assert status == 403
    assert "Access-Control-Allow-Origin" not in headers


async def test_the_node_garbage_collects_what_no_peer_still_needs(node_factory):
    """With no peers, every logged change and every tombstone is collectable."""
    node = await asyncio.to_thread(node_factory, "gc", config="gc_interval = 0.3\n")
    async with Client(node.url, node.admin_token) as c:
        for i in range(8):
            await c.put("notes", f"n{i}", {"i": i})
        for i in range(3):
            await c.delete("notes", f"n{i}")
        deadline = asyncio.get_running_loop().time() + 20
        while (info := await c.node()).purged_documents < 3:
            assert asyncio.get_running_loop().time() < deadline, info
            await asyncio.sleep(0.1)
        assert info.collected_changes == 11
        page = await c.list_docs("notes", limit=100)
        assert [d.id for d in page.items] == [f"n{i}" for i in range(3, 8)]
        await c.put("notes", "n0", {"i": "again"})  # the log goes on after the collection
        assert (await c.get("notes", "n0")).data == {"i": "again"}
