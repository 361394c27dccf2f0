"""Request and response bodies of the local API; the OpenAPI document is built from them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AppCreate", "AppCreated", "AppInfo", "AppList", "CollectionFields", "Conflict",
    "Conflicts", "DeviceInfo", "DeviceList", "DeviceRename", "Document", "DocumentList",
    "ErrorBody", "ErrorResponse", "Event", "FieldType", "Health", "NodeInfo", "PeerList",
    "PairingCreate", "PairingJoin", "PairingOffer", "PairingStatus", "Policy",
    "PolicyList", "RelayInfo", "RelayList", "RelayTokenSet",
]

FieldType = Literal["lww", "counter", "set", "text"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorBody(_Model):
    """The error: a stable code, a message for people and the request ID."""

    code: str = Field(description="Stable machine-readable error code.")
    message: str = Field(description="What went wrong, for people.")
    request_id: str = Field(description="Also in the X-Request-ID header and the node's log.")


class ErrorResponse(_Model):
    """The body of every error response."""

    error: ErrorBody


class Health(_Model):
    """The node is up."""

    status: Literal["ok"] = "ok"
    version: str


class NodeInfo(_Model):
    """This node: identity, API address, event cursor and garbage collection counts."""

    device_id: str
    short_id: str
    name: str
    version: str
    api_url: str
    cursor: int = Field(description="The newest event cursor.")
    collected_changes: int = Field(0, description="Logged sync changes garbage-collected "
                                   "since the node started.")
    purged_documents: int = Field(0, description="Deleted documents purged since the node "
                                  "started (every peer had the deletion).")


class CollectionFields(_Model):
    """A collection's declared field types."""

    fields: dict[str, FieldType] = Field(
        description="Field types; undeclared fields are `lww`.",
        examples=[{"likes": "counter", "tags": "set", "body": "text"}],
    )


_CURSOR_NOTE = (" An app token's cursors and versions are its own and opaque (not ordered; "
                "hand them back with the same token); the admin token's are the node's.")


class Document(_Model):
    """A document with its version (the ETag) and event cursor."""

    collection: str
    id: str = Field(description="The document ID, in Unicode NFC (IDs are normalised to NFC "
                    "on the way in: NFC and NFD spellings name one document).")
    data: dict[str, Any] = Field(description="The document's current fields.")
    version: str = Field(description="Opaque version; also the ETag." + _CURSOR_NOTE)
    deleted: bool = False
    cursor: int = Field(description="Event cursor of the document's latest change."
                        + _CURSOR_NOTE)


class DocumentList(_Model):
    """One page of documents, by ID."""

    items: list[Document]
    next_after: str | None = Field(description="Pass as `after` for the next page.")
    cursor: int = Field(description="Event cursor at the time of listing; resume events here. "
                        "For an app token, the cursor of the latest change it may see."
                        + _CURSOR_NOTE)


class Conflict(_Model):
    """The last concurrent write a field lost, and who wrote it."""

    value: Any = Field(description="The losing concurrent value.")
    origin: str = Field(description="Device ID that wrote it.")


class Conflicts(_Model):
    """A document's `lww` fields that lost a concurrent write, with the last write each lost."""

    collection: str
    id: str
    fields: dict[str, Conflict] = Field(description="Each field's last losing concurrent write.")


class Event(_Model):
    """One message of the event WebSocket."""

    type: Literal["change", "reset"]
    cursor: int = Field(description="Resume after this with `?cursor=`." + _CURSOR_NOTE)
    collection: str | None = None
    id: str | None = None
    deleted: bool = False
    origin: str | None = Field(None, description="Device ID the change came from.")
    reason: str | None = Field(None, description="Why a reset was sent.")


class AppCreate(_Model):
    """A request for a new app token with the given scopes and optional lifetime."""

    name: str = Field(min_length=1, max_length=64)
    scopes: list[str] = Field(min_length=1, examples=[["notes:rw", "photos:r"]])
    ttl: float | None = Field(None, gt=0, description="Lifetime in seconds; none = no expiry.")


