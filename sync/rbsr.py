"""Range-based set reconciliation (Aljoscha Meyer), as in negentropy and iroh-docs.

Each side holds a sorted list of items: a key (collection NUL document ID, as
bytes) and a 63-bit digest of the document's version. A reconciliation message is
a list of ranges that together cover the whole key space, in order; each range
ends at an upper bound and says one of

    SKIP                 nothing to do here
    FP fingerprint       "my items in this range hash to this"
    IDS digest*          "these are all my items in this range; send me yours"
    LAST digest*         "these are all my items in this range" (no answer)

The answer to a fingerprint that differs is either the answerer's digests (when it
holds at most `ID_LIMIT` items there) or `BRANCHES` sub-range fingerprints; the
answer to IDS is LAST. Whoever receives a digest list knows which of its own items
in that range the other side lacks (or holds in another version) and sends those
states; each side only ever sends its own, so a side that may not send a
collection simply does not. A message holding neither FP nor IDS needs no answer.
With d differences among N items that is O(d log N) bytes in O(log N) round trips,
and no state kept between sessions. Ranges assume an ordered, reliable transport
(a broken connection starts a new reconciliation).

Bounds are the shortest key prefix that separates two neighbouring items, each
written as (bytes shared with the previous bound, the rest).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sync.errors import RemoteProtocolError
from sync.wire import Reader, put_bytes, put_uv

__all__ = [
    "BRANCHES",
    "ID_LIMIT",
    "INFINITY",
    "ItemSet",
    "Outcome",
    "Range",
    "decode_ranges",
    "doc_key",
    "encode_ranges",
    "item_digest",
    "split_key",
]

BRANCHES = 16
ID_LIMIT = 32
INFINITY = b"\xff" * 1024  # above every key: keys are UTF-8, which never holds 0xff
SKIP, FP, IDS, LAST = 0, 1, 2, 3
MAX_RANGES = 1 << 16
_MASK = (1 << 63) - 1


def doc_key(collection: str, doc_id: str) -> bytes:
    """The reconciliation key of a document: collection NUL document ID, UTF-8."""
    return collection.encode() + b"\0" + doc_id.encode()


def split_key(key: bytes) -> tuple[str, str]:
    """The (collection, document ID) of a key made by `doc_key`."""
    collection, _, doc_id = key.partition(b"\0")
    return collection.decode(), doc_id.decode()


def item_digest(key: bytes, version: dict[str, int]) -> int:
    """A 63-bit digest of a document's identity and version (fits a signed SQL int)."""
    h = hashlib.blake2b(key, digest_size=8)
    for origin, hlc in sorted(version.items()):
        h.update(b"\0" + origin.encode() + b"\0" + hlc.to_bytes(8, "big"))
    return int.from_bytes(h.digest(), "big") & _MASK


@dataclass(frozen=True, slots=True)
class Range:
    """One range of a reconciliation message: upper bound (exclusive), mode and its payload."""

    upper: bytes
    mode: int
    fingerprint: bytes = b""
    ids: tuple[int, ...] = ()


@dataclass(slots=True)
class Outcome:
    """What processing one message produced."""

    reply: list[Range] = field(default_factory=list)
    send: list[bytes] = field(default_factory=list)  # keys whose states the peer lacks

    @property
    def needs_reply(self) -> bool:
        """Whether the reply carries anything (else it is not sent)."""
        return any(r.mode != SKIP for r in self.reply)

    @property
    def expects_answer(self) -> bool:
        """Whether the reply holds a fingerprint or ID list the peer must answer."""
        return any(r.mode in (FP, IDS) for r in self.reply)


