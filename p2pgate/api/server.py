"""The API's listening socket: read timeouts, a short keep-alive and a connection cap.

aiohttp alone keeps an idle connection for 3,630 s and waits for headers forever. Here a
new connection must deliver its first request's headers within `HEADER_TIMEOUT`; between
requests a connection idles `KEEPALIVE_TIMEOUT` at most (aiohttp's timer, which also
closes a connection stuck in a later request's headers); a request body must arrive
within `BODY_TIMEOUT` (`http.json_body`); a refused request (401, bad Host) closes its
connection. Past `MAX_CONNECTIONS` open connections a new one gets 503 and is closed,
so a flood cannot take the node's file descriptors.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = ["HEADER_TIMEOUT", "KEEPALIVE_TIMEOUT", "MAX_CONNECTIONS", "ApiSite", "api_runner",
           "note_request"]

HEADER_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 10.0  # the SDK's own keep-alive is shorter, so it never reuses a closed one
MAX_CONNECTIONS = 512
SHUTDOWN_TIMEOUT = 10.0

_BUSY_BODY = json.dumps({"error": {
    "code": "too_many_connections", "message": "the API has too many open connections",
    "request_id": "-"}}).encode()
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
         b"Connection: close\r\nRetry-After: 1\r\nContent-Length: "
         + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)

_SILENT: set[object] = set()  # new connections that have not sent a whole request head yet


def note_request(request: web.BaseRequest) -> None:
    """Record that `request`'s connection delivered a complete request head."""
    _SILENT.discard(request.protocol)


def api_runner(app: web.Application) -> web.AppRunner:
    """An AppRunner for the API with the keep-alive above and no access log."""
    return web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT,
                         keepalive_timeout=KEEPALIVE_TIMEOUT)


class _Refused(asyncio.Protocol):
    """A connection over the cap: one 503, then closed, whatever it sends."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)  # noqa: S101 (TCP)
        transport.write(_BUSY)
        transport.close()


class ApiSite(web.BaseSite):
    """A TCP site that caps open connections and times out a silent first request."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *,
                 max_connections: int = MAX_CONNECTIONS,
                 header_timeout: float = HEADER_TIMEOUT) -> None:
        super().__init__(runner)
        self._host, self._port = host, port
        self._max, self._header_timeout = max_connections, header_timeout
        self._fresh: dict[RequestHandler, float] = {}  # accepted, connection_made not yet run

    @property
    def name(self) -> str:
        """The site's URL."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        """Listen (the runner must be set up)."""
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self._host, self._port,
                                                reuse_address=True)

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None  # noqa: S101 (set up before start)
        now = asyncio.get_running_loop().time()
        made = set(server.connections)  # a burst of accepts runs before their connection_made
        self._fresh = {h: t for h, t in self._fresh.items() if h not in made and now - t < 5}
        if len(made) + len(self._fresh) >= self._max:
            return _Refused()
        handler = server()
        self._fresh[handler] = now
        _SILENT.add(handler)
        asyncio.get_running_loop().call_later(self._header_timeout, _close_if_silent, handler)
        return handler


def _close_if_silent(handler: RequestHandler) -> None:
    if handler in _SILENT:
        _SILENT.discard(handler)
        handler.force_close()  # closes the transport too
