"""The one error hierarchy of the project, defined at its lowest layer.

`sync/` imports nothing from `p2pgate`, so the hierarchy lives here and
`p2pgate.errors` re-exports it. The split follows h11: `LocalProtocolError` is the
caller's misuse (a bug, or bad input from the user), `RemoteProtocolError` a peer
that broke the protocol.
"""

from __future__ import annotations

__all__ = ["DocumentTooLarge", "LocalProtocolError", "P2PGateError", "RemoteProtocolError",
           "SyncError"]


class P2PGateError(Exception):
    """Base of every error the project raises on purpose."""


SyncError = P2PGateError  # the name the sync package has always used


class LocalProtocolError(P2PGateError):
    """The caller misused the API: bad input, wrong state, a value out of range."""


class RemoteProtocolError(P2PGateError):
    """A peer broke the protocol: undecodable bytes, a bad message, a bad change.

    `code` is one of the `sync.codec.CLOSE_*` codes; it travels in the session's
    Close message and in the `ProtocolErrorOccurred` event.
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class DocumentTooLarge(LocalProtocolError):
    """A batch would make a document's state larger than its storage accepts.

    A storage raises it from `apply_batch` (and writes nothing); the replica refuses a
    local write with it, and a peer's change or state that would do it (see
    `Replica.receive_changes`).
    """

    def __init__(self, collection: str, doc_id: str, size: int, limit: int) -> None:
        super().__init__(f"document {collection}/{doc_id} would be {size} bytes; "
                         f"the limit is {limit} bytes")
        self.collection, self.doc_id, self.size, self.limit = collection, doc_id, size, limit
