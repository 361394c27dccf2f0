"""Merge laws per field type: commutative, associative, idempotent."""

from functools import reduce

from hypothesis import given, settings
from hypothesis import strategies as st

from sync.fields import (
    CounterState,
    LwwState,
    SetState,
    TextState,
    field_conflict,
    field_value,
    merge_field,
    set_key,
)
from sync.model import DocState, merge_docs, render_doc
from sync.text import splice, text_of

LAWS = settings(max_examples=150, deadline=None)
ORIGINS = st.sampled_from(["A", "B", "C"])
STAMPS = st.tuples(st.integers(1, 60), ORIGINS)
OPT_STAMP = st.none() | STAMPS


def lww_delta(stamp):
    hlc, origin = stamp
    return LwwState(((hlc, origin, max(0, hlc - 1 - hlc % 4), f"{origin}{hlc}"),))


def lww_states():
    return st.builds(
        lambda stamps, cleared: reduce(merge_field, map(lww_delta, stamps), LwwState((), cleared)),
        st.lists(STAMPS, max_size=4),
        OPT_STAMP,
    )


PAIRS = st.dictionaries(ORIGINS, st.tuples(st.integers(0, 9), st.integers(0, 9)), max_size=3)
counter_states = st.builds(CounterState, PAIRS, PAIRS, OPT_STAMP, OPT_STAMP)
ELEMENTS = st.sampled_from(["x", 1, [1, 2], {"k": None}])


def set_states():
    def build(adds, removed, last, cleared):
        state = SetState({}, frozenset((h, o, set_key(v)) for (h, o), v in removed), last, cleared)
        for value, tags in adds:
            state = merge_field(state, SetState({set_key(value): (value, frozenset(tags))}))
        return state

    return st.builds(
        build,
        st.lists(st.tuples(ELEMENTS, st.sets(STAMPS, min_size=1, max_size=3)), max_size=4),
        st.lists(st.tuples(STAMPS, ELEMENTS), max_size=4),
        OPT_STAMP,
        OPT_STAMP,
    )


def _text_updates():
    """A few concurrent and sequential Yjs edits by three devices."""
    base = splice(b"", "A", 0, 0, "hello")
    u_b = splice(base, "B", 5, 0, " world")
    u_c = splice(base, "C", 0, 1, "J")
    u_a = splice(base, "A", 2, 2, "")
    return [base, u_b, u_c, u_a]


UPDATES = _text_updates()
text_states = st.builds(
    lambda idx, last, cleared: reduce(
        merge_field, [TextState(UPDATES[i]) for i in idx], TextState(b"", last, cleared)
    ),
    st.lists(st.integers(0, len(UPDATES) - 1), max_size=4),
    OPT_STAMP,
    OPT_STAMP,
)


def observe(state):
    """What a state means (text bytes may differ in encoding, not in content)."""
    if isinstance(state, TextState):
        return ("text", text_of(state.update), state.last, state.cleared)
    return state


FIELD_STATES = [lww_states(), counter_states, set_states(), text_states]


@LAWS
@given(st.data())
def test_merge_is_commutative_associative_idempotent(data):
    kind = data.draw(st.integers(0, 3))
    a, b, c = (data.draw(FIELD_STATES[kind]) for _ in range(3))
    assert observe(merge_field(a, b)) == observe(merge_field(b, a))
    assert observe(merge_field(merge_field(a, b), c)) == observe(
        merge_field(a, merge_field(b, c))
    )
    assert observe(merge_field(a, a)) == observe(a)
    assert observe(merge_field(merge_field(a, b), b)) == observe(merge_field(a, b))


@LAWS
@given(st.data())
def test_fields_of_different_types_merge_by_rank(data):
    i, j = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))
    a, b = data.draw(FIELD_STATES[i]), data.draw(FIELD_STATES[j])
    assert observe(merge_field(a, b)) == observe(merge_field(b, a))
    if i != j:
        assert merge_field(a, b).rank == max(i, j)


@LAWS
@given(st.lists(STAMPS, min_size=1, max_size=6, unique=True))
def test_lww_winner_is_largest_stamp_and_conflict_is_concurrent_loser(stamps):
    state = reduce(merge_field, map(lww_delta, stamps))
    best = max(stamps)
    assert field_value(state) == f"{best[1]}{best[0]}"
    conflict = field_conflict(state)
    ranked = sorted(stamps, reverse=True)
    if conflict is not None:
        assert (conflict[0], conflict[1]) == ranked[1]
        assert conflict[0] > state.entries[0][2]


def test_counter_value_counts_only_beyond_baseline():
    state = CounterState({"A": (5, 1), "B": (2, 0)}, {"A": (3, 1)}, (1, "A"))
    assert field_value(state) == 2 + 2
    reset_before_increments_arrived = CounterState({}, {"C": (4, 0)}, (1, "A"))
    assert field_value(merge_field(state, reset_before_increments_arrived)) == 4


def test_set_is_add_wins():
    tag_a, tag_b = (1, "A"), (2, "B")
    added = SetState({set_key("x"): ("x", frozenset({tag_a}))}, frozenset(), tag_a)
    removed_a = SetState({}, frozenset({(*tag_a, set_key("x"))}), (3, "C"))
    concurrent_add = SetState({set_key("x"): ("x", frozenset({tag_b}))}, frozenset(), tag_b)
    assert field_value(merge_field(added, removed_a)) == []
    assert field_value(reduce(merge_field, [added, removed_a, concurrent_add])) == ["x"]


@LAWS
@given(st.lists(st.tuples(st.sampled_from(["a", "n"]), STAMPS, st.booleans()), max_size=6))
def test_document_merge_laws(edits):
    def doc(edit):
        name, stamp, delete = edit
        counter = CounterState({stamp[1]: (stamp[0], 0)}, {}, stamp)
        field = lww_delta(stamp) if name == "a" else counter
        return DocState(stamp if delete else None, None if delete else stamp, {name: field})

    docs = [doc(e) for e in edits] or [DocState()]
    forward = reduce(merge_docs, docs)
    backward = reduce(merge_docs, reversed(docs))
    assert render_doc(forward) == render_doc(backward)
    assert render_doc(merge_docs(forward, forward)) == render_doc(forward)
