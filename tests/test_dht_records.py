import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgate.discovery.dht.records import (
    EPOCH,
    MAX_RECORD,
    RecordContent,
    dht_key,
    epoch_of,
    open_record,
    seal_record,
    validate,
)
from p2pgate.errors import RemoteProtocolError
from p2pgate.identity import Identity

K = os.urandom(32)
ME = Identity.generate()
NOW = 1_800_000_000.0
CONTENT = RecordContent(("10.0.0.2:7771", "[fd00::2]:7771"), ("wss://relay.example",),
                        "203.0.113.9:40000")


def seal(seq=1, now=NOW, k=K, content=CONTENT, who=ME):
    return seal_record(content, k_pair=k, publisher=who.device_id, device_key=who.private_key,
                       seq=seq, now=now)


def test_peer_opens_what_storing_nodes_can_only_validate():
    record = seal()
    assert record.key == dht_key(K, ME.device_id, epoch_of(NOW))
    assert validate(record.key, record.value, NOW).seq == 1
    assert b"10.0.0.2" not in record.value and b"relay" not in record.value
    seq, content = open_record(record.value, k_pair=K, publisher=ME.device_id,
                               publisher_key=ME.public_key, now=NOW + 60)
    assert (seq, content) == (1, CONTENT)


def test_keys_differ_per_pair_per_direction_and_per_epoch():
    other = Identity.generate()
    keys = {
        dht_key(K, ME.device_id, 1), dht_key(K, ME.device_id, 2),
        dht_key(K, other.device_id, 1), dht_key(os.urandom(32), ME.device_id, 1),
    }
    assert len(keys) == 4


def test_reader_accepts_adjacent_epochs_only():
    next_epoch = (epoch_of(NOW) + 1) * EPOCH + 1
    record = seal(now=next_epoch - 120)  # sealed just before the boundary, read after it
    assert epoch_of(next_epoch) == epoch_of(NOW) + 1
    open_record(record.value, k_pair=K, publisher=ME.device_id, publisher_key=ME.public_key,
                now=next_epoch)
    with pytest.raises(RemoteProtocolError, match="current epoch"):
        open_record(record.value, k_pair=K, publisher=ME.device_id,
                    publisher_key=ME.public_key, now=NOW + 3 * EPOCH)


def test_forged_wrong_key_tampered_and_expired_records_are_refused():
    record = seal()
    with pytest.raises(RemoteProtocolError, match="does not belong"):
        validate(os.urandom(20), record.value, NOW)
    flipped = bytearray(record.value)
    flipped[60] ^= 1
    with pytest.raises(RemoteProtocolError, match="signature"):
        validate(record.key, bytes(flipped), NOW)
    with pytest.raises(RemoteProtocolError, match="expired"):
        validate(record.key, record.value, NOW + 2 * EPOCH)
    # someone without K cannot produce a record the peer accepts
    forged = seal(k=os.urandom(32))
    with pytest.raises(RemoteProtocolError):
        open_record(forged.value, k_pair=K, publisher=ME.device_id,
                    publisher_key=ME.public_key, now=NOW)
    # a record sealed with K but signed by another device key is refused by the reader
    mallory = Identity.generate()
    impostor = seal_record(CONTENT, k_pair=K, publisher=ME.device_id,
                           device_key=mallory.private_key, seq=9, now=NOW)
    with pytest.raises(RemoteProtocolError, match="not signed by the peer"):
        open_record(impostor.value, k_pair=K, publisher=ME.device_id,
                    publisher_key=ME.public_key, now=NOW)


def test_records_are_bounded():
    many = RecordContent(tuple(f"10.0.{i}.1:7771" for i in range(100)), ())
    with pytest.raises(ValueError, match="exceeds 1024"):
        seal(content=many)
    with pytest.raises(RemoteProtocolError, match="size"):
        validate(b"k" * 20, b"x" * (MAX_RECORD + 1), NOW)


@settings(max_examples=300)
@given(st.binary(max_size=1100), st.binary(min_size=20, max_size=20))
def test_any_bytes_validate_or_raise_our_error(value, key):
    with contextlib.suppress(RemoteProtocolError):
        validate(key, value, NOW)
