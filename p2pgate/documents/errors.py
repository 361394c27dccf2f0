"""The documents service's errors: what a caller did wrong, each with a short code.

They say nothing about HTTP; the API maps each one to its status in one place
(`p2pgate.api.errors.from_domain`).
"""

from __future__ import annotations

from p2pgate.errors import LocalProtocolError

__all__ = ["DocumentError", "DocumentNotFound", "DocumentTooLarge", "FieldTypeConflict",
           "InvalidDocument", "VersionMismatch", "WritesBacklogged"]


class DocumentError(LocalProtocolError):
    """Base of the documents service's errors; `code` is stable and machine-readable."""

    code = "invalid"


class DocumentNotFound(DocumentError):
    """The document does not exist, or is deleted."""

    code = "not_found"


class VersionMismatch(DocumentError):
    """The document changed: the caller's expected version (If-Match) is not current."""

    code = "precondition_failed"


class InvalidDocument(DocumentError):
    """The document, patch or declaration is not acceptable (a bad field, operator...)."""

    code = "invalid"


class FieldTypeConflict(DocumentError):
    """A declaration would change the type of a field already declared."""

    code = "conflict"


class DocumentTooLarge(InvalidDocument):
    """The write would make the document's stored state larger than the limit
    (`p2pgate.storage.syncstore.MAX_DOC_BYTES`); nothing was written."""

    code = "document_too_large"


class WritesBacklogged(DocumentError):
    """The writer already has too many writes waiting; retry after `retry_after` seconds."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
