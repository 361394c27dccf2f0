"""The OpenAPI 3.1 document, generated from the route table and the pydantic models."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from p2pgate import __version__
from p2pgate.api.http import Route
from p2pgate.api.models import ErrorResponse

__all__ = ["openapi_document"]

_REASONS = {
    400: "Bad request", 401: "Missing or invalid token", 403: "Forbidden",
    404: "Not found", 408: "The body did not arrive in time", 409: "Conflict",
    412: "If-Match does not match", 413: "Body too large",
    422: "Body failed validation", 429: "Rate limited (see Retry-After)", 503: "Unavailable",
}
_ALWAYS = (400, 403, 429)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _schemas(routes: list[Route]) -> dict[str, Any]:
    """The JSON schemas of every model a route takes or returns, and the error body."""
    models: set[type[BaseModel]] = {ErrorResponse}
    for r in routes:
        models.update(m for m in (r.body, r.response) if isinstance(m, type))
    _, defs = models_json_schema(
        [(m, "serialization") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = defs.get("$defs", {})
    return schemas


def _operation(r: Route) -> dict[str, Any]:
    """The OpenAPI operation of one route: parameters, body, responses."""
    params = [
        {"name": seg[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
        for seg in r.path.split("/") if seg.startswith("{")
    ]
    op: dict[str, Any] = {
        "summary": r.summary,
        "operationId": f"{r.method.lower()}_{r.handler.__name__.lstrip('_')}",
        "tags": [r.tag],
        "responses": {},
    }
    if params:
        op["parameters"] = params
    if r.auth == "public":
        op["security"] = []
    if r.body == "object":
        op["requestBody"] = {"required": True, "content": _json({"type": "object"})}
    elif r.body is not None:
        op["requestBody"] = {"required": True, "content": _json(_ref(r.body))}
    ok: dict[str, Any] = {"description": "Success"}
    if r.response is not None:
        ok["content"] = _json(_ref(r.response))
    op["responses"][str(r.status)] = ok
    codes = set(r.errors) | set(_ALWAYS) | ({401} if r.auth != "public" else set())
    if r.body is not None:
        codes.add(408)
    for code in sorted(codes):
        op["responses"][str(code)] = {
            "description": _REASONS[code], "content": _json(_ref(ErrorResponse)),
        }
    return op


def openapi_document(routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`, their models as components."""
    routes = list(routes)
    schemas = _schemas(routes)
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "p2pgate local API",
            "version": __version__,
            "description": "The local node's API. Bind is loopback; every call except "
            "health and this document needs `Authorization: Bearer TOKEN`.\n\n"
            "Names: a collection name is ASCII, `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}` (the whole "
            "name, in paths and scopes alike), so no Unicode normalisation applies to it. A "
            "document ID is 1 to 256 characters of any Unicode, normalised to NFC in paths "
            "and in `after`: NFC and NFD `café` are one document, shown in NFC.\n\n"
            "Cursors and versions: the admin token sees the node's own cursor (it counts "
            "every document update). An app token sees its own opaque values instead, in "
            "`cursor`, `version`, `ETag`, event cursors, and reads them back in `?cursor=`, "
            "`?since=` and `If-Match`; they are not ordered, differ between tokens, and tell "
            "nothing about collections the token cannot read. A list's `cursor` is then the "
            "latest change the token may see. `GET /api/v1/node` needs the admin token.\n\n"
            "Connections: request headers must arrive within 10 s, bodies within 10 s (408), "
            "an idle connection closes after 10 s, a 401 closes its connection, and past 512 "
            "open connections a new one gets 503. A WebSocket upgrade with an `Origin` "
            "header must come from the API's own origin or a configured CORS origin.",
        },
        "servers": [{"url": "http://127.0.0.1:8771"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
