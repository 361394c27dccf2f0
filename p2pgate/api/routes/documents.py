"""Collections, documents and the WebSocket of their changes.

Every cursor and version a handler shows or reads goes through the caller's
`CursorView` (an app token never sees the node's own numbers, `p2pgate.api.cursors`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from p2pgate.api import models as m
from p2pgate.api.cursors import CursorView
from p2pgate.api.errors import BadRequest, NotFound, TooManyRequests
from p2pgate.api.events import ChangeRecord, Reset
from p2pgate.api.http import (
    Route,
    bearer_token,
    cursors_of,
    json_body,
    model_body,
    principal_of,
    respond,
    stopping,
)
from p2pgate.api.routes.params import (
    MAX_CURSOR,
    collection_of,
    doc_id_of,
    doc_id_query,
    if_match,
    int_query,
)
from p2pgate.api.routes.services import ApiServices, DocumentView
from p2pgate.documents.errors import WritesBacklogged

__all__ = ["document_routes"]

WS_PROTOCOL = "p2pgate.v1"
WS_CLOSE_TIMEOUT = 2.0  # seconds a client has to answer our close frame


def _shown_version(view: DocumentView, cv: CursorView) -> str:
    """The document's version as this token sees it (see `p2pgate.api.cursors`)."""
    if view.version == str(view.cursor):
        return str(cv.show(view.cursor))
    return cv.show_version(view.version)


def _document(view: DocumentView, cv: CursorView) -> m.Document:
    return m.Document(collection=view.collection, id=view.doc_id, data=view.data,
                      version=_shown_version(view, cv), deleted=view.deleted,
                      cursor=cv.show(view.cursor))


def _doc_response(request: web.Request, view: DocumentView, status: int = 200
                  ) -> web.Response:
    doc = _document(view, cursors_of(request))
    return respond(doc, status, {"ETag": f'"{doc.version}"'})


def _if_match(request: web.Request) -> str | None:
    """The node's version the `If-Match` header names (see `params.if_match`)."""
    shown = if_match(request)
    return None if shown is None else cursors_of(request).read_version(shown)


def _minimal(request: web.Request) -> bool:
    """Whether a write asked for no document back (`Prefer: return=minimal`, RFC 7240)."""
    prefs = {p.strip().lower() for v in request.headers.getall("Prefer", ())
             for p in v.split(",")}
    return "return=minimal" in prefs


def _write_response(request: web.Request, view: DocumentView, minimal: bool,
                    created: bool = False) -> web.Response:
    """The written document, or with `minimal` only its version: 204 (201 if created)
    with `ETag`, no body (the document is not rendered: that grows with its size)."""
    if not minimal:
        return _doc_response(request, view, 201 if created else 200)
    version = _shown_version(view, cursors_of(request))
    return web.Response(status=201 if created else 204, headers={
        "ETag": f'"{version}"', "Preference-Applied": "return=minimal"})


async def _written(write: Awaitable[DocumentView]) -> DocumentView:
    """The write's view; an app with too many writes waiting gets 429."""
    try:
        return await write
    except WritesBacklogged as exc:
        raise TooManyRequests(str(exc), exc.retry_after) from None


async def _object_body(request: web.Request, what: str) -> dict[str, Any]:
    """The JSON body, which must be an object (`what` names it in the error)."""
    data = await json_body(request)
    if not isinstance(data, dict):
        raise BadRequest(f"{what} is a JSON object", code="not_an_object")
    return data


def _event(item: ChangeRecord | Reset, cv: CursorView) -> m.Event:
    if isinstance(item, Reset):
        return m.Event(type="reset", cursor=cv.show(item.cursor), reason=item.reason)
    return m.Event(type="change", cursor=cv.show(item.cursor), collection=item.collection,
                   id=item.doc_id, deleted=item.deleted, origin=item.origin)


