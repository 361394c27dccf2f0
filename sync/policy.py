"""The seam for selective sync: a policy consulted on every change sent or accepted.

The default lets everything through. Per-peer and per-collection policies and
document filters plug in here later; a policy may strip edits from a change but
still returns the change, so per-origin sequences stay gap-free on the wire.
"""

from __future__ import annotations

from typing import Protocol

from sync.model import Change

__all__ = ["AllowAll", "SyncPolicy"]


class SyncPolicy(Protocol):
    def outgoing(self, peer_id: str, change: Change) -> Change:
        """The change as it may be sent to `peer_id`."""
        ...

    def incoming(self, peer_id: str, change: Change) -> Change:
        """The change as it may be accepted from `peer_id`."""
        ...


class AllowAll:
    """Complete replicas: every change goes everywhere."""

    def outgoing(self, peer_id: str, change: Change) -> Change:
        return change

    def incoming(self, peer_id: str, change: Change) -> Change:
        return change