class ItemSet:
    """A sorted snapshot of (key, digest) items with O(1) range fingerprints."""

    def __init__(self, items: Iterable[tuple[bytes, int]]) -> None:
        pairs = sorted(items)
        self.keys = [k for k, _ in pairs]
        self.digests = [d for _, d in pairs]
        sums = [0]
        total = 0
        for d in self.digests:
            total = (total + d) & ((1 << 64) - 1)
            sums.append(total)
        self._sums = sums
        self.by_digest = dict(zip(self.digests, self.keys, strict=True))

    def __len__(self) -> int:
        return len(self.keys)

    def index(self, bound: bytes) -> int:
        """The number of items below `bound`, i.e. the index where a range ending there stops."""
        return bisect.bisect_left(self.keys, bound)

    def fingerprint(self, i: int, j: int) -> bytes:
        """An 8-byte fingerprint of the items with indexes in [i, j)."""
        acc = (self._sums[j] - self._sums[i]) & ((1 << 64) - 1)
        return hashlib.blake2b(
            acc.to_bytes(8, "big") + (j - i).to_bytes(4, "big"), digest_size=8
        ).digest()

    def _bound(self, k: int) -> bytes:
        """The shortest prefix of key k that is above key k-1."""
        prev, key = self.keys[k - 1], self.keys[k]
        n = 0
        while n < len(prev) and prev[n] == key[n]:
            n += 1
        return key[: n + 1]

    def _split(self, i: int, j: int, upper: bytes) -> list[Range]:
        out = []
        count = j - i
        start = i
        for b in range(1, BRANCHES + 1):
            end = i + count * b // BRANCHES
            if end == start:
                continue
            bound = upper if b == BRANCHES else self._bound(end)
            out.append(Range(bound, FP, self.fingerprint(start, end)))
            start = end
        return out

    def initial(self) -> list[Range]:
        """The first message: one fingerprint of the whole set."""
        return [Range(INFINITY, FP, self.fingerprint(0, len(self.keys)))]

    def process(self, ranges: Sequence[Range]) -> Outcome:
        """Answer a peer's reconciliation message."""
        out = Outcome()
        i = 0
        for r in ranges:
            j = self.index(r.upper)
            if j < i:
                raise RemoteProtocolError("reconciliation bounds must increase")
            if r.mode == FP:
                if r.fingerprint == self.fingerprint(i, j):
                    out.reply.append(Range(r.upper, SKIP))
                elif j - i <= ID_LIMIT:
                    out.reply.append(Range(r.upper, IDS, ids=tuple(self.digests[i:j])))
                else:
                    out.reply.extend(self._split(i, j, r.upper))
            elif r.mode in (IDS, LAST):
                theirs = set(r.ids)
                mine = self.digests[i:j]
                out.send.extend(self.keys[i + n] for n, d in enumerate(mine) if d not in theirs)
                out.reply.append(Range(r.upper, LAST, ids=tuple(mine)) if r.mode == IDS
                                 else Range(r.upper, SKIP))
            else:
                out.reply.append(Range(r.upper, SKIP))
            i = j
        out.reply = _merge_skips(out.reply)
        return out


def _merge_skips(ranges: list[Range]) -> list[Range]:
    out: list[Range] = []
    for r in ranges:
        if out and r.mode == SKIP and out[-1].mode == SKIP:
            out[-1] = r
        else:
            out.append(r)
    return out


def encode_ranges(out: bytearray, ranges: Sequence[Range]) -> None:
    """Append the ranges to `out`, bounds prefix-compressed against the previous one."""
    put_uv(out, len(ranges))
    prev = b""
    for r in ranges:
        if r.upper == INFINITY:
            put_uv(out, 0)
        else:
            shared = 0
            limit = min(len(prev), len(r.upper))
            while shared < limit and prev[shared] == r.upper[shared]:
                shared += 1
            put_uv(out, shared + 1)
            put_bytes(out, r.upper[shared:])
            prev = r.upper
        out.append(r.mode)
        if r.mode == FP:
            out += r.fingerprint
        elif r.mode in (IDS, LAST):
            put_uv(out, len(r.ids))
            for d in r.ids:
                out += d.to_bytes(8, "big")


def decode_ranges(r: Reader) -> list[Range]:
    """Read ranges written by `encode_ranges`; raises RemoteProtocolError if malformed."""
    n = r.count()
    if n > MAX_RANGES:
        raise r.fail("too many ranges")
    prev = b""
    out = []
    last = b""
    for k in range(n):
        shared = r.uv()
        if shared == 0:
            upper = INFINITY
            if k != n - 1:
                raise r.fail("only the last range may end at infinity")
        else:
            if shared - 1 > len(prev):
                raise r.fail("bound shares more than the previous bound")
            upper = prev[: shared - 1] + r.raw(1024)
            if upper <= last or b"\xff" in upper:
                raise r.fail("bounds must increase")
            prev = last = upper
        mode = r.u8()
        if mode == FP:
            if len(r.data) - r.pos < 8:
                raise r.fail("truncated fingerprint")
            out.append(Range(upper, FP, r.data[r.pos : r.pos + 8]))
            r.pos += 8
        elif mode in (IDS, LAST):
            count = r.count()
            if count * 8 > len(r.data) - r.pos:
                raise r.fail("truncated digests")
            ids = tuple(int.from_bytes(r.data[r.pos + 8 * m : r.pos + 8 * m + 8], "big")
                        for m in range(count))
            r.pos += 8 * count
            out.append(Range(upper, mode, ids=ids))
        elif mode == SKIP:
            out.append(Range(upper, SKIP))
        else:
            raise r.fail("bad range mode")
    if out and out[-1].upper != INFINITY:
        raise r.fail("the last range must end at infinity")
    return out
