"""The API's HTTP plumbing: routes with metadata, middlewares, JSON bodies, OpenAPI.

Every response that is not a success is `{"error": {"code", "message", "request_id"}}`;
no stack trace ever leaves the node. Middleware order: request ID, error mapping,
Host allowlist (DNS rebinding; the port strictly digits), CORS, the `Origin` of a
WebSocket upgrade (the API's own origin or a configured CORS origin, exactly),
authentication and rate limit. A 401 or a refused Host also closes the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from p2pgate.api.cursors import CursorView
from p2pgate.api.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    RequestTimeout,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
    from_domain,
)
from p2pgate.api.models import ErrorBody, ErrorResponse
from p2pgate.api.server import note_request
from p2pgate.api.tokens import Principal, TokenStore
from p2pgate.errors import P2PGateError
from p2pgate.ratelimit import RateLimiter

__all__ = [
    "Auth", "Route", "bearer_token", "build_application", "cursors_of", "json_body",
    "model_body", "principal_of", "respond", "stopping", "validate",
]

log = logging.getLogger("p2pgate.api")

Auth = Literal["public", "app", "admin"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)
BODY_TIMEOUT = 10.0  # seconds for a whole request body to arrive


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint and what the OpenAPI document says about it."""

    method: str
    path: str
    handler: Handler
    summary: str
    auth: Auth = "admin"
    body: type[BaseModel] | Literal["object"] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    tag: str = "node"


def principal_of(request: web.Request) -> Principal:
    """The caller of a request, as the auth middleware authenticated it."""
    return request[PRINCIPAL]


def cursors_of(request: web.Request) -> CursorView:
    """How the caller of a request sees cursors and versions (`p2pgate.api.cursors`)."""
    return request.app[_GATE].tokens.cursor_view(principal_of(request))


def stopping(request: web.Request) -> asyncio.Event:
    """Set when the server shuts down: long-lived handlers (WebSockets) end at once."""
    return request.app[_STOPPING]


def respond(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
            ) -> web.Response:
    """A JSON response holding `model`."""
    return web.Response(
        body=model.model_dump_json(), status=status, headers=headers,
        content_type="application/json",
    )


