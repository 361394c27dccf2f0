"""Wire codec: round trips, and any bytes either decode or raise RemoteProtocolError."""

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sync_helpers import T0, make_replica

from sync import Ack, ChangesMessage, Close, Hello, RemoteProtocolError, decode, encode
from sync.codec import MAX_MESSAGE_SIZE, ChangesEncoder

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sample_changes():
    r = make_replica("device-A")
    r.put("c", "d1", {"a": {"x": [1, 2.5, None, True]}, "n": 3, "s": ["p", 1], "t": "héllo"}, T0)
    r.patch("c", "d1", {"a": None, "n": {"$inc": -2}, "s": {"$remove": ["p"]}}, T0 + 1)
    r.patch("c", "d1", {"t": {"$splice": [1, 2, "ü"]}, "b": "x" * 300}, T0 + 2)
    r.delete("c", "d1", T0 + 3)
    r.put("c", "d2", {}, T0 + 4)
    return r.storage.changes_since("device-A", 0, 100)


CHANGES = sample_changes()
VALID = [
    encode(ChangesMessage(CHANGES)),
    encode(Hello("device-A", {"device-A": 5, "device-B": 2})),
    encode(Ack({"device-A": 5})),
    encode(Close(1, "bad")),
]


def test_round_trip():
    assert decode(VALID[0]) == ChangesMessage(CHANGES)
    assert decode(VALID[1]) == Hello("device-A", {"device-A": 5, "device-B": 2})
    assert decode(VALID[2]) == Ack({"device-A": 5})
    assert decode(VALID[3]) == Close(1, "bad")


def test_one_field_edit_is_compact():
    r = make_replica("X" * 60)
    for i in range(100):
        r.patch("c", f"doc{i}", {"title": "v"}, T0 + i)
    size = len(encode(ChangesMessage(r.storage.changes_since("X" * 60, 0, 100))))
    assert size < 100 * 30


def test_encoder_respects_size_limit():
    enc = ChangesEncoder()
    assert enc.add(CHANGES[2], limit=10)  # the first change always fits
    assert not enc.add(CHANGES[3], limit=10)
    assert decode(enc.to_bytes()) == ChangesMessage([CHANGES[2]])


def test_oversized_input_is_refused():
    with pytest.raises(RemoteProtocolError):
        decode(b"\x01\x03" + b"\x00" * MAX_MESSAGE_SIZE)


def decodes_or_refuses(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode(data)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data):
    decodes_or_refuses(data)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_after_valid_header(data):
    for kind in (1, 2, 3, 4):
        decodes_or_refuses(bytes((1, kind)) + data)


@FUZZ
@given(
    st.sampled_from(VALID),
    st.lists(
        st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 10**6),
                  st.integers(0, 255)),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_valid_messages(message, mutations):
    data = bytearray(message)
    for how, where, byte in mutations:
        i = where % (len(data) + 1)
        if how == "flip" and i < len(data):
            data[i] ^= byte or 1
        elif how == "cut":
            del data[i:]
        elif how == "insert":
            data.insert(i, byte)
        elif how == "delete" and i < len(data):
            del data[i]
    decodes_or_refuses(bytes(data))


def test_bad_text_update_is_a_remote_error():
    msg = bytearray(VALID[0])
    r = make_replica("device-B")
    r.patch("c", "d", {"t": "abc"}, T0)
    good = encode(ChangesMessage(r.storage.changes_since("device-B", 0, 1)))
    corrupt = good[:-3] + b"\xff\xff\xff"
    with pytest.raises(RemoteProtocolError):
        decode(corrupt)
    assert msg
