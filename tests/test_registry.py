import pytest

from p2pgate.identity import Identity
from p2pgate.storage.database import Database
from p2pgate.storage.registry import (
    DeviceChanged,
    DeviceRegistry,
    DeviceState,
    IllegalTransition,
    UnknownDevice,
)

T, P, B, R = DeviceState.TRUSTED, DeviceState.PENDING, DeviceState.BLOCKED, DeviceState.REVOKED


@pytest.fixture
async def registry(tmp_path):
    db = await Database.open(tmp_path / "reg.db", "k" * 32)
    clock = iter(range(1_000, 1_000_000)).__next__
    yield DeviceRegistry(db, clock=lambda: float(clock()))
    await db.close()


@pytest.fixture
def changes(registry):
    seen: list[DeviceChanged] = []
    registry.subscribe(seen.append)
    return seen


async def _trusted(registry, name="phone"):
    peer = Identity.generate()
    await registry.begin_pairing(peer.cert_der, name)
    await registry.complete_pairing(peer.device_id, b"K" * 32, b"D" * 32)
    return peer


async def test_pairing_makes_a_device_trusted(registry, changes):
    peer = Identity.generate()
    pending = await registry.begin_pairing(peer.cert_der, "phone")
    assert pending.state is P and pending.k_pair is None
    assert not await registry.is_trusted(peer.cert_der)
    device = await registry.complete_pairing(peer.device_id, b"K" * 32, b"D" * 32)
    assert (device.state, device.k_pair, device.disc_key) == (T, b"K" * 32, b"D" * 32)
    assert device.cert_der == peer.cert_der
    assert await registry.is_trusted(peer.cert_der)
    assert [d.device_id for d in await registry.trusted()] == [peer.device_id]
    assert changes == [
        DeviceChanged(peer.device_id, None, P),
        DeviceChanged(peer.device_id, P, T),
    ]


async def test_abort_pairing_leaves_no_trace(registry, changes):
    peer = Identity.generate()
    await registry.begin_pairing(peer.cert_der, "phone")
    await registry.abort_pairing(peer.device_id)
    assert await registry.get(peer.device_id) is None
    assert changes[-1] == DeviceChanged(peer.device_id, P, None)


async def test_block_unblock_revoke(registry, changes):
    peer = await _trusted(registry)
    assert (await registry.block(peer.device_id)).state is B
    assert not await registry.is_trusted(peer.cert_der)
    assert (await registry.unblock(peer.device_id)).state is T
    revoked = await registry.revoke(peer.device_id)
    assert revoked.state is R
    assert revoked.k_pair is None and revoked.disc_key is None
    assert revoked.revoked_at is not None
    assert [c.new_state for c in changes][-3:] == [B, T, R]


@pytest.mark.parametrize(
    ("setup", "action", "message"),
    [
        ("revoked", "complete", "cannot go from revoked to trusted; pair it again"),
        ("revoked", "unblock", "cannot go from revoked to trusted"),
        ("revoked", "begin", "re-pair it explicitly"),
        ("trusted", "begin", "already trusted"),
        ("trusted", "complete", "cannot go from trusted to trusted"),
        ("trusted", "unblock", "cannot go from trusted to trusted"),
        ("pending", "revoke", "cannot go from pending to revoked"),
        ("pending", "unblock", "cannot go from pending to trusted"),
        ("trusted", "abort", "is trusted, not pending"),
    ],
)
async def test_illegal_transitions_raise_and_change_nothing(registry, setup, action, message):
    peer = Identity.generate()
    await registry.begin_pairing(peer.cert_der, "phone")
    if setup != "pending":
        await registry.complete_pairing(peer.device_id, b"K" * 32, b"D" * 32)
    if setup == "revoked":
        await registry.revoke(peer.device_id)
    before = await registry.get(peer.device_id)
    calls = {
        "complete": lambda: registry.complete_pairing(peer.device_id, b"X" * 32, b"Y" * 32),
        "unblock": lambda: registry.unblock(peer.device_id),
        "begin": lambda: registry.begin_pairing(peer.cert_der, "again"),
        "revoke": lambda: registry.revoke(peer.device_id),
        "abort": lambda: registry.abort_pairing(peer.device_id),
    }
    with pytest.raises(IllegalTransition, match=message):
        await calls[action]()
    assert await registry.get(peer.device_id) == before


async def test_revoked_device_can_be_paired_again_explicitly(registry):
    peer = await _trusted(registry)
    await registry.revoke(peer.device_id)
    again = await registry.begin_pairing(peer.cert_der, "phone 2", repair=True)
    assert again.state is P and again.name == "phone 2"
    await registry.abort_pairing(peer.device_id)  # an aborted re-pair stays revoked
    assert (await registry.require(peer.device_id)).state is R
    await registry.begin_pairing(peer.cert_der, "phone 2", repair=True)
    assert (await registry.complete_pairing(peer.device_id, b"N" * 32, b"M" * 32)).state is T


async def test_blocked_before_pairing_finished_cannot_be_unblocked(registry):
    peer = Identity.generate()
    await registry.begin_pairing(peer.cert_der, "phone")
    await registry.block(peer.device_id)
    with pytest.raises(IllegalTransition, match="never finished pairing"):
        await registry.unblock(peer.device_id)


async def test_unknown_device(registry):
    stranger = Identity.generate().device_id
    assert await registry.get(stranger) is None
    with pytest.raises(UnknownDevice, match=stranger.short):
        await registry.block(stranger)
    with pytest.raises(UnknownDevice):
        await registry.rename(stranger, "x")


async def test_a_certificate_with_a_colliding_id_prefix_is_not_trusted(registry):
    peer = await _trusted(registry)
    other = Identity.generate()
    assert await registry.is_trusted(peer.cert_der)
    assert not await registry.is_trusted(other.cert_der)


async def test_rename_seen_addresses_policy(registry, changes):
    peer = await _trusted(registry)
    n = len(changes)
    await registry.rename(peer.device_id, "Phone")
    seen = await registry.record_seen(peer.device_id, ["10.0.0.2:7771"], ["wss://r.example"])
    assert seen.name == "Phone"
    assert seen.addresses == ("10.0.0.2:7771",) and seen.relays == ("wss://r.example",)
    assert seen.last_seen is not None and seen.last_seen >= seen.first_seen
    policy = await registry.set_policy(peer.device_id, {"notes": "both"})
    assert policy.policy == {"notes": "both"}
    assert len(changes) == n  # no trust change, no notification


async def test_listener_errors_do_not_break_writes_and_unsubscribe_works(registry, caplog):
    calls = []

    def bad(change):
        calls.append(change)
        raise RuntimeError("listener bug")

    unsubscribe = registry.subscribe(bad)
    peer = await _trusted(registry)
    assert len(calls) == 2
    assert "registry listener failed" in caplog.text
    unsubscribe()
    await registry.block(peer.device_id)
    assert len(calls) == 2


async def test_device_repr_hides_secrets(registry):
    peer = await _trusted(registry)
    device = await registry.require(peer.device_id)
    assert "KKKK" not in repr(device)
