"""The admin endpoints: app tokens, known devices, connected peers, sync policies."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from p2pgate.api import models as m
from p2pgate.api.errors import BadRequest, NotFound, Unprocessable
from p2pgate.api.http import Route, json_body, model_body, respond, validate
from p2pgate.api.routes.params import device_id_of
from p2pgate.api.routes.services import ApiServices
from p2pgate.api.tokens import COLLECTION_NAME, TokenError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.storage.registry import Device, UnknownDevice
from sync.filters import FilterError, compile_filter

__all__ = ["device_routes"]

log = logging.getLogger("p2pgate.api")


def _device_info(d: Device) -> m.DeviceInfo:
    return m.DeviceInfo(
        device_id=str(d.device_id), short_id=d.device_id.short, name=d.name,
        state=d.state.value, first_seen=d.first_seen, last_seen=d.last_seen,
        addresses=list(d.addresses), relays=list(d.relays),
    )


def _app_info(app: Any) -> m.AppInfo:
    return m.AppInfo(name=app.name, scopes=[str(s) for s in app.scopes],
                     created_at=app.created_at, expires_at=app.expires_at)


async def _policy_body(request: web.Request, device_id: DeviceID) -> m.Policy:
    """The `{c}` policy of `device_id` in the body, its filter compiled to check it."""
    collection = request.match_info["c"]
    if not COLLECTION_NAME.fullmatch(collection) and collection != "*":
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
    return policy


class _AdminHandlers:
    """The handlers; their names are the OpenAPI operation IDs."""

    def __init__(self, s: ApiServices) -> None:
        self.s = s

    async def list_apps(self, request: web.Request) -> web.Response:
        return respond(m.AppList(items=[_app_info(a) for a in self.s.tokens.apps()]))

    async def add_app(self, request: web.Request) -> web.Response:
        body = await model_body(request, m.AppCreate)
        try:
            app, token = await self.s.tokens.add(body.name, body.scopes, body.ttl)
        except TokenError as exc:
            raise BadRequest(str(exc), code="bad_app") from None
        log.info("app token added: %s %s", app.name, [str(x) for x in app.scopes])
        info = _app_info(app)
        return respond(m.AppCreated(**info.model_dump(), token=token), 201)

    async def revoke_app(self, request: web.Request) -> web.Response:
        try:
            await self.s.tokens.revoke(request.match_info["name"])
        except TokenError as exc:
            raise NotFound(str(exc)) from None
        log.info("app token revoked: %s", request.match_info["name"])
        return web.Response(status=204)

    async def list_devices(self, request: web.Request) -> web.Response:
        devices = await self.s.registry.devices()
        return respond(m.DeviceList(items=[_device_info(d) for d in devices]))

    async def get_device(self, request: web.Request) -> web.Response:
        device = await self.s.registry.get(device_id_of(request))
        if device is None:
            raise NotFound("no such device")
        return respond(_device_info(device))

    async def device_action(self, request: web.Request) -> web.Response:
        device_id, action = device_id_of(request), request.match_info["action"]
        registry = self.s.registry
        moves = {"block": registry.block, "unblock": registry.unblock,
                 "revoke": registry.revoke}
        try:
            if action == "rename":
                body = await model_body(request, m.DeviceRename)
                device = await registry.rename(device_id, body.name)
            elif action in moves:
                device = await moves[action](device_id)
            else:
                raise NotFound(f"no device action {action!r}")
        except UnknownDevice as exc:
            raise NotFound(str(exc)) from None
        return respond(_device_info(device))

    async def peers(self, request: web.Request) -> web.Response:
        return respond(m.PeerList(items=self.s.peers()))

    async def list_policies(self, request: web.Request) -> web.Response:
        items = [
            m.Policy(device_id=str(d.device_id), collection=c, **p)
            for d in await self.s.registry.devices()
            for c, p in sorted(d.policy.items())
        ]
        return respond(m.PolicyList(items=items))

    async def put_policy(self, request: web.Request) -> web.Response:
        device_id = device_id_of(request)
        policy = await _policy_body(request, device_id)
        try:
            device = await self.s.registry.require(device_id)
            merged = dict(device.policy)
            merged[policy.collection] = policy.model_dump(exclude={"device_id", "collection"})
            await self.s.registry.set_policy(device_id, merged)
            await self.s.documents.set_policy(str(device_id), merged)
        except UnknownDevice as exc:
            raise NotFound(str(exc)) from None
        return respond(policy)


def device_routes(s: ApiServices) -> list[Route]:
    """App tokens, devices, peers and policies; all of them need the admin token."""
    h = _AdminHandlers(s)
    return [
        Route("GET", "/api/v1/apps", h.list_apps, "App tokens", response=m.AppList, tag="admin"),
        Route("POST", "/api/v1/apps", h.add_app, "Create an app token", body=m.AppCreate,
              response=m.AppCreated, status=201, errors=(422,), tag="admin"),
        Route("DELETE", "/api/v1/apps/{name}", h.revoke_app, "Revoke an app token", status=204,
              errors=(404,), tag="admin"),
        Route("GET", "/api/v1/devices", h.list_devices, "Known devices", response=m.DeviceList,
              tag="admin"),
        Route("GET", "/api/v1/devices/{device}", h.get_device, "One device",
              response=m.DeviceInfo, errors=(404,), tag="admin"),
        Route("POST", "/api/v1/devices/{device}/{action}", h.device_action,
              "rename, block, unblock or revoke a device", response=m.DeviceInfo,
              errors=(404, 409, 422), tag="admin"),
        Route("GET", "/api/v1/peers", h.peers, "Connected peers", response=m.PeerList,
              tag="admin"),
        Route("GET", "/api/v1/policies", h.list_policies, "Sync policies",
              response=m.PolicyList, tag="admin"),
        Route("PUT", "/api/v1/policies/{device}/{c}", h.put_policy,
              "Set how one collection syncs with one device", body=m.Policy,
              response=m.Policy, errors=(404, 422), tag="admin"),
    ]
