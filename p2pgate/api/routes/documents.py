"""Collections, documents and the WebSocket of their changes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from p2pgate.api import models as m
from p2pgate.api.errors import BadRequest, NotFound, TooManyRequests
from p2pgate.api.events import ChangeRecord, Reset
from p2pgate.api.http import Route, bearer_token, json_body, model_body, principal_of, respond
from p2pgate.api.routes.params import (
    MAX_CURSOR,
    collection_of,
    doc_id_of,
    if_match,
    int_query,
)
from p2pgate.api.routes.services import ApiServices, DocumentView
from p2pgate.documents.errors import WritesBacklogged

__all__ = ["document_routes"]

WS_PROTOCOL = "p2pgate.v1"


def _document(view: DocumentView) -> m.Document:
    return m.Document(collection=view.collection, id=view.doc_id, data=view.data,
                      version=view.version, deleted=view.deleted, cursor=view.cursor)


def _doc_response(view: DocumentView, status: int = 200) -> web.Response:
    return respond(_document(view), status, {"ETag": f'"{view.version}"'})


def _minimal(request: web.Request) -> bool:
    """Whether a write asked for no document back (`Prefer: return=minimal`, RFC 7240)."""
    prefs = {p.strip().lower() for v in request.headers.getall("Prefer", ())
             for p in v.split(",")}
    return "return=minimal" in prefs


def _write_response(view: DocumentView, minimal: bool, created: bool = False
                    ) -> web.Response:
    """The written document, or with `minimal` only its version: 204 (201 if created)
    with `ETag`, no body (the document is not rendered: that grows with its size)."""
    if not minimal:
        return _doc_response(view, 201 if created else 200)
    return web.Response(status=201 if created else 204, headers={
        "ETag": f'"{view.version}"', "Preference-Applied": "return=minimal"})


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


def _event(item: ChangeRecord | Reset) -> m.Event:
    if isinstance(item, Reset):
        return m.Event(type="reset", cursor=item.cursor, reason=item.reason)
    return m.Event(type="change", cursor=item.cursor, collection=item.collection,
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
        if_none = request.headers.get("If-None-Match", "").strip('"')
        if if_none == view.version:
            return web.Response(status=304, headers={"ETag": f'"{view.version}"'})
        return _doc_response(view)

    async def put_doc(self, request: web.Request) -> web.Response:
        collection, doc_id = collection_of(request, write=True), doc_id_of(request)
        data = await _object_body(request, "a document")
        minimal, writer = _minimal(request), principal_of(request).token_id
        view = await _written(self.s.documents.put(
            collection, doc_id, data, if_match(request), writer=writer, render=not minimal))
        return _write_response(view, minimal, view.created)

    async def patch_doc(self, request: web.Request) -> web.Response:
        collection, doc_id = collection_of(request, write=True), doc_id_of(request)
        patch = await _object_body(request, "a patch")
        minimal, writer = _minimal(request), principal_of(request).token_id
        return _write_response(await _written(self.s.documents.patch(
            collection, doc_id, patch, if_match(request), writer=writer, render=not minimal)),
            minimal)

    async def delete_doc(self, request: web.Request) -> web.Response:
        collection, doc_id = collection_of(request, write=True), doc_id_of(request)
        return _doc_response(await _written(self.s.documents.delete(
            collection, doc_id, if_match(request), writer=principal_of(request).token_id)))

    async def list_docs(self, request: web.Request) -> web.Response:
        collection = collection_of(request)
        limit = int_query(request, "limit", 100, 1, 1000)
        since = int_query(request, "since", None, 0, MAX_CURSOR)
        after = request.query.get("after")
        views, cursor = await self.s.documents.list_docs(collection, limit or 100, after, since)
        next_after = views[-1].doc_id if len(views) == limit else None
        return respond(m.DocumentList(items=[_document(v) for v in views],
                                      next_after=next_after, cursor=cursor))

    async def doc_conflicts(self, request: web.Request) -> web.Response:
        collection, doc_id = collection_of(request), doc_id_of(request)
        found = await self.s.documents.conflicts(collection, doc_id)
        return respond(m.Conflicts(
            collection=collection, id=doc_id,
            fields={k: m.Conflict(value=v, origin=o) for k, (v, o) in found.items()},
        ))

    async def events(self, request: web.Request) -> web.StreamResponse:
        principal, token = principal_of(request), bearer_token(request) or ""
        after = int_query(request, "cursor", None, 0, MAX_CURSOR)
        ws = web.WebSocketResponse(protocols=(WS_PROTOCOL,), heartbeat=20)
        await ws.prepare(request)
        reader = asyncio.create_task(_drain_client(ws))
        code, why = int(WSCloseCode.OK), b""
        try:
            async for item in self.s.events.stream(after, principal.can_read):
                if reader.done():
                    break
                if self.s.tokens.authenticate(token) is None:  # revoked or expired since
                    code, why = 4401, b"token revoked or expired"
                    break
                await ws.send_str(_event(item).model_dump_json(exclude_none=True))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await ws.close(code=code, message=why)
        return ws


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
