import hashlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgate.identity.deviceid import DeviceID, InvalidDeviceID

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
digests = st.binary(min_size=32, max_size=32)


@given(digests)
def test_round_trip(digest):
    device_id = DeviceID(digest)
    text = str(device_id)
    assert len(text) == 63
    assert [len(g) for g in text.split("-")] == [7] * 8
    assert DeviceID.parse(text) == device_id
    assert device_id.short == text[:7]


@given(digests, st.data())
def test_parse_forgives_case_dashes_spaces_and_lookalikes(digest, data):
    text = str(DeviceID(digest))
    messy = text.replace("-", data.draw(st.sampled_from(["", " ", "-", "  "])))
    messy = messy.translate(str.maketrans({"O": "0", "I": "1", "B": "8"}))
    messy = "".join(c.lower() if data.draw(st.booleans()) else c for c in messy)
    assert DeviceID.parse(f"  {messy}\n") == DeviceID(digest)


@given(digests, st.data())
def test_any_single_character_corruption_is_rejected_naming_its_groups(digest, data):
    compact = str(DeviceID(digest)).replace("-", "")
    pos = data.draw(st.integers(0, len(compact) - 1))
    new = data.draw(st.sampled_from(ALPHABET).filter(lambda c: c != compact[pos]))
    corrupted = compact[:pos] + new + compact[pos + 1 :]
    first_group = 2 * (pos // 14) + 1
    with pytest.raises(InvalidDeviceID, match=f"groups {first_group}-{first_group + 1} "):
        DeviceID.parse(corrupted)


def test_wrong_length_and_foreign_characters_get_clear_errors():
    text = str(DeviceID(os.urandom(32)))
    with pytest.raises(InvalidDeviceID, match="8 groups of 7"):
        DeviceID.parse(text[:-3])
    with pytest.raises(InvalidDeviceID, match="no character '!'"):
        DeviceID.parse("!" + text[1:])


def test_device_id_is_sha256_of_certificate():
    der = b"certificate bytes"
    assert DeviceID.from_certificate(der).digest == hashlib.sha256(der).digest()


def test_ids_order_by_digest_for_tie_breaks():
    low, high = DeviceID(b"\x00" * 32), DeviceID(b"\xff" * 32)
    assert low < high
