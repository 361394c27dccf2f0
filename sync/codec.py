"""Wire codec: a compact, versioned, size-bounded binary format.

Why binary and not JSON: a change is mostly small integers (sequence numbers,
HLCs) and a few repeated strings (device IDs, collection and field names). Varints
with per-message string tables and delta-coded stamps make a one-field edit about
25 bytes, where JSON would repeat a 60-character device ID in every change.

    message  = version:u8 type:u8 body            (at most MAX_MESSAGE_SIZE bytes)
    HELLO    = need_reply:u8 device:str vv [policy:value]
    CHANGES  = strings:count str* count change*
    change   = origin:ref dseq:uv dhlc:zz signature:bytes count edit*
    edit     = collection:ref doc:str flags:u8 count op*
    op       = kind:u8 field:ref payload             (see `_write_op`)
    ACK      = vv
    CLOSE    = code:uv reason:str
    RECON    = round:uv ranges                         (see `sync.rbsr`)
    DOCS     = count (collection:str doc:str state:bytes)*   (see `sync.statecodec`)
    vv       = count (origin:str seq:uv)*
    value    = tag:u8 ...  null false true int(zz) float(f64) str list dict

`uv` is an unsigned LEB128 varint, `zz` a zigzag varint, `ref` an index into the
message's string table; `dseq` and `dhlc` are deltas from the previous change of
the message. Any input either decodes or raises RemoteProtocolError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sync.clock import MAX_HLC
from sync.errors import LocalProtocolError, RemoteProtocolError
from sync.fields import TEXT
from sync.model import (
    K_ADD,
    K_CLEAR,
    K_INC,
    K_LWW,
    K_REMOVE,
    K_RESET,
    K_STATE,
    K_TEXT,
    K_TEXT_QUIET,
    K_UNSET,
    Change,
    DocState,
    Edit,
    FieldOp,
)
from sync.rbsr import Range, decode_ranges, encode_ranges
from sync.statecodec import decode_state, encode_state
from sync.wire import (
    Reader,
    put_bytes,
    put_str,
    put_uv,
    put_value,
    put_vv,
    put_zz,
)

__all__ = [
    "CLOSE_BAD_MESSAGE",
    "CLOSE_NORMAL",
    "CLOSE_REPLACED",
    "CLOSE_UNEXPECTED",
    "CLOSE_VERSION",
    "CLOSE_WRONG_PEER",
    "MAX_MESSAGE_SIZE",
    "WIRE_VERSION",
    "Ack",
    "ChangesEncoder",
    "ChangesMessage",
    "Close",
    "DocsMessage",
    "Hello",
    "Message",
    "Recon",
    "decode",
    "encode",
    "encode_docs",
]

WIRE_VERSION = 1
MAX_MESSAGE_SIZE = 4 << 20

CLOSE_NORMAL = 0
CLOSE_BAD_MESSAGE = 1
CLOSE_UNEXPECTED = 2
CLOSE_VERSION = 3
CLOSE_WRONG_PEER = 4
CLOSE_REPLACED = 5

T_HELLO, T_CHANGES, T_ACK, T_CLOSE, T_RECON, T_DOCS = 1, 2, 3, 4, 5, 6
_INT_MAX = 2**63 - 1
_uv, _zz, _str, _bytes, _value, _vv = put_uv, put_zz, put_str, put_bytes, put_value, put_vv


@dataclass(frozen=True, slots=True)
class Hello:
    """Opens a session: the sender's device ID and version vector, optionally its policy for us."""

    device_id: str
    version_vector: dict[str, int]
    need_reply: bool = True
    version: int = WIRE_VERSION
    policy: dict[str, Any] | None = None  # the sender's policy for the receiver


@dataclass(frozen=True, slots=True)
class ChangesMessage:
    """A CHANGES message: a batch of changes."""

    changes: list[Change]


@dataclass(frozen=True, slots=True)
class Ack:
    """Acknowledges everything up to a version vector."""

    version_vector: dict[str, int]


@dataclass(frozen=True, slots=True)
class Close:
    """Ends a session with one of the CLOSE_* codes and a human-readable reason."""

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Recon:
    """One round of range-based reconciliation (see `sync.rbsr`)."""

    round: int
    ranges: list[Range]


@dataclass(frozen=True, slots=True)
class DocsMessage:
    """Whole document states as (collection, document ID, state) triples."""

    docs: list[tuple[str, str, DocState]] = field(default_factory=list)


Message = Hello | ChangesMessage | Ack | Close | Recon | DocsMessage


# ---------------------------------------------------------------- encoding


