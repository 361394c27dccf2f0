"""Hardening #15's cost fixes keep states exact: the set merge that grows with the delta,
peer states normalised on decode, and the stored-state cache with per-field encodings."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgate.storage.database import connect, migrate
from p2pgate.storage.syncstore import CACHED_MIN, LibsqlStorage, decode_state
from sync.fields import SetState, _add_to_set, _merge_set, set_key
from sync.model import DocState
from sync.replica import Replica
from sync.statecodec import decode_state as decode_wire
from sync.statecodec import encode_state as encode_wire

STAMPS = st.tuples(st.integers(1, 30), st.sampled_from(["A", "B"]))
ELEMENTS = st.integers(0, 6)


def _built(adds, removed):
    state = SetState({}, frozenset((h, o, set_key(v)) for (h, o), v in removed))
    for value, tags in adds:
        state = _merge_set(state, SetState({set_key(value): (value, frozenset(tags))}))
    return state


SETS = st.builds(_built, st.lists(st.tuples(ELEMENTS, st.sets(STAMPS, min_size=1, max_size=2)),
                                  max_size=8),
                 st.lists(st.tuples(STAMPS, ELEMENTS), max_size=4))
ADDS = st.dictionaries(ELEMENTS.map(set_key), st.sets(STAMPS, min_size=1, max_size=2),
                       max_size=3)


@settings(max_examples=300)
@given(SETS, ADDS)
def test_adding_to_a_set_is_the_full_merge(a, adds):
    b = SetState({k: (int(k), frozenset(t)) for k, t in adds.items()})
    assert _add_to_set(a, b) == _merge_set(b, a)


def test_a_peers_set_state_comes_without_the_tags_its_tombstones_remove():
    key = set_key(1)
    sloppy = SetState({key: (1, frozenset({(5, "A"), (6, "B")}))}, frozenset({(5, "A", key)}))
    doc = DocState(None, (6, "B"), {"tags": sloppy}, {"A": 5, "B": 6})
    tags = decode_wire(encode_wire(doc)).fields["tags"]
    assert isinstance(tags, SetState)
    assert tags.adds == {key: (1, frozenset({(6, "B")}))}


def test_cached_states_and_reused_encodings_are_what_is_stored(tmp_path):
    conn = connect(tmp_path / "s.db", "s" * 32)
    migrate(conn)
    try:
        replica = Replica("dev-a", LibsqlStorage(conn))
        replica.declare("c", {"tags": "set", "n": "counter"})
        now = 1_700_000_000.0
        replica.patch("c", "d", {"tags": {"$add": list(range(3000))}, "title": "t"}, now)
        ops = [{"title": "u"}, {"tags": {"$add": [-1, -2]}}, {"tags": {"$remove": [5, 7]}},
               {"n": {"$inc": 3}}, {"tags": {"$add": [5]}}, {"tags": {"$add": [-1]}},
               {"title": None}, {"tags": {"$add": ["x", {"k": [1]}]}}]
        for i, op in enumerate(ops):
            replica.patch("c", "d", op, now + i + 1)
            stored = conn.execute("SELECT state FROM sync_docs WHERE doc_id = 'd'").fetchone()[0]
            assert len(stored) >= CACHED_MIN  # the cached path, not the small-document one
            assert decode_state(stored) == replica.storage.get_doc("c", "d")
        fresh = Replica("dev-a", LibsqlStorage(conn))  # no cache: decoded from the file
        assert fresh.get("c", "d") == replica.get("c", "d")
        assert -2 in fresh.get("c", "d")["tags"] and 7 not in fresh.get("c", "d")["tags"]
    finally:
        conn.close()
