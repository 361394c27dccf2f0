"""The relay's control messages, decoded strictly, sans-I/O.

Both ends of a control connection decode what the other sent here: a device's login
(`decode_login`) and requests (`decode_device_message`) on the relay, the relay's
answers (`decode_relay_message`) on the node. Any text, any JSON shape (lists, numbers,
10**400, Infinity, deep nesting, missing or mistyped fields) either decodes into one of
the frozen dataclasses below or raises `RemoteProtocolError`, never anything else.
Kinds a newer relay may add decode to None on the node, so an old node ignores them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from p2pgate.errors import RemoteProtocolError
from p2pgate.identity.deviceid import DeviceID, InvalidDeviceID

__all__ = ["MAX_SIGNAL", "Accepted", "ConnectAsked", "Invited", "Login", "Ready", "Signal",
           "SignalSent", "Unavailable", "decode_device_message", "decode_login",
           "decode_relay_message", "json_object"]

MAX_SIGNAL = 8192  # bytes of signalling data (JSON-encoded) in one message
_MAX_INT = 1 << 53  # request numbers and times: exact in every JSON implementation


@dataclass(frozen=True, slots=True)
class Login:
    """A device's `auth` message: certificate and signature (base64), time, token."""

    cert: str
    time: int
    sig: str
    token: str | None


@dataclass(frozen=True, slots=True)
class ConnectAsked:
    """A device asks for a session to `to` (its request number `req`)."""

    req: int
    to: DeviceID


@dataclass(frozen=True, slots=True)
class Accepted:
    """A device answers invitation `sid` (`accept` False: it refuses)."""

    sid: str
    accept: bool


@dataclass(frozen=True, slots=True)
class SignalSent:
    """A device sends signalling `data` (at most MAX_SIGNAL bytes encoded) to `to`."""

    to: DeviceID
    data: Any
    size: int


@dataclass(frozen=True, slots=True)
class Ready:
    """A session is ready: splice `sid` with `key`; `req` is ours if we asked for it."""

    sid: str
    key: str
    peer: DeviceID
    req: int | None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Our request `req` gets no session."""

    req: int


@dataclass(frozen=True, slots=True)
class Invited:
    """Device `peer` asks for a session with us (invitation `sid`)."""

    sid: str
    peer: DeviceID


@dataclass(frozen=True, slots=True)
class Signal:
    """Signalling `data` from device `peer`."""

    peer: DeviceID
    data: Any


def json_object(text: str | bytes) -> dict[str, Any]:
    """The JSON object in `text`, or RemoteProtocolError (bad JSON, too deep, not an
    object, NaN or Infinity)."""
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError, TypeError) as exc:
        raise RemoteProtocolError(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise RemoteProtocolError("the message is not a JSON object")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number out of range")
    return value


def _text(data: dict[str, Any], name: str, limit: int = 256) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise RemoteProtocolError(f"{name!r} must be a string of 1 to {limit} characters")
    return value


def _number(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_INT:
        raise RemoteProtocolError(f"{name!r} must be an integer from 0 to 2**53")
    return value


def _device(data: dict[str, Any], name: str) -> DeviceID:
    try:
        return DeviceID.parse(_text(data, name, 128))
    except InvalidDeviceID as exc:
        raise RemoteProtocolError(f"{name!r} is not a device ID: {exc}") from None


def decode_login(data: dict[str, Any]) -> Login:
    """A device's first message, typed, or RemoteProtocolError."""
    if data.get("t") != "auth":
        raise RemoteProtocolError("expected an auth message")
    token = data.get("token")
    if token is not None and (not isinstance(token, str) or len(token) > 4096):
        raise RemoteProtocolError("'token' must be a string")
    return Login(_text(data, "cert", 8192), _number(data, "time"), _text(data, "sig", 512),
                 token)


def decode_device_message(text: str) -> ConnectAsked | Accepted | SignalSent:
    """A logged-in device's request to the relay, typed, or RemoteProtocolError."""
    data = json_object(text)
    kind = data.get("t")
    if kind == "connect":
        return ConnectAsked(_number(data, "req"), _device(data, "to"))
    if kind in ("accept", "refuse"):
        return Accepted(_text(data, "sid", 64), kind == "accept")
    if kind == "signal":
        size = len(json.dumps(data.get("data")))
        if size > MAX_SIGNAL:
            raise RemoteProtocolError(f"signalling data over {MAX_SIGNAL} bytes")
        return SignalSent(_device(data, "to"), data.get("data"), size)
    raise RemoteProtocolError(f"unknown message kind {str(kind)[:16]!r}")


def decode_relay_message(text: str | bytes) -> Ready | Unavailable | Invited | Signal | None:
    """A relay's message to a logged-in device, typed, None for a kind we do not know,
    or RemoteProtocolError."""
    data = json_object(text)
    kind = data.get("t")
    if kind == "ready":
        req = _number(data, "req") if "req" in data else None
        return Ready(_text(data, "sid", 64), _text(data, "key", 64), _device(data, "peer"), req)
    if kind == "unavailable":
        return Unavailable(_number(data, "req"))
    if kind == "invite":
        return Invited(_text(data, "sid", 64), _device(data, "from"))
    if kind == "signal":
        return Signal(_device(data, "from"), data.get("data"))
    return None
