"""The node's documents: the sync replica on the libSQL store, served to the API and
driven, one peer session at a time, by the connection manager.

`service` holds `Documents` (the asyncio side), `driver` the sans-I/O core deciding
what a peer session does at each step, `views` what goes upward, `errors` the
domain errors (the API maps them to HTTP). Nothing here imports `p2pgate.api`.
"""

from p2pgate.documents.driver import BacklogMeasured, PeerCaughtUp, Stepped, SyncDriver
from p2pgate.documents.errors import (
    DocumentError,
    DocumentNotFound,
    DocumentTooLarge,
    FieldTypeConflict,
    InvalidDocument,
    VersionMismatch,
    WritesBacklogged,
)
from p2pgate.documents.service import Documents, peer_policy
from p2pgate.documents.views import ChangeRecord, DocumentView

__all__ = [
    "BacklogMeasured",
    "ChangeRecord",
    "DocumentError",
    "DocumentNotFound",
    "DocumentTooLarge",
    "DocumentView",
    "Documents",
    "FieldTypeConflict",
    "InvalidDocument",
    "PeerCaughtUp",
    "Stepped",
    "SyncDriver",
    "VersionMismatch",
    "WritesBacklogged",
    "peer_policy",
]
