"""API errors: each maps to one HTTP status and a stable code."""

from __future__ import annotations

from p2pgate.documents.errors import (
    DocumentError,
    DocumentNotFound,
    FieldTypeConflict,
    InvalidDocument,
    VersionMismatch,
)
from p2pgate.errors import P2PGateError

__all__ = [
    "ApiError", "BadRequest", "Conflict", "Forbidden", "NotFound", "PreconditionFailed",
    "RequestTimeout", "TooLarge", "TooManyRequests", "Unauthorized", "Unavailable",
    "Unprocessable", "from_domain",
]


class ApiError(P2PGateError):
    """An error the API answers with HTTP `status` and stable `code` (500 `internal` by default)."""

    status = 500
    code = "internal"
    closes_connection = False  # the answer also closes the connection (unauthenticated callers)

    def __init__(self, message: str, *, code: str | None = None,
                 closes_connection: bool | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if closes_connection is not None:
            self.closes_connection = closes_connection


class BadRequest(ApiError):
    """400: the request cannot be read (no body, invalid JSON, a bad parameter)."""

    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    """401: no bearer token, or an unknown, revoked or expired one."""

    status, code = 401, "unauthorized"
    closes_connection = True


class Forbidden(ApiError):
    """403: the token may not do this (scope, admin only), or the Host or Origin is refused."""

    status, code = 403, "forbidden"


class RequestTimeout(ApiError):
    """408: the request body did not arrive in time."""

    status, code = 408, "request_timeout"
    closes_connection = True


class NotFound(ApiError):
    """404: no such document, device, pairing offer or action."""

    status, code = 404, "not_found"


class Conflict(ApiError):
    """409: the request contradicts the current state (a field type, a failed pairing)."""

    status, code = 409, "conflict"


class PreconditionFailed(ApiError):
    """412: If-Match does not match the document's version."""

    status, code = 412, "precondition_failed"


class TooLarge(ApiError):
    """413: the request body exceeds the configured limit."""

    status, code = 413, "body_too_large"


class Unprocessable(ApiError):
    """422: the body is JSON but not a valid request; the message names the field."""

    status, code = 422, "invalid"


class TooManyRequests(ApiError):
    """429: rate limited; the client may retry after `retry_after` seconds."""

    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ApiError):
    """503: the node cannot serve the request now."""

    status, code = 503, "unavailable"


_DOMAIN: dict[type[DocumentError], type[ApiError]] = {
    DocumentNotFound: NotFound,
    VersionMismatch: PreconditionFailed,
    InvalidDocument: Unprocessable,
    FieldTypeConflict: Conflict,
}


def from_domain(exc: P2PGateError) -> ApiError | None:
    """The HTTP error for a domain error of a layer below (None: not one we map)."""
    if isinstance(exc, ApiError):
        return exc
    for domain, api in _DOMAIN.items():
        if isinstance(exc, domain):
            return api(str(exc), code=exc.code)
    if isinstance(exc, DocumentError):
        return Unprocessable(str(exc), code=exc.code)
    return None
