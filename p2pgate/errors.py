"""The one error hierarchy of the p2pgate package."""


class P2PGateError(Exception):
    """Base of every error p2pgate raises on purpose."""


class LocalProtocolError(P2PGateError):
    """The caller misused an API or a protocol (our bug, or bad input from the user)."""


class RemoteProtocolError(P2PGateError):
    """A peer broke the protocol."""
