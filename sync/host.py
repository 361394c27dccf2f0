"""What a peer session needs from its replica: the one interface between them.

`Replica` implements `SessionHost`; `PeerSession` and `StateSync` use nothing else
of it, so the replica's internals stay its own. Everything here is sans-I/O and
`now` is Unix seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from sync.events import Event
from sync.model import Change, DocState
from sync.policy import Flow, PeerPolicy
from sync.rbsr import ItemSet
from sync.storage import GcState, Storage

__all__ = ["SessionHost"]


class SessionHost(Protocol):
    """The replica as its sessions see it."""

    device_id: str
    storage: Storage  # read by sessions: the change log and document states
    retransmit_after: float  # seconds without Ack progress before sending again
    gc: GcState  # what garbage collection removed (its `log_base` travels in Hello)

    @property
    def applied(self) -> Mapping[str, int]:
        """The live version vector (read-only; copy it to keep it)."""

    def version_vector(self) -> dict[str, int]:
        """A copy of the version vector."""

    def policy_for(self, peer_id: str) -> PeerPolicy:
        """Our policy for `peer_id`."""

    def behind_log(self, peer_vv: Mapping[str, int]) -> bool:
        """Whether a peer lacks changes already collected from our log."""

    def item_set(self, flow: Flow) -> ItemSet:
        """The documents we may exchange under `flow`, as reconciliation items."""

    def emit(self, event: Event) -> None:
        """Report `event` through the replica's `next_event()`."""

    def receive_changes(self, peer_id: str, changes: list[Change], now: float) -> None:
        """Apply (or hold) logged changes a peer sent, as one atomic batch."""

    def merge_states(self, peer_id: str, docs: list[tuple[str, str, DocState]], flow: Flow,
                     now: float) -> float | None:
        """Join document states a peer sent; returns when to ask again for states left
        aside (stamped too far ahead), or None."""
