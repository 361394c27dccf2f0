"""Reading a request's path, query and headers; a bad value raises the API error for it.

Names and IDs, one rule everywhere (paths, scopes, the SDK): a collection name is ASCII
(`[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`, whole string), so Unicode normalisation cannot make
two of them look alike; a document ID is any Unicode text, normalised to NFC on the way
in (path and `after`), so NFC and NFD `café` name one document, stored and shown as NFC.
"""

from __future__ import annotations

import unicodedata

from aiohttp import web

from p2pgate.api.errors import BadRequest, Forbidden
from p2pgate.api.http import principal_of
from p2pgate.api.tokens import COLLECTION_NAME
from p2pgate.identity.deviceid import DeviceID, InvalidDeviceID

__all__ = ["MAX_CURSOR", "collection_of", "device_id_of", "doc_id_of", "doc_id_query",
           "if_match", "int_query"]

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
    """The `{id}` document ID in NFC (1 to 256 characters)."""
    return _doc_id(request.match_info["id"])


def doc_id_query(request: web.Request, key: str) -> str | None:
    """The document ID in query parameter `key` (NFC), or None if absent or empty."""
    raw = request.query.get(key)
    return _doc_id(raw) if raw else None


def _doc_id(raw: str) -> str:
    doc_id = unicodedata.normalize("NFC", raw)
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
