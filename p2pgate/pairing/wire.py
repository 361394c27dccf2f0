"""Pairing messages on the wire, sans-I/O.

A message is a 4-byte big-endian length and a JSON object of at most `MAX_MESSAGE`
bytes; bytes values travel as base64. `MessageDecoder.feed()` takes whatever arrived
and returns the whole messages in it; a peer's malformed message raises
`RemoteProtocolError`.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from p2pgate.errors import RemoteProtocolError

__all__ = ["MAX_MESSAGE", "Message", "MessageDecoder", "encode", "field_bytes", "field_int",
           "field_str"]

MAX_MESSAGE = 16 << 10
_LEN = struct.Struct(">I")

Message = dict[str, Any]


def encode(msg: Message) -> bytes:
    """One framed message; bytes values become base64."""
    data = json.dumps({k: base64.b64encode(v).decode() if isinstance(v, bytes) else v
                       for k, v in msg.items()}).encode()
    return _LEN.pack(len(data)) + data


def field_bytes(msg: Message, key: str) -> bytes:
    """A bytes field of a received message."""
    try:
        return base64.b64decode(msg[key], validate=True)
    except (KeyError, TypeError, ValueError):
        raise RemoteProtocolError(f"pairing message lacks {key}") from None


def field_int(msg: Message, key: str, low: int, high: int) -> int:
    """An integer field in [low, high] (JSON floats, booleans and huge numbers refused)."""
    value = msg.get(key)
    if type(value) is not int or not low <= value <= high:
        raise RemoteProtocolError(f"pairing message lacks a valid {key}")
    return value


def field_str(msg: Message, key: str, allowed: tuple[str, ...]) -> str:
    """A string field that must be one of `allowed`."""
    value = msg.get(key)
    if value not in allowed:
        raise RemoteProtocolError(f"pairing message lacks a valid {key}")
    return str(value)


class MessageDecoder:
    """Bytes in, whole messages out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        """Add received bytes; return every message now complete."""
        self._buf += data
        out = []
        while len(self._buf) >= _LEN.size:
            (n,) = _LEN.unpack_from(self._buf)
            if n > MAX_MESSAGE:
                raise RemoteProtocolError("pairing message too large")
            if len(self._buf) < _LEN.size + n:
                break
            raw = bytes(self._buf[_LEN.size:_LEN.size + n])
            del self._buf[:_LEN.size + n]
            try:
                msg = json.loads(raw)
            except (ValueError, RecursionError):  # RecursionError: nested too deep
                raise RemoteProtocolError("pairing message is not JSON") from None
            if not isinstance(msg, dict):
                raise RemoteProtocolError("pairing message is not an object")
            out.append(msg)
        return out
