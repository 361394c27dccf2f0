"""The local API's endpoints (DESIGN "Public contract")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import segno
from aiohttp import WSMsgType, web

from p2pgate import __version__
from p2pgate.api import models as m
from p2pgate.api.errors import BadRequest, Conflict, Forbidden, NotFound, Unprocessable
from p2pgate.api.events import EventHub, Reset
from p2pgate.api.http import Route, json_body, model_body, principal_of, respond, validate
from p2pgate.api.tokens import COLLECTION_NAME, TokenError, TokenStore
from p2pgate.documents.views import DocumentView
from p2pgate.identity.deviceid import DeviceID, InvalidDeviceID
from p2pgate.pairing.service import PairingFailed, PairingService
from p2pgate.storage.registry import Device, DeviceRegistry, UnknownDevice
from sync.filters import FilterError, compile_filter

__all__ = ["ApiServices", "DocumentService", "DocumentView", "api_routes"]

log = logging.getLogger("p2pgate.api")

WS_PROTOCOL = "p2pgate.v1"


class DocumentService(Protocol):
    """What the API needs from the node's documents (implemented over `sync`)."""

    async def declare(self, collection: str, fields: dict[str, str]) -> dict[str, str]:
        """Add field types to a collection, return all of them; FieldTypeConflict if one changes."""
        ...

    async def fields(self, collection: str) -> dict[str, str]:
        """The declared field types of a collection (empty if none)."""
        ...

    async def get(self, collection: str, doc_id: str) -> DocumentView | None:
        """The document (deleted ones too), or None if the store holds no state for it."""
        ...

    async def put(self, collection: str, doc_id: str, data: dict[str, Any],
                  if_match: str | None) -> DocumentView:
        """Create or replace a document; a given `if_match` ("*" or a version) must match it."""
        ...

    async def patch(self, collection: str, doc_id: str, patch: dict[str, Any],
                    if_match: str | None) -> DocumentView:
        """Merge-patch a document (DocumentNotFound if none); `if_match` as for `put`."""
        ...

    async def delete(self, collection: str, doc_id: str,
                     if_match: str | None) -> DocumentView:
        """Delete a document (DocumentNotFound if none); `if_match` as for `put`."""
        ...

    async def list_docs(self, collection: str, limit: int, after: str | None,
                   since: int | None) -> tuple[list[DocumentView], int]:
        """A page of visible documents past ID `after` (changed after `since`), and the cursor."""
        ...

    async def conflicts(self, collection: str, doc_id: str) -> dict[str, tuple[Any, str]]:
        """Per `lww` field, the last concurrent write it lost as (value, device ID)."""
        ...

    async def set_policy(self, peer: str, policy: dict[str, Any]) -> None:
        """Apply a changed sync policy for `peer` now; a live session re-negotiates."""
        ...


@dataclass(frozen=True, slots=True)
class ApiServices:
    """What the API handlers reach; the node passes its components in."""

    device_id: DeviceID
    name: Callable[[], str]
    api_url: Callable[[], str]
    tokens: TokenStore
    registry: DeviceRegistry
    documents: DocumentService
    events: EventHub
    cursor: Callable[[], int]
    collected: Callable[[], tuple[int, int]]
    peers: Callable[[], list[dict[str, Any]]]
    pairing: PairingService


def _collection(request: web.Request, write: bool = False) -> str:
    name = request.match_info["c"]
    if not COLLECTION_NAME.match(name):
        raise BadRequest(f"invalid collection name {name!r}", code="bad_collection")
    principal = principal_of(request)
    allowed = principal.can_write(name) if write else principal.can_read(name)
    if not allowed:
        raise Forbidden(
            f"this token may not {'write' if write else 'read'} collection {name!r}"
        )
    return name


def _doc_id(request: web.Request) -> str:
    doc_id = request.match_info["id"]
    if not 0 < len(doc_id) <= 256:
        raise BadRequest("a document ID has 1 to 256 characters", code="bad_id")
    return doc_id


def _document(view: DocumentView) -> m.Document:
    return m.Document(collection=view.collection, id=view.doc_id, data=view.data,
                      version=view.version, deleted=view.deleted, cursor=view.cursor)


def _doc_response(view: DocumentView, status: int = 200) -> web.Response:
    return respond(_document(view), status, {"ETag": f'"{view.version}"'})


def _if_match(request: web.Request) -> str | None:
    value = request.headers.get("If-Match")
    return None if value is None else value.strip().removeprefix("W/").strip('"')


def _int_query(request: web.Request, key: str, default: int | None, lo: int, hi: int
               ) -> int | None:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {key} must be an integer", code="bad_query") from None
    if not lo <= value <= hi:
        raise BadRequest(f"query parameter {key} must be in {lo}..{hi}", code="bad_query")
    return value


