"""What the documents service hands upward: document views and change records.

They live here, below the API, so that the connection manager and the API share
them without the documents layer importing the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ChangeRecord", "DocumentView"]


@dataclass(frozen=True, slots=True)
class DocumentView:
    """A document as the API shows it; `version` is its ETag (the cursor of its last
    change), `created` tells a write that it made the document."""

    collection: str
    doc_id: str
    data: dict[str, Any]
    version: str
    deleted: bool
    cursor: int
    created: bool = False


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One entry of the app change feed: the document's latest change at `cursor`."""

    cursor: int
    collection: str
    doc_id: str
    deleted: bool
    origin: str
