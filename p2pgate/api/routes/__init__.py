"""The local API's endpoints (DESIGN "Public contract"), one module per area.

`node` (health, this node, the OpenAPI document), `documents` (collections, documents,
the change WebSocket), `devices` (app tokens, devices, peers, sync policies), `pairing`;
`params` reads path, query and headers, `services` is what the handlers reach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from p2pgate.api.http import Route
from p2pgate.api.routes.devices import device_routes
from p2pgate.api.routes.documents import document_routes
from p2pgate.api.routes.node import node_routes
from p2pgate.api.routes.pairing import pairing_routes
from p2pgate.api.routes.services import ApiServices, DocumentService, DocumentView

__all__ = ["ApiServices", "DocumentService", "DocumentView", "api_routes"]


def api_routes(s: ApiServices, openapi: Callable[[], dict[str, Any]]) -> list[Route]:
    """Every route of the API, bound to the node's services; `openapi()` builds the document."""
    return [*pairing_routes(s), *node_routes(s, openapi), *document_routes(s), *device_routes(s)]
