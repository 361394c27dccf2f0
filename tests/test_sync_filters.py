import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.filters import FilterError, compile_filter

DOC = {"folder": "work", "priority": 3, "tags": ["a", "urgent"], "path": "notes/x",
       "done": False, "score": 2.5}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, True),
        ({"folder": "work"}, True),
        ({"folder": "home"}, False),
        ({"priority": {"$gte": 3, "$lt": 5}}, True),
        ({"priority": {"$gt": 3}}, False),
        ({"score": {"$lte": 2.5}}, True),
        ({"priority": {"$gt": "1"}}, False),  # no cross-type comparison
        ({"status": {"$in": ["open"]}}, False),
        ({"folder": {"$in": ["home", "work"]}}, True),
        ({"tags": {"$contains": "urgent"}}, True),
        ({"folder": {"$contains": "w"}}, False),
        ({"path": {"$prefix": "notes/"}}, True),
        ({"priority": {"$prefix": "3"}}, False),
        ({"archived": {"$exists": False}}, True),
        ({"archived": {"$exists": True}}, False),
        ({"done": False}, True),
        ({"done": 0}, False),  # a boolean is not a number
        ({"priority": 3.0}, True),
        ({"$or": [{"folder": "home"}, {"priority": 3}]}, True),
        ({"$and": [{"folder": "work"}, {"priority": 4}]}, False),
        ({"$not": {"folder": "work"}}, False),
        ({"missing": None}, False),
        ({"tags": ["a", "urgent"]}, True),
    ],
)
def test_filter_semantics(spec, expected):
    assert compile_filter(spec)(DOC) is expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([], "a filter is a JSON object"),
        ({"$xor": []}, "unknown filter operator"),
        ({"a": {"$regex": "."}}, "unknown operator"),
        ({"a": {"$gt": [1]}}, "compares numbers or strings"),
        ({"a": {"$in": 1}}, "takes a list"),
        ({"a": {"$prefix": 1}}, "takes a string"),
        ({"a": {"$exists": 1}}, "true or false"),
        ({"$or": []}, "non-empty list"),
    ],
)
def test_bad_filters_are_clear_errors(spec, message):
    with pytest.raises(FilterError, match=message):
        compile_filter(spec)


def test_filters_are_bounded():
    deep: dict = {"a": 1}
    for _ in range(10):
        deep = {"$not": deep}
    with pytest.raises(FilterError, match="nests at most"):
        compile_filter(deep)
    with pytest.raises(FilterError, match="at most 256"):
        compile_filter({f"f{i}": i for i in range(300)})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=12,
)


@given(json_values, st.dictionaries(st.text(max_size=4), json_values, max_size=4))
def test_any_json_either_compiles_or_is_a_filter_error(spec, doc):
    try:
        predicate = compile_filter(spec)
    except FilterError:
        return
    assert predicate(doc) in (True, False)