async def json_body(request: web.Request) -> Any:
    """The request body parsed as JSON; raises TooLarge, or BadRequest if empty or not JSON."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge(f"request body exceeds {request.app[MAX_BODY]} bytes") from None
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {BODY_TIMEOUT:g} s"
                             ) from None
    if not raw:
        raise BadRequest("a JSON body is required", code="empty_body")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise BadRequest("body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers over 4,300 digits
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from None
    _check_json(value)
    return value


MAX_JSON_DEPTH = 64


def _check_json(value: Any) -> None:
    """Refuse what json.loads lets through but nothing downstream can hold: nesting deeper
    than `MAX_JSON_DEPTH` and strings (keys too) that are not Unicode (lone surrogates)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(f"body is nested deeper than {MAX_JSON_DEPTH}", code="invalid_json")
        if isinstance(item, dict):
            stack.extend((k, depth) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest("body holds a string that is not valid Unicode (a lone "
                                 "surrogate)", code="invalid_json") from None


async def model_body(request: web.Request, model: type[M]) -> M:
    """The request body as `model`; raises like `json_body`, or 422 (see `validate`)."""
    return validate(model, await json_body(request))


def validate(model: type[M], data: Any) -> M:
    """`data` as `model`, or 422 naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise Unprocessable(f"{where}: {err['msg']}") from None


def _error_response(request_id: str, exc: ApiError) -> web.Response:
    body = ErrorResponse(error=ErrorBody(code=exc.code, message=str(exc), request_id=request_id))
    headers = {"X-Request-ID": request_id}
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    response = respond(body, exc.status, headers)
    if exc.closes_connection:
        response.force_close()
    return response


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return TooLarge("request body too large")
    err = ApiError(exc.reason, code=exc.reason.lower().replace(" ", "_"))
    err.status = exc.status
    return err


def bearer_token(request: web.Request) -> str | None:
    """The bearer token of a request (header, or a browser WebSocket's subprotocol)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for proto in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        proto = proto.strip()
        if proto.startswith("bearer."):
            return proto.removeprefix("bearer.")
    return None


@dataclass(frozen=True, slots=True)
class _Gate:
    """What the middleware checks every request against, and where request IDs come from."""

    tokens: TokenStore
    rate: RateLimiter
    clock: Callable[[], float]
    hosts: frozenset[str]  # the Host allowlist
    origins: frozenset[str]  # the CORS origins
    auth_of: dict[tuple[str, str], Auth]  # (method, canonical path) -> auth
    request_ids: Iterator[str]


_GATE: web.AppKey[_Gate] = web.AppKey("gate", _Gate)
_STOPPING: web.AppKey[asyncio.Event] = web.AppKey("stopping", asyncio.Event)


async def _on_shutdown(app: web.Application) -> None:
    """Runs in `AppRunner.cleanup()` before it waits for handlers: end the WebSockets."""
    app[_STOPPING].set()


def build_application(
    routes: Iterable[Route],
    tokens: TokenStore,
    *,
    max_body: int,
    rate: RateLimiter,
    allowed_hosts: Iterable[str] = (),
    cors_origins: Iterable[str] = (),
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """An aiohttp application serving `routes` behind the API's middlewares."""
    prefix = secrets.token_hex(4)
    gate = _Gate(
        tokens=tokens, rate=rate, clock=clock,
        hosts=LOCAL_HOSTS | {h.lower().strip("[]") for h in allowed_hosts},
        origins=frozenset(cors_origins), auth_of={},
        request_ids=(f"{prefix}-{n:x}" for n in itertools.count(1)),
    )
    app = web.Application(middlewares=[_request_id_middleware], client_max_size=max_body)
    app[MAX_BODY] = max_body
    app[_GATE] = gate
    app[_STOPPING] = asyncio.Event()
    app.on_shutdown.append(_on_shutdown)
    for route in routes:
        resource = app.router.add_resource(route.path)
        resource.add_route(route.method, route.handler)
        gate.auth_of[(route.method, resource.canonical)] = route.auth
    if gate.origins:
        for any_resource in list(app.router.resources()):
            any_resource.add_route("OPTIONS", _no_handler)  # type: ignore[attr-defined]
    return app


@web.middleware
async def _request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware: a request ID and a debug log line around `_handle`."""
    note_request(request)
    rid = next(request.app[_GATE].request_ids)
    request[REQUEST_ID] = rid
    started = time.perf_counter()
    try:
        response = await _handle(request, handler, rid)
    finally:
        log.debug("%s %s %s (%.1f ms)", rid, request.method, request.path,
                  (time.perf_counter() - started) * 1000)
    if not response.prepared:
        response.headers["X-Request-ID"] = rid
    return response


async def _handle(request: web.Request, handler: Handler, rid: str) -> web.StreamResponse:
    """Host check, CORS preflight, authentication, then `handler`; errors become bodies."""
    gate = request.app[_GATE]
    try:
        _check_host(request, gate.hosts)
        if request.method == "OPTIONS":
            return _preflight(request, gate.origins)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            _check_ws_origin(request, gate.origins)
        route = request.match_info.route
        auth = gate.auth_of.get((route.method, getattr(route.resource, "canonical", "")))
        if auth != "public" and auth is not None:
            _authenticate(request, auth, gate)
        response = await handler(request)
    except P2PGateError as exc:  # ours, or a lower layer's domain error: one mapping
        mapped = from_domain(exc)
        if mapped is None:
            log.exception("%s %s %s failed", rid, request.method, request.path)
            return _error_response(rid, ApiError("internal error; see the node's log"))
        if mapped.status >= 500:
            log.error("%s %s %s: %s", rid, request.method, request.path, mapped)
        return _with_cors(request, _error_response(rid, mapped), gate.origins)
    except web.HTTPException as exc:
        return _with_cors(request, _error_response(rid, _from_http_exception(exc)), gate.origins)
    except Exception:
        log.exception("%s %s %s failed", rid, request.method, request.path)
        return _error_response(rid, ApiError("internal error; see the node's log"))
    return _with_cors(request, response, gate.origins)


_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::[0-9]{1,5})?")


def _check_host(request: web.Request, hosts: frozenset[str]) -> None:
    """Refuse a Host not in `hosts` (DNS rebinding guard): `name[:port]` or `[v6][:port]`,
    the port digits only, nothing after it (`localhost:1@evil.example` is refused)."""
    match = _HOST.fullmatch(request.host)
    host = "" if match is None else (match["v6"] or match["name"])
    if host.lower() not in hosts:
        raise Forbidden("this Host is not allowed (DNS rebinding guard)", code="bad_host",
                        closes_connection=True)


def _check_ws_origin(request: web.Request, origins: frozenset[str]) -> None:
    """Refuse a WebSocket upgrade from a browser page of a foreign origin (cross-site
    WebSocket hijacking). No `Origin`: not a browser. Allowed: the API's own origin
    (`http://` + the Host, already checked) and the configured CORS origins, compared
    exactly, like the CORS check."""
    origin = request.headers.get("Origin")
    if origin is None or origin in origins:
        return
    if origin.lower() == f"http://{request.host}".lower():
        return
    raise Forbidden("this Origin may not open the API's WebSockets", code="bad_origin",
                    closes_connection=True)


def _authenticate(request: web.Request, auth: Auth, gate: _Gate) -> None:
    """Check the bearer token for `auth` and the token's rate; remember the principal."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("missing bearer token")
    principal = gate.tokens.authenticate(token)
    if principal is None:
        raise Unauthorized("unknown, revoked or expired token")
    if auth == "admin" and not principal.admin:
        raise Forbidden("this needs the admin token")
    wait = gate.rate.acquire(principal.token_id, gate.clock())
    if wait > 0:
        raise TooManyRequests("too many requests for this token", wait)
    request[PRINCIPAL] = principal


def _preflight(request: web.Request, origins: frozenset[str]) -> web.Response:
    """The answer to a CORS preflight from one of `origins`."""
    origin = request.headers.get("Origin")
    if origin not in origins:
        raise Forbidden("CORS origin not allowed", code="cors_origin")
    return web.Response(status=204, headers={
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET, PUT, PATCH, DELETE, POST",
        "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
        "Access-Control-Expose-Headers": "ETag, X-Request-ID",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    })


def _with_cors(request: web.Request, response: web.StreamResponse, origins: frozenset[str]
               ) -> web.StreamResponse:
    """`response` with the CORS headers if the request came from one of `origins`."""
    origin = request.headers.get("Origin")
    if origin and origin in origins and not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "ETag, X-Request-ID"
        response.headers["Vary"] = "Origin"
    return response


async def _no_handler(request: web.Request) -> web.Response:  # preflight is middleware's job
    raise web.HTTPMethodNotAllowed(request.method, [])
