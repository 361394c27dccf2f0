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
    "TooLarge", "TooManyRequests", "Unauthorized", "Unavailable", "Unprocessable",
    "from_domain",
]


class ApiError(P2PGateError):
    status = 500
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class PreconditionFailed(ApiError):
    status, code = 412, "precondition_failed"


class TooLarge(ApiError):
    status, code = 413, "body_too_large"


class Unprocessable(ApiError):
    status, code = 422, "invalid"


class TooManyRequests(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ApiError):
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
