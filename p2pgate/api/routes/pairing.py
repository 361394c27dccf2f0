"""Pairing: opening an offer (code, URI, QR), its state, joining another device's offer."""

from __future__ import annotations

import logging

import segno
from aiohttp import web

from p2pgate.api import models as m
from p2pgate.api.errors import BadRequest, Conflict, NotFound
from p2pgate.api.http import Route, model_body, respond
from p2pgate.api.routes.services import ApiServices
from p2pgate.pairing.service import PairingFailed

__all__ = ["pairing_routes"]

log = logging.getLogger("p2pgate.api")


class _PairingHandlers:
    """The handlers; their names are the OpenAPI operation IDs."""

    def __init__(self, s: ApiServices) -> None:
        self.s = s

    async def create_pairing(self, request: web.Request) -> web.Response:
        body = await model_body(request, m.PairingCreate) if request.can_read_body else (
            m.PairingCreate())
        offer, uri = await self.s.pairing.open_offer(body.ttl, body.repair)
        qr = segno.make(uri, error="m").svg_inline(scale=4)
        log.info("pairing offer opened (expires in %.0f s)", body.ttl)
        return respond(m.PairingOffer(code=offer.code, uri=uri, qr_svg=qr,
                                      expires_at=offer.expires_at), 201)

    async def pairing_status(self, request: web.Request) -> web.Response:
        try:
            offer = self.s.pairing.status(int(request.match_info["nameplate"]))
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

    async def join_pairing(self, request: web.Request) -> web.Response:
        body = await model_body(request, m.PairingJoin)
        text = body.uri or body.code
        if not text:
            raise BadRequest("give a code or a uri", code="bad_pairing")
        try:
            result = await self.s.pairing.join(text, body.address)
        except PairingFailed as exc:
            raise Conflict(str(exc), code="pairing_failed") from None
        return respond(m.PairingStatus(state="paired", device_id=str(result.peer.device_id),
                                       name=result.peer.name,
                                       verification=result.verification))


def pairing_routes(s: ApiServices) -> list[Route]:
    """Open an offer, follow its state, join one; all of them need the admin token."""
    h = _PairingHandlers(s)
    return [
        Route("POST", "/api/v1/pairing", h.create_pairing, "Open a pairing offer (code, QR)",
              body=m.PairingCreate, response=m.PairingOffer, status=201, errors=(422,),
              tag="pairing"),
        Route("GET", "/api/v1/pairing/{nameplate}", h.pairing_status, "State of an offer",
              response=m.PairingStatus, errors=(404,), tag="pairing"),
        Route("POST", "/api/v1/pairing/join", h.join_pairing, "Pair with a code or URI",
              body=m.PairingJoin, response=m.PairingStatus, errors=(409, 422),
              tag="pairing"),
    ]
