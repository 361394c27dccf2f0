"""Binary encoding of whole document states, for state transfer between replicas.

    state  = strings:count str* flags:u8 [deleted:stamp] [touched:stamp]
             version:count (origin:ref hlc:uv)* fields:count field*
    stamp  = hlc:uv origin:ref          opt = 0 | 1 stamp
    field  = name:str kind:u8 cleared:opt payload
    lww    = count(<= 2) (hlc:uv origin:ref seen:uv value)*     best first
    counter= totals:count (ref p:uv n:uv)* base:count (ref p:uv n:uv)* last:opt
    set    = adds:count (value tags:count stamp*)* removed:count (hlc:uv ref key:str)* last:opt
    text   = update:bytes last:opt

`decode_state` accepts any bytes: a state either decodes into one that every merge
function can take, or RemoteProtocolError is raised.
"""

from __future__ import annotations

from typing import Any

from sync.clock import MAX_HLC
from sync.errors import RemoteProtocolError
from sync.fields import (
    COUNTER,
    LWW,
    SET,
    TEXT,
    CounterState,
    FieldState,
    LwwState,
    SetState,
    Stamp,
    TextState,
    set_key,
)
from sync.model import DocState
from sync.wire import Reader, put_bytes, put_str, put_uv, put_value

__all__ = ["decode_state", "encode_state"]

_BIG = 2**63


class _Encoder:
    def __init__(self) -> None:
        self.body = bytearray()
        self.table: dict[str, int] = {}

    def ref(self, s: str) -> None:
        idx = self.table.get(s)
        if idx is None:
            idx = self.table[s] = len(self.table)
        put_uv(self.body, idx)

    def stamp(self, s: Stamp) -> None:
        put_uv(self.body, s[0])
        self.ref(s[1])

    def opt(self, s: Stamp | None) -> None:
        if s is None:
            self.body.append(0)
        else:
            self.body.append(1)
            self.stamp(s)

    def pairs(self, pairs: dict[str, tuple[int, int]]) -> None:
        put_uv(self.body, len(pairs))
        for origin, (p, n) in sorted(pairs.items()):
            self.ref(origin)
            put_uv(self.body, p)
            put_uv(self.body, n)

    def field(self, name: str, state: FieldState) -> None:
        body = self.body
        put_str(body, name)
        body.append(state.rank)
        self.opt(state.cleared)
        if isinstance(state, LwwState):
            put_uv(body, len(state.entries))
            for hlc, origin, seen, value in state.entries:
                self.stamp((hlc, origin))
                put_uv(body, seen)
                put_value(body, value)
        elif isinstance(state, CounterState):
            self.pairs(state.totals)
            self.pairs(state.base)
            self.opt(state.last)
        elif isinstance(state, SetState):
            put_uv(body, len(state.adds))
            for key in sorted(state.adds):
                value, tags = state.adds[key]
                put_value(body, value)
                put_uv(body, len(tags))
                for tag in sorted(tags):
                    self.stamp(tag)
            put_uv(body, len(state.removed))
            for hlc, origin, key in sorted(state.removed):
                self.stamp((hlc, origin))
                put_str(body, key)
            self.opt(state.last)
        else:
            put_bytes(body, state.update)
            self.opt(state.last)


def encode_state(doc: DocState) -> bytes:
    """The binary encoding of a document state (`decode_state` reads it back)."""
    enc = _Encoder()
    body = enc.body
    body.append((doc.deleted is not None) | (doc.touched is not None) << 1)
    if doc.deleted is not None:
        enc.stamp(doc.deleted)
    if doc.touched is not None:
        enc.stamp(doc.touched)
    put_uv(body, len(doc.version))
    for origin, hlc in sorted(doc.version.items()):
        enc.ref(origin)
        put_uv(body, hlc)
    put_uv(body, len(doc.fields))
    for name, state in doc.fields.items():
        enc.field(name, state)
    out = bytearray()
    put_uv(out, len(enc.table))
    for s in enc.table:
        put_str(out, s)
    return bytes(out + body)


