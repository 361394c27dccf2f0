"""Events a replica reports through `Replica.next_event()`; all in the past tense."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ChangeRefused",
    "ClockSkewDetected",
    "DocumentChanged",
    "Event",
    "PeerSynced",
    "ProtocolErrorOccurred",
    "QuarantineReleased",
    "SessionClosed",
]


@dataclass(frozen=True, slots=True)
class DocumentChanged:
    """A change (local or remote) edited a document; for apps."""

    collection: str
    doc_id: str
    origin: str
    seq: int
    hlc: int
    deleted: bool


@dataclass(frozen=True, slots=True)
class ClockSkewDetected:
    """A change stamped too far ahead of our clock is held in quarantine."""

    peer_id: str
    origin: str
    seq: int
    hlc: int
    ahead_by: float


@dataclass(frozen=True, slots=True)
class ChangeRefused:
    """A peer sent a document its policy does not let it write; nothing was applied."""

    peer_id: str
    collection: str
    doc_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class QuarantineReleased:
    """A held change was applied: the clock caught up, or it was accepted."""

    origin: str
    seq: int
    accepted: bool


@dataclass(frozen=True, slots=True)
class PeerSynced:
    """Both sides of a session hold the same changes, as far as this side knows."""

    peer_id: str
    version_vector: dict[str, int]


@dataclass(frozen=True, slots=True)
class ProtocolErrorOccurred:
    """The peer broke the protocol; the session is closed with `code`."""

    peer_id: str
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """A session ended: closed locally, by the peer, or replaced by a new one."""

    peer_id: str
    code: int
    reason: str
    by_peer: bool


Event = (
    DocumentChanged
    | ClockSkewDetected
    | ChangeRefused
    | QuarantineReleased
    | PeerSynced
    | ProtocolErrorOccurred
    | SessionClosed
)