class AppInfo(_Model):
    """An app token as listed: never the token itself."""

    name: str
    scopes: list[str]
    created_at: float
    expires_at: float | None


class AppCreated(AppInfo):
    """A new app token, with the token itself (shown this once)."""

    token: str = Field(description="Shown once; only its hash is stored.")


class AppList(_Model):
    """The app tokens, by name."""

    items: list[AppInfo]


class DeviceInfo(_Model):
    """A known device: its ID, name, trust state and where it was last seen."""

    device_id: str
    short_id: str
    name: str
    state: Literal["pending", "trusted", "blocked", "revoked"]
    first_seen: float
    last_seen: float | None
    addresses: list[str]
    relays: list[str]


class DeviceList(_Model):
    """The known devices, by name."""

    items: list[DeviceInfo]


class DeviceRename(_Model):
    """A new display name for a device."""

    name: str = Field(min_length=1, max_length=64)


class PeerList(_Model):
    """The peers connected now."""

    items: list[dict[str, Any]] = Field(description="Connected peers (none until pairing).")


class Policy(_Model):
    """How one collection syncs with one peer."""

    device_id: str
    collection: str
    mode: Literal["both", "send", "receive", "none"] = "both"
    filter: dict[str, Any] | None = Field(None, description="Optional document filter.")


class PolicyList(_Model):
    """The sync policies set for devices, one item per device and collection."""

    items: list[Policy]


class PairingCreate(_Model):
    """A request for a pairing offer."""

    ttl: float = Field(300.0, gt=0, le=3600, description="Seconds the code stays valid.")
    repair: bool = Field(False, description="Allow pairing again with a revoked device.")


class PairingOffer(_Model):
    """A pairing offer: the code and URI to give the other device, until `expires_at`."""

    code: str = Field(description="Short code to type on the other device.")
    uri: str = Field(description="p2pgate://pair URI with a 128-bit secret (for the QR code).")
    qr_svg: str = Field(description="The URI as a QR code, SVG.")
    expires_at: float


class PairingJoin(_Model):
    """A request to pair with the device showing this code or URI."""

    code: str | None = None
    uri: str | None = None
    address: str | None = Field(None, description="HOST:PORT of the other device, if known.")


class PairingStatus(_Model):
    """Where a pairing stands; once paired, the device and the digits both sides show."""

    state: Literal["waiting", "paired", "failed", "expired"]
    device_id: str | None = None
    name: str | None = None
    verification: str | None = Field(None, description="Both devices show the same digits.")
    reason: str | None = None
    failures: int = Field(0, description="Wrong codes tried so far (the code burns at 3).")


class RelayTokenSet(_Model):
    """An access token for one of this node's relays (its operator makes it with
    `p2pgate relay token --device ID`)."""

    url: str = Field(description="The relay's URL (ws://, wss://, http:// or https://).")
    token: str = Field(min_length=1, max_length=2048, repr=False,
                       description="The access token (a compact JWT).")


class RelayInfo(_Model):
    """One of this node's relays."""

    url: str = Field(description="The relay's canonical URL.")
    logged_in: bool = Field(description="Whether a control connection is logged in now.")
    has_token: bool = Field(description="Whether we hold an access token for it.")
    token_expires_at: int | None = Field(
        None, description="When our token expires (Unix seconds; read, not verified).")
    refusal: str | None = Field(
        None, description="Why the relay last refused our login, if it did since we were "
        "last logged in (e.g. token_missing, token_expired, not_allowed, bad_signature).")
    stun_address: str | None = Field(
        None, description="The relay's STUN server (HOST:PORT, from its welcome), if any.")
    stun: Literal["ok", "failed", "unknown"] | None = Field(
        None, description="Our last probe of that STUN server: ok (it answered; WebRTC "
        "lists it), failed (no answer; WebRTC uses host candidates only), unknown (not "
        "probed yet); null if the relay runs no STUN server.")
    reflexive_address: str | None = Field(
        None, description="Where the relay's STUN server saw us (HOST:PORT, outside our "
        "NAT) in the last probe that answered.")


class RelayList(_Model):
    """This node's relays."""

    items: list[RelayInfo]