async def _drain_client(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) client messages so pings, pongs and close frames get handled."""
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break


class _DocumentHandlers:
    """The handlers; their names are the OpenAPI operation IDs."""

    def __init__(self, s: ApiServices) -> None:
        self.s = s

    async def put_collection(self, request: web.Request) -> web.Response:
        collection = collection_of(request, write=True)
        body = await model_body(request, m.CollectionFields)
        fields = await self.s.documents.declare(collection, dict(body.fields))
        return respond(m.CollectionFields.model_validate({"fields": fields}))

    async def get_collection(self, request: web.Request) -> web.Response:
        fields = await self.s.documents.fields(collection_of(request))
        return respond(m.CollectionFields.model_validate({"fields": fields}))

    async def get_doc(self, request: web.Request) -> web.Response:
        collection, doc_id = collection_of(request), doc_id_of(request)
        view = await self.s.documents.get(collection, doc_id)
        if view is None or view.deleted:
            raise NotFound(f"no document {doc_id!r} in {collection!r}")
        version = cursors_of(request).show_version(view.version)
        if request.headers.get("If-None-Match", "").strip('"') == version:
            return web.Response(status=304, headers={"ETag": f'"{version}"'})
        return _doc_response(request, view)

    async def put_doc(self, request: web.Request) -> web.Response:
        collection, doc_id = collection_of(request, write=True), doc_id_of(request)
        data = await _object_body(request, "a document")
        minimal, writer = _minimal(request), principal_of(request).token_id
        view = await _written(self.s.documents.put(
            collection, doc_id, data, _if_match(request), writer=writer, render=not minimal))
        return _write_response(request, view, minimal, view.created)

    async def patch_doc(self, request: web.Request) -> web.Response:
        collection, doc_id = collection_of(request, write=True), doc_id_of(request)
        patch = await _object_body(request, "a patch")
        minimal, writer = _minimal(request), principal_of(request).token_id
        return _write_response(request, await _written(self.s.documents.patch(
            collection, doc_id, patch, _if_match(request), writer=writer,
            render=not minimal)), minimal)

    async def delete_doc(self, request: web.Request) -> web.Response:
        collection, doc_id = collection_of(request, write=True), doc_id_of(request)
        return _doc_response(request, await _written(self.s.documents.delete(
            collection, doc_id, _if_match(request), writer=principal_of(request).token_id)))

    async def list_docs(self, request: web.Request) -> web.Response:
        collection, cv = collection_of(request), cursors_of(request)
        principal = principal_of(request)
        limit = int_query(request, "limit", 100, 1, 1000)
        shown_since = int_query(request, "since", None, 0, MAX_CURSOR)
        since = None if shown_since is None else cv.read(shown_since)
        if shown_since is not None and since is None:
            raise BadRequest("query parameter since is not a cursor of this token",
                             code="bad_query")
        after = doc_id_query(request, "after")
        visible_now = self.s.events.latest(principal.can_read)  # before the read: no gap
        views, cursor = await self.s.documents.list_docs(collection, limit or 100, after, since)
        if not principal.admin:  # the node's cursor would tell of changes it cannot read
            cursor = visible_now
        next_after = views[-1].doc_id if len(views) == limit else None
        return respond(m.DocumentList(items=[_document(v, cv) for v in views],
                                      next_after=next_after, cursor=cv.show(cursor)))

    async def doc_conflicts(self, request: web.Request) -> web.Response:
        collection, doc_id = collection_of(request), doc_id_of(request)
        found = await self.s.documents.conflicts(collection, doc_id)
        return respond(m.Conflicts(
            collection=collection, id=doc_id,
            fields={k: m.Conflict(value=v, origin=o) for k, (v, o) in found.items()},
        ))

    async def events(self, request: web.Request) -> web.StreamResponse:
        principal, cv = principal_of(request), cursors_of(request)
        shown = int_query(request, "cursor", None, 0, MAX_CURSOR)
        after = None if shown is None else cv.read(shown)
        if shown is not None and after is None:
            after = MAX_CURSOR  # not one of ours: the stream answers "unknown cursor"
        ws = web.WebSocketResponse(protocols=(WS_PROTOCOL,), heartbeat=20,
                                   timeout=WS_CLOSE_TIMEOUT)
        await ws.prepare(request)
        sender = asyncio.create_task(self._send_events(ws, bearer_token(request) or "",
                                                       after, principal.can_read, cv))
        reader = asyncio.create_task(_drain_client(ws))
        shutdown = asyncio.create_task(stopping(request).wait())
        tasks = {sender, reader, shutdown}
        code, why = int(WSCloseCode.OK), b""
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if shutdown.done():
                code, why = int(WSCloseCode.GOING_AWAY), b"the node is shutting down"
            elif sender.done() and not sender.cancelled() and sender.exception() is None:
                code, why = sender.result()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                    await task
            await ws.close(code=code, message=why)
        return ws

    async def _send_events(self, ws: web.WebSocketResponse, token: str, after: int | None,
                           visible: Callable[[str], bool], cv: CursorView) -> tuple[int, bytes]:
        """Forward the stream to `ws` until the token stops being valid; the close code."""
        async for item in self.s.events.stream(after, visible):
            if self.s.tokens.authenticate(token) is None:  # revoked or expired since
                return 4401, b"token revoked or expired"
            await ws.send_str(_event(item, cv).model_dump_json(exclude_none=True))
        return int(WSCloseCode.OK), b""


def document_routes(s: ApiServices) -> list[Route]:
    """Declaring collections; reading, writing and listing documents; the change stream."""
    h = _DocumentHandlers(s)
    return [
        Route("PUT", "/api/v1/collections/{c}", h.put_collection, "Declare field types",
              auth="app", body=m.CollectionFields, response=m.CollectionFields,
              errors=(409, 413, 422), tag="documents"),
        Route("GET", "/api/v1/collections/{c}", h.get_collection, "Field types", auth="app",
              response=m.CollectionFields, tag="documents"),
        Route("GET", "/api/v1/collections/{c}/docs", h.list_docs, "List documents",
              auth="app", response=m.DocumentList, tag="documents"),
        Route("GET", "/api/v1/collections/{c}/docs/{id}", h.get_doc, "Read a document",
              auth="app", response=m.Document, errors=(404,), tag="documents"),
        Route("PUT", "/api/v1/collections/{c}/docs/{id}", h.put_doc,
              "Replace a document (`Prefer: return=minimal`: 204/201 with only the ETag; "
              "422 `document_too_large` past 2 MiB of stored state)",
              auth="app", body="object", response=m.Document, errors=(412, 413, 422, 429),
              tag="documents"),
        Route("PATCH", "/api/v1/collections/{c}/docs/{id}", h.patch_doc,
              "Merge-patch a document ($inc, $add, $remove, $splice; `Prefer: "
              "return=minimal`: 204 with only the ETag; 422 `document_too_large` past 2 MiB "
              "of stored state)", auth="app",
              body="object", response=m.Document, errors=(404, 412, 413, 422, 429),
              tag="documents"),
        Route("DELETE", "/api/v1/collections/{c}/docs/{id}", h.delete_doc, "Delete a document",
              auth="app", response=m.Document, errors=(404, 412), tag="documents"),
        Route("GET", "/api/v1/collections/{c}/docs/{id}/conflicts", h.doc_conflicts,
              "Each field's last losing concurrent write", auth="app",
              response=m.Conflicts, errors=(404,), tag="documents"),
        Route("GET", "/api/v1/events", h.events,
              "WebSocket of changes; `?cursor=N` resumes after N", auth="app", status=101,
              tag="documents"),
    ]
