"""Wire primitives shared by the message and state codecs.

`uv` is an unsigned LEB128 varint, `zz` a zigzag varint; strings and bytes are
length-prefixed; `value` is a tagged JSON value. `Reader` decodes them and raises
RemoteProtocolError, and nothing else, on bad input.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from sync.clock import MAX_HLC
from sync.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["MAX_DEPTH", "MAX_STRING", "Reader", "put_bytes", "put_str", "put_uv",
           "put_value", "put_vv", "put_zz"]

MAX_STRING = 1 << 20
MAX_DEPTH = 32
V_NULL, V_FALSE, V_TRUE, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT = range(8)
_F64 = struct.Struct(">d")
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _uv(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _zz(out: bytearray, n: int) -> None:
    _uv(out, (n << 1) if n >= 0 else ((-n) << 1) - 1)


def _str(out: bytearray, s: str) -> None:
    b = s.encode()
    _uv(out, len(b))
    out += b


def _bytes(out: bytearray, b: bytes) -> None:
    _uv(out, len(b))
    out += b


def _value(out: bytearray, v: Any) -> None:
    kind = type(v)
    if kind is str:
        out.append(V_STR)
        _str(out, v)
    elif v is None:
        out.append(V_NULL)
    elif kind is bool:
        out.append(V_TRUE if v else V_FALSE)
    elif kind is int:
        out.append(V_INT)
        _zz(out, v)
    elif kind is float:
        out.append(V_FLOAT)
        out += _F64.pack(v)
    elif kind is list:
        out.append(V_LIST)
        _uv(out, len(v))
        for item in v:
            _value(out, item)
    elif kind is dict:
        out.append(V_DICT)
        _uv(out, len(v))
        for k, item in v.items():
            _str(out, k)
            _value(out, item)
    else:
        raise LocalProtocolError(f"cannot encode {kind.__name__}")


def _vv(out: bytearray, vv: dict[str, int]) -> None:
    _uv(out, len(vv))
    for origin, seq in vv.items():
        _str(out, origin)
        _uv(out, seq)


class Reader:
    """Reads a message front to back; every method raises RemoteProtocolError on bad input."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fail(self, what: str) -> RemoteProtocolError:
        """The error to raise for malformed input, with the current byte position."""
        return RemoteProtocolError(f"bad message at byte {self.pos}: {what}")

    def u8(self) -> int:
        """Read one byte."""
        pos = self.pos
        if pos >= len(self.data):
            raise self.fail("truncated")
        self.pos = pos + 1
        return self.data[pos]

    def uv(self, bound: int = 2**64) -> int:
        """Read an unsigned LEB128 varint, which must be below `bound`."""
        data, pos, shift, n = self.data, self.pos, 0, 0
        end = len(data)
        while True:
            if pos >= end:
                raise self.fail("truncated varint")
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift > 63:
                raise self.fail("varint too long")
        self.pos = pos
        if n >= bound:
            raise self.fail("number out of range")
        return n

    def zz(self) -> int:
        """Read a zigzag-encoded signed varint."""
        n = self.uv()
        return (n >> 1) if not n & 1 else -((n + 1) >> 1)

    def count(self) -> int:
        """Read a count of items, which cannot exceed the bytes left."""
        n = self.uv()
        if n > len(self.data) - self.pos:
            raise self.fail("count exceeds message")
        return n

    def raw(self, limit: int = MAX_STRING) -> bytes:
        """Read length-prefixed bytes of at most `limit` bytes."""
        n = self.uv()
        if n > limit or n > len(self.data) - self.pos:
            raise self.fail("length out of range")
        pos = self.pos
        self.pos = pos + n
        return self.data[pos : pos + n]

    def text(self, limit: int = MAX_STRING) -> str:
        """Read a length-prefixed UTF-8 string of at most `limit` bytes."""
        try:
            return self.raw(limit).decode()
        except UnicodeDecodeError:
            raise self.fail("invalid UTF-8") from None

    def name(self) -> str:
        """Read a name: a non-empty string of at most 256 bytes."""
        s = self.text(256)
        if not s:
            raise self.fail("empty name")
        return s

    def value(self, depth: int = 0) -> Any:
        """Read a JSON value written by `put_value`."""
        tag = self.u8()
        if tag == V_STR:
            return self.text()
        if tag == V_INT:
            n = self.zz()
            if not _INT_MIN <= n <= _INT_MAX:
                raise self.fail("integer out of range")
            return n
        if tag == V_NULL:
            return None
        if tag == V_FALSE:
            return False
        if tag == V_TRUE:
            return True
        if tag == V_FLOAT:
            if len(self.data) - self.pos < 8:
                raise self.fail("truncated float")
            (f,) = _F64.unpack_from(self.data, self.pos)
            self.pos += 8
            if not math.isfinite(f):
                raise self.fail("non-finite number")
            return f
        if depth >= MAX_DEPTH:
            raise self.fail("value nested too deeply")
        if tag == V_LIST:
            return [self.value(depth + 1) for _ in range(self.count())]
        if tag == V_DICT:
            out = {}
            for _ in range(self.count()):
                key = self.text()
                out[key] = self.value(depth + 1)
            return out
        raise self.fail(f"unknown value tag {tag}")

    def vv(self) -> dict[str, int]:
        """Read a version vector: distinct origins, each with a sequence below MAX_HLC."""
        out = {}
        for _ in range(self.count()):
            origin = self.name()
            if origin in out:
                raise self.fail("repeated origin")
            out[origin] = self.uv(MAX_HLC)
        return out



put_uv, put_zz, put_str, put_bytes, put_value, put_vv = _uv, _zz, _str, _bytes, _value, _vv
