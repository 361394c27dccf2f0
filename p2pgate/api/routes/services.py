"""What the API handlers reach: the node's components, passed in as one value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from p2pgate.api.events import EventHub
from p2pgate.api.tokens import TokenStore
from p2pgate.documents.views import DocumentView
from p2pgate.identity.deviceid import DeviceID
from p2pgate.pairing.service import PairingService
from p2pgate.storage.registry import DeviceRegistry

__all__ = ["ApiServices", "DocumentService", "DocumentView"]


class DocumentService(Protocol):
    """What the API needs from the node's documents (implemented over `sync`)."""

    async def declare(self, collection: str, fields: dict[str, str]) -> dict[str, str]:
        """Add field types to a collection, return all of them; FieldTypeConflict if one changes."""
        ...

    async def fields(self, collection: str) -> dict[str, str]:
        """The declared field types of a collection (empty if none)."""
        ...

    async def get(self, collection: str, doc_id: str) -> DocumentView | None:
        """The document (deleted ones too), or None if the store holds no state for it."""
        ...

    async def put(self, collection: str, doc_id: str, data: dict[str, Any],
                  if_match: str | None, *, writer: str = "", render: bool = True
                  ) -> DocumentView:
        """Create or replace a document; a given `if_match` ("*" or a version) must match it.
        Writes wait fairly per `writer`; without `render` the view's data is empty."""
        ...

    async def patch(self, collection: str, doc_id: str, patch: dict[str, Any],
                    if_match: str | None, *, writer: str = "", render: bool = True
                    ) -> DocumentView:
        """Merge-patch a document (DocumentNotFound if none); the rest as for `put`."""
        ...

    async def delete(self, collection: str, doc_id: str,
                     if_match: str | None, *, writer: str = "") -> DocumentView:
        """Delete a document (DocumentNotFound if none); `if_match` as for `put`."""
        ...

    async def list_docs(self, collection: str, limit: int, after: str | None,
                   since: int | None) -> tuple[list[DocumentView], int]:
        """A page of visible documents past ID `after` (changed after `since`), and the cursor."""
        ...

    async def conflicts(self, collection: str, doc_id: str) -> dict[str, tuple[Any, str]]:
        """Per `lww` field, the last concurrent write it lost as (value, device ID)."""
        ...

    async def set_policy(self, peer: str, policy: dict[str, Any]) -> None:
        """Apply a changed sync policy for `peer` now; a live session re-negotiates."""
        ...


@dataclass(frozen=True, slots=True)
class ApiServices:
    """What the API handlers reach; the node passes its components in."""

    device_id: DeviceID
    name: Callable[[], str]
    api_url: Callable[[], str]
    tokens: TokenStore
    registry: DeviceRegistry
    documents: DocumentService
    events: EventHub
    cursor: Callable[[], int]
    collected: Callable[[], tuple[int, int]]
    peers: Callable[[], list[dict[str, Any]]]
    pairing: PairingService
