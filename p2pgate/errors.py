"""The project's one error hierarchy (defined in `sync.errors`, the lowest layer).

`LocalProtocolError` is the caller's misuse, `RemoteProtocolError` a peer that broke
the protocol; adapters map socket, ssl, aiohttp and libSQL errors to these types.
"""

from sync.errors import LocalProtocolError, P2PGateError, RemoteProtocolError

__all__ = ["LocalProtocolError", "P2PGateError", "RemoteProtocolError"]