class ChangesEncoder:
    """Builds one CHANGES message incrementally, under a size target."""

    __slots__ = ("_body", "_count", "_hlc", "_seqs", "_strings", "_table")

    def __init__(self) -> None:
        self._body = bytearray()
        self._table: list[str] = []
        self._strings: dict[str, int] = {}
        self._seqs: dict[str, int] = {}
        self._hlc = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _ref(self, s: str) -> None:
        idx = self._strings.get(s)
        if idx is None:
            idx = self._strings[s] = len(self._table)
            self._table.append(s)
        _uv(self._body, idx)

    def size(self) -> int:
        """Estimate the encoded message size in bytes, from above."""
        return len(self._body) + sum(len(s) + 2 for s in self._table) + 8

    def add(self, change: Change, limit: int = MAX_MESSAGE_SIZE) -> bool:
        """Append a change unless the message would then exceed `limit` bytes.

        The first change is always taken (it is at most MAX_CHANGE_BYTES).
        """
        body = self._body
        mark = (len(body), len(self._table), dict(self._seqs) if self._count else {}, self._hlc)
        self._ref(change.origin)
        _uv(body, change.seq - self._seqs.get(change.origin, 0))
        self._seqs[change.origin] = change.seq
        _zz(body, change.hlc - self._hlc)
        self._hlc = change.hlc
        _bytes(body, change.signature)
        _uv(body, len(change.edits))
        for edit in change.edits:
            self._ref(edit.collection)
            _str(body, edit.doc_id)
            body.append(edit.flags)
            _uv(body, len(edit.ops))
            for op in edit.ops:
                self._op(op, change.hlc)
        if self._count and self.size() > limit:
            del body[mark[0] :]
            for s in self._table[mark[1] :]:
                del self._strings[s]
            del self._table[mark[1] :]
            self._seqs, self._hlc = mark[2], mark[3]
            return False
        self._count += 1
        return True

    def _op(self, op: FieldOp, hlc: int) -> None:
        body = self._body
        kind, name, a, b = op
        body.append(kind)
        self._ref(name)
        if kind == K_LWW:
            if not 0 <= a < hlc:
                raise LocalProtocolError("an lww write must be newer than what it saw")
            _uv(body, 0 if a == 0 else hlc - a)
            _value(body, b)
        elif kind == K_INC:
            _uv(body, a)
            _uv(body, b)
        elif kind == K_CLEAR:
            body.append(a)
        elif kind == K_RESET:
            _uv(body, len(a))
            for origin, (p, n) in a.items():
                self._ref(origin)
                _uv(body, p)
                _uv(body, n)
        elif kind == K_ADD:
            _uv(body, len(a))
            for v in a:
                _value(body, v)
        elif kind in (K_REMOVE, K_UNSET):
            _uv(body, len(a))
            for tag_hlc, origin, key in sorted(a):
                _uv(body, tag_hlc)
                self._ref(origin)
                _str(body, key)
        elif kind in (K_TEXT, K_TEXT_QUIET):
            _bytes(body, a)
        elif kind == K_STATE:
            _bytes(body, encode_state(a))
        else:
            raise LocalProtocolError(f"unknown op kind {kind}")

    def to_bytes(self) -> bytes:
        """The encoded CHANGES message; raises LocalProtocolError above MAX_MESSAGE_SIZE."""
        out = bytearray((WIRE_VERSION, T_CHANGES))
        _uv(out, len(self._table))
        for s in self._table:
            _str(out, s)
        _uv(out, self._count)
        out += self._body
        if len(out) > MAX_MESSAGE_SIZE:
            raise LocalProtocolError("message too large")
        return bytes(out)


def encode_docs(docs: list[tuple[str, str, bytes]]) -> bytes:
    """A DOCS message from already encoded states."""
    out = bytearray((WIRE_VERSION, T_DOCS))
    _uv(out, len(docs))
    for collection, doc_id, state in docs:
        _str(out, collection)
        _str(out, doc_id)
        _bytes(out, state)
    if len(out) > MAX_MESSAGE_SIZE:
        raise LocalProtocolError("message too large")
    return bytes(out)


def encode(msg: Message) -> bytes:
    """Encode a message; raises LocalProtocolError if it cannot be sent."""
    if isinstance(msg, ChangesMessage):
        enc = ChangesEncoder()
        for change in msg.changes:
            enc.add(change, limit=1 << 62)
        return enc.to_bytes()
    out = bytearray((WIRE_VERSION,))
    if isinstance(msg, Hello):
        out.append(T_HELLO)
        out.append(1 if msg.need_reply else 0)
        _str(out, msg.device_id)
        _vv(out, msg.version_vector)
        if msg.policy is not None:
            _value(out, msg.policy)
    elif isinstance(msg, Ack):
        out.append(T_ACK)
        _vv(out, msg.version_vector)
    elif isinstance(msg, Recon):
        out.append(T_RECON)
        _uv(out, msg.round)
        encode_ranges(out, msg.ranges)
    elif isinstance(msg, DocsMessage):
        return encode_docs([(c, d, encode_state(s)) for c, d, s in msg.docs])
    else:
        out.append(T_CLOSE)
        _uv(out, msg.code)
        _str(out, msg.reason[:200])
    if len(out) > MAX_MESSAGE_SIZE:
        raise LocalProtocolError("message too large")
    return bytes(out)


