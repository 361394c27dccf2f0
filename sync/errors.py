"""The one error hierarchy of the sync package (it never imports p2pgate)."""

from __future__ import annotations

__all__ = ["LocalProtocolError", "RemoteProtocolError", "SyncError"]


class SyncError(Exception):
    """Base of every error the sync package raises on purpose."""


class LocalProtocolError(SyncError):
    """The caller misused the API: bad input, wrong state, a value out of range."""


class RemoteProtocolError(SyncError):
    """A peer broke the protocol: undecodable bytes, a bad message, a bad change.

    `code` is one of the `sync.codec.CLOSE_*` codes; it travels in the session's
    Close message and in the `ProtocolErrorOccurred` event.
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
