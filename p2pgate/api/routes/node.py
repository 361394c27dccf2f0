"""The node's own endpoints: liveness, this node, the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from p2pgate import __version__
from p2pgate.api import models as m
from p2pgate.api.http import Route, respond
from p2pgate.api.routes.services import ApiServices

__all__ = ["node_routes"]


class _NodeHandlers:
    """The handlers; their names are the OpenAPI operation IDs."""

    def __init__(self, s: ApiServices, openapi: Callable[[], dict[str, Any]]) -> None:
        self.s, self.openapi = s, openapi

    async def health(self, request: web.Request) -> web.Response:
        return respond(m.Health(version=__version__))

    async def openapi_json(self, request: web.Request) -> web.Response:
        return web.json_response(self.openapi())

    async def node(self, request: web.Request) -> web.Response:
        s = self.s
        return respond(m.NodeInfo(
            device_id=str(s.device_id), short_id=s.device_id.short, name=s.name(),
            version=__version__, api_url=s.api_url(), cursor=s.cursor(),
            collected_changes=s.collected()[0], purged_documents=s.collected()[1],
        ))


def node_routes(s: ApiServices, openapi: Callable[[], dict[str, Any]]) -> list[Route]:
    """Health, the OpenAPI document (`openapi()` builds it) and this node's info."""
    h = _NodeHandlers(s, openapi)
    return [
        Route("GET", "/api/v1/health", h.health, "Liveness", auth="public", response=m.Health),
        Route("GET", "/api/v1/openapi.json", h.openapi_json, "This document", auth="public"),
        Route("GET", "/api/v1/node", h.node, "This node (admin token)", response=m.NodeInfo),
    ]
