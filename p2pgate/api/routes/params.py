"""Reading a request's path, query and headers; a bad value raises the API error for it."""

from __future__ import annotations

from aiohttp import web

from p2pgate.api.errors import BadRequest, Forbidden
from p2pgate.api.http import principal_of
from p2pgate.api.tokens import COLLECTION_NAME
from p2pgate.identity.deviceid import DeviceID, InvalidDeviceID

__all__ = ["MAX_CURSOR", "collection_of", "device_id_of", "doc_id_of", "if_match", "int_query"]

MAX_CURSOR = 2**53 - 1  # the largest integer JSON carries exactly


def collection_of(request: web.Request, write: bool = False) -> str:
    """The `{c}` collection name, checked against the caller's read (or write) scopes."""
    name = request.match_info["c"]
    if not COLLECTION_NAME.fullmatch(name):
        raise BadRequest(f"invalid collection name {name!r}", code="bad_collection")
    principal = principal_of(request)
    allowed = principal.can_write(name) if write else principal.can_read(name)
    if not allowed:
        raise Forbidden(
            f"this token may not {'write' if write else 'read'} collection {name!r}"
        )
    return name


def doc_id_of(request: web.Request) -> str:
    """The `{id}` document ID (1 to 256 characters)."""
    doc_id = request.match_info["id"]
    if not 0 < len(doc_id) <= 256:
        raise BadRequest("a document ID has 1 to 256 characters", code="bad_id")
    return doc_id


def device_id_of(request: web.Request) -> DeviceID:
    """The `{device}` device ID."""
    try:
        return DeviceID.parse(request.match_info["device"])
    except InvalidDeviceID as exc:
        raise BadRequest(str(exc), code="bad_device_id") from None


def if_match(request: web.Request) -> str | None:
    """The version an `If-Match` header names (quotes and `W/` stripped), if any."""
    value = request.headers.get("If-Match")
    return None if value is None else value.strip().removeprefix("W/").strip('"')


def int_query(request: web.Request, key: str, default: int | None, lo: int, hi: int
              ) -> int | None:
    """The integer query parameter `key` in `lo..hi`, or `default` if absent."""
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