class _Decoder:
    def __init__(self, data: bytes) -> None:
        self.r = r = Reader(data)
        self.table = [r.name() for _ in range(r.count())]

    def ref(self) -> str:
        i = self.r.uv()
        if i >= len(self.table):
            raise self.r.fail("string reference out of range")
        return self.table[i]

    def stamp(self) -> Stamp:
        hlc = self.r.uv(MAX_HLC + 1)
        return (hlc, self.ref())

    def opt(self) -> Stamp | None:
        flag = self.r.u8()
        if flag > 1:
            raise self.r.fail("bad optional stamp")
        return self.stamp() if flag else None

    def pairs(self) -> dict[str, tuple[int, int]]:
        out = {}
        for _ in range(self.r.count()):
            origin = self.ref()
            out[origin] = (self.r.uv(_BIG), self.r.uv(_BIG))
        return out

    def field(self) -> tuple[str, FieldState]:
        r = self.r
        name = r.name()
        rank = r.u8()
        cleared = self.opt()
        state: FieldState
        if rank == LWW:
            entries = []
            for _ in range(r.count()):
                hlc, origin = self.stamp()
                entries.append((hlc, origin, r.uv(MAX_HLC + 1), r.value()))
            keys = [(e[0], e[1]) for e in entries]
            if len(entries) > 2 or keys != sorted(set(keys), reverse=True):
                raise r.fail("lww entries must be at most two, best first")
            state = LwwState(tuple(entries), cleared)
        elif rank == COUNTER:
            totals, base = self.pairs(), self.pairs()
            state = CounterState(totals, base, self.opt(), cleared)
        elif rank == SET:
            adds: dict[str, tuple[Any, frozenset[Stamp]]] = {}
            for _ in range(r.count()):
                value = r.value()
                tags = frozenset(self.stamp() for _ in range(r.count()))
                key = set_key(value)
                if key in adds or not tags:
                    raise r.fail("repeated or untagged set element")
                adds[key] = (value, tags)
            removed = []
            for _ in range(r.count()):
                hlc, origin = self.stamp()
                removed.append((hlc, origin, r.text()))
            state = _without_removed(SetState(adds, frozenset(removed), self.opt(), cleared))
        elif rank == TEXT:
            from sync.text import validate_update

            update = r.raw()
            validate_update(update)
            state = TextState(update, self.opt(), cleared)
        else:
            raise r.fail("bad field type")
        return name, state


def _without_removed(state: SetState) -> SetState:
    """The set without the add tags its own tombstones remove (as every merge leaves it)."""
    if not state.removed or not state.adds:
        return state
    adds = dict(state.adds)
    for hlc, origin, key in state.removed:
        entry = adds.get(key)
        if entry is not None and (hlc, origin) in entry[1]:
            tags = entry[1] - {(hlc, origin)}
            if tags:
                adds[key] = (entry[0], tags)
            else:
                del adds[key]
    return SetState(adds, state.removed, state.last, state.cleared)


def decode_state(data: bytes) -> DocState:
    """Decode one state; raises RemoteProtocolError, and nothing else, on bad input."""
    try:
        dec = _Decoder(bytes(data))
        r = dec.r
        flags = r.u8()
        if flags > 3:
            raise r.fail("bad state flags")
        deleted = dec.stamp() if flags & 1 else None
        touched = dec.stamp() if flags & 2 else None
        version = {}
        for _ in range(r.count()):
            origin = dec.ref()
            version[origin] = r.uv(MAX_HLC + 1)
        fields = {}
        for _ in range(r.count()):
            name, state = dec.field()
            if name in fields:
                raise r.fail("repeated field")
            fields[name] = state
    except RecursionError:
        raise RemoteProtocolError("value nested too deeply") from None
    if r.pos != len(r.data):
        raise r.fail("trailing bytes")
    return DocState(deleted, touched, fields, version)
