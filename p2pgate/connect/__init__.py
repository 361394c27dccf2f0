"""Connections to trusted peers: the sans-I/O connection core (paths, happy eyeballs,
ranking, moves, probes, redial) and its asyncio adapter, the `ConnectionManager`."""

from p2pgate.connect.core import (
    CancelDials,
    CloseSession,
    ConnectionCore,
    DialDirect,
    DialRelay,
    PeerUnreachable,
    SessionAdopted,
    path_rank,
)
from p2pgate.connect.manager import ConnectionManager

__all__ = [
    "CancelDials",
    "CloseSession",
    "ConnectionCore",
    "ConnectionManager",
    "DialDirect",
    "DialRelay",
    "PeerUnreachable",
    "SessionAdopted",
    "path_rank",
]
