"""Sans-I/O CRDT sync engine. Imports no asyncio, sockets or SQL driver.

A `Replica` is one device's copy of every collection. Local operations (put,
patch, delete, increment, add, remove, splice) return the new document; peers
sync through one `PeerSession` per connection (`Replica.connect`), which takes
and returns encoded messages; what happened comes out of `Replica.next_event()`.
Time is always passed in as Unix seconds.
"""

from sync.clock import HybridClock
from sync.codec import (
    MAX_MESSAGE_SIZE,
    WIRE_VERSION,
    Ack,
    ChangesMessage,
    Close,
    Hello,
    Message,
    decode,
    encode,
)
from sync.errors import DocumentTooLarge, LocalProtocolError, RemoteProtocolError, SyncError
from sync.events import (
    ChangeRefused,
    ClockSkewDetected,
    DocumentChanged,
    Event,
    PeerSynced,
    ProtocolErrorOccurred,
    QuarantineReleased,
    SessionClosed,
)
from sync.host import SessionHost
from sync.model import Change, DocState, Edit
from sync.policy import CollectionPolicy, PeerPolicy
from sync.replica import DocumentNotFound, Replica
from sync.session import PeerSession, SessionState
from sync.storage import Batch, MemoryStorage, Storage, StoredState

__all__ = [
    "MAX_MESSAGE_SIZE",
    "WIRE_VERSION",
    "Ack",
    "Batch",
    "Change",
    "ChangeRefused",
    "CollectionPolicy",
    "ChangesMessage",
    "ClockSkewDetected",
    "DocumentTooLarge",
    "Close",
    "DocState",
    "DocumentChanged",
    "DocumentNotFound",
    "Edit",
    "Event",
    "Hello",
    "HybridClock",
    "LocalProtocolError",
    "MemoryStorage",
    "Message",
    "PeerPolicy",
    "PeerSession",
    "PeerSynced",
    "ProtocolErrorOccurred",
    "QuarantineReleased",
    "RemoteProtocolError",
    "Replica",
    "SessionClosed",
    "SessionHost",
    "SessionState",
    "Storage",
    "StoredState",
    "SyncError",
    "decode",
    "encode",
]
