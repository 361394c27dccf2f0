"""Document filters for selective sync: a small declarative predicate, never code.

A filter is a JSON object. Each key is a field name (matching that field of the
document) or a combinator:

    {"folder": "work"}                       equality (shorthand for {"$eq": ...})
    {"priority": {"$gte": 2, "$lt": 5}}      comparison: $gt $gte $lt $lte (same types only)
    {"status": {"$in": ["open", "doing"]}}   membership in a list of values
    {"tags": {"$contains": "urgent"}}        a list field (e.g. a set) holds the value
    {"path": {"$prefix": "notes/"}}          string prefix
    {"archived": {"$exists": false}}         presence
    {"$and": [...]}, {"$or": [...]}, {"$not": {...}}

Keys of one object are AND-ed. A missing field matches nothing but `$exists: false`.
Numbers compare with numbers, strings with strings; other pairs never match.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sync.errors import LocalProtocolError

__all__ = ["FilterError", "compile_filter"]

Predicate = Callable[[Mapping[str, Any]], bool]

MAX_DEPTH = 8
MAX_NODES = 256
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}
_MISSING = object()


class FilterError(LocalProtocolError):
    """A filter that is malformed, too deep or too large."""


def _comparable(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return (isinstance(a, numbers) and isinstance(b, numbers)) or (
        isinstance(a, str) and isinstance(b, str)
    )


def _equal(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b or (
        _comparable(a, b) and not isinstance(a, str) and a == b
    )


class _Compiler:
    def __init__(self) -> None:
        self.nodes = 0

    def _count(self, depth: int) -> None:
        self.nodes += 1
        if depth > MAX_DEPTH:
            raise FilterError(f"a filter nests at most {MAX_DEPTH} levels")
        if self.nodes > MAX_NODES:
            raise FilterError(f"a filter has at most {MAX_NODES} conditions")

    def document(self, spec: Any, depth: int = 0) -> Predicate:
        if not isinstance(spec, Mapping):
            raise FilterError("a filter is a JSON object")
        parts = [self._key(key, value, depth + 1) for key, value in spec.items()]
        return lambda doc: all(p(doc) for p in parts)

    def _key(self, key: str, value: Any, depth: int) -> Predicate:
        self._count(depth)
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"{key} takes a non-empty list of filters")
            subs = [self.document(v, depth + 1) for v in value]
            if key == "$and":
                return lambda doc: all(p(doc) for p in subs)
            return lambda doc: any(p(doc) for p in subs)
        if key == "$not":
            sub = self.document(value, depth + 1)
            return lambda doc: not sub(doc)
        if key.startswith("$"):
            raise FilterError(f"unknown filter operator {key}")
        tests = self._field_tests(key, value, depth)
        return lambda doc: all(t(doc.get(key, _MISSING)) for t in tests)

    def _field_tests(self, key: str, value: Any, depth: int) -> list[Callable[[Any], bool]]:
        if not (isinstance(value, Mapping) and value and all(
            isinstance(k, str) and k.startswith("$") for k in value
        )):
            return [lambda v: v is not _MISSING and _equal(v, value)]
        tests: list[Callable[[Any], bool]] = []
        for op, arg in value.items():
            self._count(depth + 1)
            tests.append(self._operator(key, op, arg))
        return tests

    @staticmethod
    def _operator(key: str, op: str, arg: Any) -> Callable[[Any], bool]:
        if op == "$eq":
            return lambda v: v is not _MISSING and _equal(v, arg)
        if op in _COMPARE:
            if not _comparable(arg, arg):
                raise FilterError(f"{key}: {op} compares numbers or strings")
            cmp = _COMPARE[op]
            return lambda v: v is not _MISSING and _comparable(v, arg) and cmp(v, arg)
        if op == "$in":
            if not isinstance(arg, list):
                raise FilterError(f"{key}: $in takes a list")
            return lambda v: v is not _MISSING and any(_equal(v, a) for a in arg)
        if op == "$contains":
            return lambda v: isinstance(v, list) and any(_equal(x, arg) for x in v)
        if op == "$prefix":
            if not isinstance(arg, str):
                raise FilterError(f"{key}: $prefix takes a string")
            return lambda v: isinstance(v, str) and v.startswith(arg)
        if op == "$exists":
            if not isinstance(arg, bool):
                raise FilterError(f"{key}: $exists takes true or false")
            return lambda v: (v is not _MISSING) == arg
        raise FilterError(f"{key}: unknown operator {op}")


def compile_filter(spec: Any) -> Predicate:
    """Check `spec` and turn it into a predicate over a document's fields."""
    return _Compiler().document(spec)
