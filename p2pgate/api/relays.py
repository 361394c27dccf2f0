"""The local API's relay endpoints: each relay's login status, handing over a token."""

from __future__ import annotations

from aiohttp import web

from p2pgate.api import models as m
from p2pgate.api.errors import NotFound, Unprocessable
from p2pgate.api.http import Route, model_body, respond
from p2pgate.relay.access import RelayAccess, RelayStatus, UnknownRelay

__all__ = ["relay_routes"]


def _info(status: RelayStatus) -> m.RelayInfo:
    return m.RelayInfo(url=status.url, logged_in=status.logged_in, has_token=status.has_token,
                       token_expires_at=status.token_expires_at, refusal=status.refusal,
                       stun_address=status.stun_address,
                       stun=status.stun,
                       reflexive_address=status.reflexive_address)


def relay_routes(access: RelayAccess) -> list[Route]:
    """The relay routes, bound to the node's relay access (admin token only)."""

    async def list_relays(request: web.Request) -> web.Response:
        return respond(m.RelayList(items=[_info(s) for s in access.statuses()]))

    async def set_token(request: web.Request) -> web.Response:
        body = await model_body(request, m.RelayTokenSet)
        try:
            status = await access.set_token(body.url, body.token.strip())
        except UnknownRelay as exc:
            raise NotFound(str(exc), code="unknown_relay") from None
        except ValueError as exc:
            raise Unprocessable(str(exc), code="bad_relay_url") from None
        return respond(_info(status))

    return [
        Route("GET", "/api/v1/relays", list_relays, "This node's relays and our logins",
              response=m.RelayList, tag="admin"),
        Route("PUT", "/api/v1/relays/token", set_token,
              "Hand over an access token for one of our relays (logs in again at once)",
              body=m.RelayTokenSet, response=m.RelayInfo, errors=(404, 422), tag="admin"),
    ]