# ---------------------------------------------------------------- decoding


def _read_changes(r: Reader) -> ChangesMessage:
    table = [r.name() for _ in range(r.count())]
    ntable = len(table)

    def ref() -> str:
        i = r.uv()
        if i >= ntable:
            raise r.fail("string reference out of range")
        return table[i]

    seqs: dict[str, int] = {}
    hlc = 0
    changes = []
    for _ in range(r.count()):
        origin = ref()
        seq = seqs.get(origin, 0) + r.uv(MAX_HLC)
        if seq == seqs.get(origin, 0) or seq > MAX_HLC:
            raise r.fail("sequence numbers must increase")
        seqs[origin] = seq
        hlc += r.zz()
        if not 0 < hlc <= MAX_HLC:
            raise r.fail("HLC out of range")
        signature = r.raw(1024)
        edits = []
        for _ in range(r.count()):
            collection = ref()
            if "\0" in collection:
                raise r.fail("NUL in a collection name")
            doc_id = r.name()
            flags = r.u8()
            if flags > 3:
                raise r.fail("bad edit flags")
            ops = tuple(_read_op(r, ref, hlc) for _ in range(r.count()))
            edits.append(Edit(collection, doc_id, flags, ops))
        changes.append(Change(origin, seq, hlc, tuple(edits), signature))
    return ChangesMessage(changes)


def _read_op(r: Reader, ref: Callable[[], str], hlc: int) -> FieldOp:
    kind = r.u8()
    name = ref()
    if kind == K_LWW:
        d = r.uv()
        if d >= hlc:
            raise r.fail("bad seen stamp")
        return (K_LWW, name, 0 if d == 0 else hlc - d, r.value())
    if kind == K_INC:
        return (K_INC, name, r.uv(_INT_MAX + 1), r.uv(_INT_MAX + 1))
    if kind == K_CLEAR:
        rank = r.u8()
        if rank > TEXT:
            raise r.fail("bad field type")
        return (K_CLEAR, name, rank, None)
    if kind == K_RESET:
        base = {}
        for _ in range(r.count()):
            origin = ref()
            base[origin] = (r.uv(_INT_MAX + 1), r.uv(_INT_MAX + 1))
        return (K_RESET, name, base, None)
    if kind == K_ADD:
        return (K_ADD, name, tuple(r.value() for _ in range(r.count())), None)
    if kind in (K_REMOVE, K_UNSET):
        tags = []
        for _ in range(r.count()):
            tag_hlc = r.uv(MAX_HLC + 1)
            origin = ref()
            tags.append((tag_hlc, origin, r.text()))
        return (kind, name, frozenset(tags), None)
    if kind == K_STATE:
        return (K_STATE, name, decode_state(r.raw()), None)
    if kind in (K_TEXT, K_TEXT_QUIET):
        from sync.text import validate_update

        update = r.raw()
        validate_update(update)
        return (kind, name, update, None)
    raise r.fail(f"unknown op kind {kind}")


def _collection(r: Reader) -> str:
    name = r.name()
    if "\0" in name:
        raise r.fail("NUL in a collection name")
    return name


def decode(data: bytes) -> Message:
    """Decode one message. Raises RemoteProtocolError, and nothing else, on bad input."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise LocalProtocolError("decode takes bytes")
    if len(data) > MAX_MESSAGE_SIZE:
        raise RemoteProtocolError("message too large")
    r = Reader(bytes(data))
    try:
        version = r.u8()
        if version != WIRE_VERSION:
            raise RemoteProtocolError(f"unsupported wire version {version}", CLOSE_VERSION)
        kind = r.u8()
        msg: Message
        if kind == T_CHANGES:
            msg = _read_changes(r)
        elif kind == T_HELLO:
            need = r.u8()
            if need > 1:
                raise r.fail("bad flag")
            device, vv = r.name(), r.vv()
            policy = r.value() if r.pos < len(r.data) else None
            msg = Hello(device, vv, bool(need), policy=policy)
        elif kind == T_ACK:
            msg = Ack(r.vv())
        elif kind == T_CLOSE:
            msg = Close(r.uv(2**32), r.text(1024))
        elif kind == T_RECON:
            msg = Recon(r.uv(2**32), decode_ranges(r))
        elif kind == T_DOCS:
            docs = []
            for _ in range(r.count()):
                collection, doc_id = _collection(r), r.name()
                docs.append((collection, doc_id, decode_state(r.raw(MAX_MESSAGE_SIZE))))
            msg = DocsMessage(docs)
        else:
            raise r.fail(f"unknown message type {kind}")
    except RecursionError:
        raise RemoteProtocolError("value nested too deeply") from None
    if r.pos != len(r.data):
        raise r.fail("trailing bytes")
    return msg