def _device_info(d: Device) -> m.DeviceInfo:
    return m.DeviceInfo(
        device_id=str(d.device_id), short_id=d.device_id.short, name=d.name,
        state=d.state.value, first_seen=d.first_seen, last_seen=d.last_seen,
        addresses=list(d.addresses), relays=list(d.relays),
    )


def _app_info(app: Any) -> m.AppInfo:
    return m.AppInfo(name=app.name, scopes=[str(s) for s in app.scopes],
                     created_at=app.created_at, expires_at=app.expires_at)


def api_routes(s: ApiServices, openapi: Callable[[], dict[str, Any]]) -> list[Route]:
    """Every route of the API, bound to the node's services."""

    async def health(request: web.Request) -> web.Response:
        return respond(m.Health(version=__version__))

    async def openapi_json(request: web.Request) -> web.Response:
        return web.json_response(openapi())

    async def node(request: web.Request) -> web.Response:
        return respond(m.NodeInfo(
            device_id=str(s.device_id), short_id=s.device_id.short, name=s.name(),
            version=__version__, api_url=s.api_url(), cursor=s.cursor(),
            collected_changes=s.collected()[0], purged_documents=s.collected()[1],
        ))

    async def put_collection(request: web.Request) -> web.Response:
        collection = _collection(request, write=True)
        body = await model_body(request, m.CollectionFields)
        fields = await s.documents.declare(collection, dict(body.fields))
        return respond(m.CollectionFields.model_validate({"fields": fields}))

    async def get_collection(request: web.Request) -> web.Response:
        fields = await s.documents.fields(_collection(request))
        return respond(m.CollectionFields.model_validate({"fields": fields}))

    async def get_doc(request: web.Request) -> web.Response:
        collection, doc_id = _collection(request), _doc_id(request)
        view = await s.documents.get(collection, doc_id)
        if view is None or view.deleted:
            raise NotFound(f"no document {doc_id!r} in {collection!r}")
        if_none = request.headers.get("If-None-Match", "").strip('"')
        if if_none == view.version:
            return web.Response(status=304, headers={"ETag": f'"{view.version}"'})
        return _doc_response(view)

    async def put_doc(request: web.Request) -> web.Response:
        collection, doc_id = _collection(request, write=True), _doc_id(request)
        data = await json_body(request)
        if not isinstance(data, dict):
            raise BadRequest("a document is a JSON object", code="not_an_object")
        view = await s.documents.put(collection, doc_id, data, _if_match(request))
        return _doc_response(view, 201 if view.created else 200)

    async def patch_doc(request: web.Request) -> web.Response:
        collection, doc_id = _collection(request, write=True), _doc_id(request)
        patch = await json_body(request)
        if not isinstance(patch, dict):
            raise BadRequest("a patch is a JSON object", code="not_an_object")
        return _doc_response(await s.documents.patch(collection, doc_id, patch,
                                                     _if_match(request)))

    async def delete_doc(request: web.Request) -> web.Response:
        collection, doc_id = _collection(request, write=True), _doc_id(request)
        return _doc_response(await s.documents.delete(collection, doc_id, _if_match(request)))

    async def list_docs(request: web.Request) -> web.Response:
        collection = _collection(request)
        limit = _int_query(request, "limit", 100, 1, 1000)
        since = _int_query(request, "since", None, 0, 2**53 - 1)
        after = request.query.get("after")
        views, cursor = await s.documents.list_docs(collection, limit or 100, after, since)
        next_after = views[-1].doc_id if len(views) == limit else None
        return respond(m.DocumentList(items=[_document(v) for v in views],
                                      next_after=next_after, cursor=cursor))

    async def doc_conflicts(request: web.Request) -> web.Response:
        collection, doc_id = _collection(request), _doc_id(request)
        found = await s.documents.conflicts(collection, doc_id)
        return respond(m.Conflicts(
            collection=collection, id=doc_id,
            fields={k: m.Conflict(value=v, origin=o) for k, (v, o) in found.items()},
        ))

    async def events(request: web.Request) -> web.StreamResponse:
        principal = principal_of(request)
        after = _int_query(request, "cursor", None, 0, 2**53 - 1)
        ws = web.WebSocketResponse(protocols=(WS_PROTOCOL,), heartbeat=20)
        await ws.prepare(request)
        reader = asyncio.create_task(_drain_client(ws))
        try:
            async for item in s.events.stream(after, principal.can_read):
                if reader.done():
                    break
                if isinstance(item, Reset):
                    event = m.Event(type="reset", cursor=item.cursor, reason=item.reason)
                else:
                    event = m.Event(type="change", cursor=item.cursor, collection=item.collection,
                                    id=item.doc_id, deleted=item.deleted, origin=item.origin)
                await ws.send_str(event.model_dump_json(exclude_none=True))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await ws.close()
        return ws

    async def list_apps(request: web.Request) -> web.Response:
        return respond(m.AppList(items=[_app_info(a) for a in s.tokens.apps()]))

    async def add_app(request: web.Request) -> web.Response:
        body = await model_body(request, m.AppCreate)
        try:
            app, token = await s.tokens.add(body.name, body.scopes, body.ttl)
        except TokenError as exc:
            raise BadRequest(str(exc), code="bad_app") from None
        log.info("app token added: %s %s", app.name, [str(x) for x in app.scopes])
        info = _app_info(app)
        return respond(m.AppCreated(**info.model_dump(), token=token), 201)

    async def revoke_app(request: web.Request) -> web.Response:
        try:
            await s.tokens.revoke(request.match_info["name"])
        except TokenError as exc:
            raise NotFound(str(exc)) from None
        log.info("app token revoked: %s", request.match_info["name"])
        return web.Response(status=204)

    def _device_id(request: web.Request) -> DeviceID:
        try:
            return DeviceID.parse(request.match_info["device"])
        except InvalidDeviceID as exc:
            raise BadRequest(str(exc), code="bad_device_id") from None

    async def list_devices(request: web.Request) -> web.Response:
        return respond(m.DeviceList(items=[_device_info(d) for d in await s.registry.devices()]))

    async def get_device(request: web.Request) -> web.Response:
        device = await s.registry.get(_device_id(request))
        if device is None:
            raise NotFound("no such device")
        return respond(_device_info(device))

    async def device_action(request: web.Request) -> web.Response:
        device_id, action = _device_id(request), request.match_info["action"]
        moves = {"block": s.registry.block, "unblock": s.registry.unblock,
                 "revoke": s.registry.revoke}
        try:
            if action == "rename":
                body = await model_body(request, m.DeviceRename)
                device = await s.registry.rename(device_id, body.name)
            elif action in moves:
                device = await moves[action](device_id)
            else:
                raise NotFound(f"no device action {action!r}")
        except UnknownDevice as exc:
            raise NotFound(str(exc)) from None
        return respond(_device_info(device))

    async def peers(request: web.Request) -> web.Response:
        return respond(m.PeerList(items=s.peers()))

    async def list_policies(request: web.Request) -> web.Response:
        items = [
            m.Policy(device_id=str(d.device_id), collection=c, **p)
            for d in await s.registry.devices()
            for c, p in sorted(d.policy.items())
        ]
        return respond(m.PolicyList(items=items))

    async def put_policy(request: web.Request) -> web.Response:
        device_id = _device_id(request)
        collection = request.match_info["c"]
        if not COLLECTION_NAME.match(collection) and collection != "*":
            raise BadRequest(f"invalid collection name {collection!r}", code="bad_collection")
        body = await json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("a policy is a JSON object", code="not_an_object")
        policy = validate(m.Policy, body | {"device_id": str(device_id),
                                            "collection": collection})
        if policy.filter is not None:
            try:
                compile_filter(policy.filter)
            except FilterError as exc:
                raise Unprocessable(f"bad filter: {exc}", code="bad_filter") from None
        try:
            device = await s.registry.require(device_id)
            merged = dict(device.policy)
            merged[collection] = policy.model_dump(exclude={"device_id", "collection"})
            await s.registry.set_policy(device_id, merged)
            await s.documents.set_policy(str(device_id), merged)
        except UnknownDevice as exc:
            raise NotFound(str(exc)) from None
        return respond(policy)

    async def create_pairing(request: web.Request) -> web.Response:
        body = await model_body(request, m.PairingCreate) if request.can_read_body else (
            m.PairingCreate())
        offer, uri = s.pairing.create_offer(body.ttl, body.repair)
        qr = segno.make(uri, error="m").svg_inline(scale=4)
        log.info("pairing offer opened (expires in %.0f s)", body.ttl)
        return respond(m.PairingOffer(code=offer.code, uri=uri, qr_svg=qr,
                                      expires_at=offer.expires_at), 201)

    async def pairing_status(request: web.Request) -> web.Response:
        try:
            offer = s.pairing.status(int(request.match_info["nameplate"]))
        except ValueError:
            offer = None
        if offer is None:
            raise NotFound("no such pairing offer")
        result = offer.result
        return respond(m.PairingStatus(
            state=offer.state,
            device_id=None if result is None else str(result.peer.device_id),
            name=None if result is None else result.peer.name,
            verification=None if result is None else result.verification,
            reason=offer.reason, failures=offer.failures))

    async def join_pairing(request: web.Request) -> web.Response:
        body = await model_body(request, m.PairingJoin)
        text = body.uri or body.code
        if not text:
            raise BadRequest("give a code or a uri", code="bad_pairing")
        try:
            result = await s.pairing.join(text, body.address)
        except PairingFailed as exc:
            raise Conflict(str(exc), code="pairing_failed") from None
        return respond(m.PairingStatus(state="paired", device_id=str(result.peer.device_id),
                                       name=result.peer.name,
                                       verification=result.verification))

    return [
        Route("POST", "/api/v1/pairing", create_pairing, "Open a pairing offer (code, QR)",
              body=m.PairingCreate, response=m.PairingOffer, status=201, errors=(422,),
              tag="pairing"),
        Route("GET", "/api/v1/pairing/{nameplate}", pairing_status, "State of an offer",
              response=m.PairingStatus, errors=(404,), tag="pairing"),
        Route("POST", "/api/v1/pairing/join", join_pairing, "Pair with a code or URI",
              body=m.PairingJoin, response=m.PairingStatus, errors=(409, 422),
              tag="pairing"),
        Route("GET", "/api/v1/health", health, "Liveness", auth="public", response=m.Health),
        Route("GET", "/api/v1/openapi.json", openapi_json, "This document", auth="public"),
        Route("GET", "/api/v1/node", node, "This node", auth="app", response=m.NodeInfo),
        Route("PUT", "/api/v1/collections/{c}", put_collection, "Declare field types",
              auth="app", body=m.CollectionFields, response=m.CollectionFields,
              errors=(409, 413, 422), tag="documents"),
        Route("GET", "/api/v1/collections/{c}", get_collection, "Field types", auth="app",
              response=m.CollectionFields, tag="documents"),
        Route("GET", "/api/v1/collections/{c}/docs", list_docs, "List documents",
              auth="app", response=m.DocumentList, tag="documents"),
        Route("GET", "/api/v1/collections/{c}/docs/{id}", get_doc, "Read a document",
              auth="app", response=m.Document, errors=(404,), tag="documents"),
        Route("PUT", "/api/v1/collections/{c}/docs/{id}", put_doc, "Replace a document",
              auth="app", body="object", response=m.Document, errors=(412, 413, 422),
              tag="documents"),
        Route("PATCH", "/api/v1/collections/{c}/docs/{id}", patch_doc,
              "Merge-patch a document ($inc, $add, $remove, $splice)", auth="app",
              body="object", response=m.Document, errors=(404, 412, 413, 422),
              tag="documents"),
        Route("DELETE", "/api/v1/collections/{c}/docs/{id}", delete_doc, "Delete a document",
              auth="app", response=m.Document, errors=(404, 412), tag="documents"),
        Route("GET", "/api/v1/collections/{c}/docs/{id}/conflicts", doc_conflicts,
              "Each field's last losing concurrent write", auth="app",
              response=m.Conflicts, errors=(404,), tag="documents"),
        Route("GET", "/api/v1/events", events,
              "WebSocket of changes; `?cursor=N` resumes after N", auth="app", status=101,
              tag="documents"),
        Route("GET", "/api/v1/apps", list_apps, "App tokens", response=m.AppList, tag="admin"),
        Route("POST", "/api/v1/apps", add_app, "Create an app token", body=m.AppCreate,
              response=m.AppCreated, status=201, errors=(422,), tag="admin"),
        Route("DELETE", "/api/v1/apps/{name}", revoke_app, "Revoke an app token", status=204,
              errors=(404,), tag="admin"),
        Route("GET", "/api/v1/devices", list_devices, "Known devices", response=m.DeviceList,
              tag="admin"),
        Route("GET", "/api/v1/devices/{device}", get_device, "One device",
              response=m.DeviceInfo, errors=(404,), tag="admin"),
        Route("POST", "/api/v1/devices/{device}/{action}", device_action,
              "rename, block, unblock or revoke a device", response=m.DeviceInfo,
              errors=(404, 409, 422), tag="admin"),
        Route("GET", "/api/v1/peers", peers, "Connected peers", response=m.PeerList,
              tag="admin"),
        Route("GET", "/api/v1/policies", list_policies, "Sync policies",
              response=m.PolicyList, tag="admin"),
        Route("PUT", "/api/v1/policies/{device}/{c}", put_policy,
              "Set how one collection syncs with one device", body=m.Policy,
              response=m.Policy, errors=(404, 422), tag="admin"),
    ]


async def _drain_client(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) client messages so pings, pongs and close frames get handled."""
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break
