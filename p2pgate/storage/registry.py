"""The device registry: which devices this node knows, and how far it trusts them.

States and the only legal moves between them:

    (new) ──begin_pairing──▶ pending ──complete_pairing──▶ trusted ◀──unblock── blocked
                                │  └──abort_pairing──▶ (removed, or back to revoked)
    trusted / blocked ──revoke──▶ revoked ──begin_pairing(repair=True)──▶ pending
    pending / trusted ──block──▶ blocked

`pending` means pairing is in progress: such a device never completes a handshake.
Revoking wipes the pair secret; a revoked device comes back only by pairing again,
explicitly. Every committed change is announced to subscribers as `DeviceChanged`
(the network layer rebuilds its TLS context and drops sessions on it).
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from p2pgate.errors import LocalProtocolError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.storage.database import Connection, Database

__all__ = [
    "Device",
    "DeviceChanged",
    "DeviceRegistry",
    "DeviceState",
    "IllegalTransition",
    "UnknownDevice",
]

log = logging.getLogger(__name__)


class DeviceState(enum.StrEnum):
    """Where a device stands: pending pairing, trusted, blocked, or revoked for good."""

    PENDING = "pending"
    TRUSTED = "trusted"
    BLOCKED = "blocked"
    REVOKED = "revoked"


class IllegalTransition(LocalProtocolError):
    """A state change the registry does not allow (e.g. revoked → trusted)."""


class UnknownDevice(LocalProtocolError, KeyError):
    """No device with that ID is in the registry."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class Device:
    """One registry row: a known device, its pinned certificate, secrets, state and sightings."""

    device_id: DeviceID
    name: str
    cert_der: bytes
    k_pair: bytes | None
    disc_key: bytes | None
    state: DeviceState
    first_seen: float
    last_seen: float | None
    addresses: tuple[str, ...]
    relays: tuple[str, ...]
    revoked_at: float | None
    policy: dict[str, Any]

    def __repr__(self) -> str:  # never print secrets
        return f"Device({self.device_id.short}, {self.name!r}, {self.state})"


@dataclass(frozen=True, slots=True)
class DeviceChanged:
    """A committed registry change; `new_state` None means the device was removed."""

    device_id: DeviceID
    old_state: DeviceState | None
    new_state: DeviceState | None

    @property
    def lost_trust(self) -> bool:
        """A trusted device was revoked, blocked or removed (our discovery key rotates)."""
        return self.old_state is DeviceState.TRUSTED and self.new_state in (
            DeviceState.REVOKED, DeviceState.BLOCKED, None)


_COLUMNS = (
    "device_id, name, cert_der, k_pair, disc_key, state, first_seen, last_seen, "
    "addresses, relays, revoked_at, policy"
)


def _ms(t: float) -> int:
    return round(t * 1000)


def _s(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def _row_to_device(row: Sequence[Any]) -> Device:
    return Device(
        device_id=DeviceID.parse(row[0]),
        name=row[1],
        cert_der=bytes(row[2]),
        k_pair=None if row[3] is None else bytes(row[3]),
        disc_key=None if row[4] is None else bytes(row[4]),
        state=DeviceState(row[5]),
        first_seen=row[6] / 1000,
        last_seen=_s(row[7]),
        addresses=tuple(json.loads(row[8])),
        relays=tuple(json.loads(row[9])),
        revoked_at=_s(row[10]),
        policy=json.loads(row[11]),
    )


def _fetch(conn: Connection, device_id: DeviceID) -> Device | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM devices WHERE device_id = ?",  # noqa: S608 (constant)
        (str(device_id),),
    ).fetchone()
    return None if row is None else _row_to_device(row)


Listener = Callable[[DeviceChanged], None]


class DeviceRegistry:
    """Async access to the `devices` table, with change notifications."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._listeners: list[Listener] = []

    # -- reading -----------------------------------------------------------------

    async def get(self, device_id: DeviceID) -> Device | None:
        """The device with this ID, or None if the registry does not know it."""
        return await self._db.run(lambda conn: _fetch(conn, device_id))

    async def require(self, device_id: DeviceID) -> Device:
        """The device with this ID; raises UnknownDevice if the registry does not know it."""
        device = await self.get(device_id)
        if device is None:
            raise UnknownDevice(f"no device {device_id.short} in the registry")
        return device

    async def devices(self, states: Iterable[DeviceState] | None = None) -> list[Device]:
        """The devices in the given states (all if None), ordered by name then ID."""
        wanted = None if states is None else {DeviceState(s) for s in states}

        def _list(conn: Connection) -> list[Device]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM devices ORDER BY name, device_id"  # noqa: S608
            ).fetchall()
            devices = [_row_to_device(r) for r in rows]
            return [d for d in devices if wanted is None or d.state in wanted]

        return await self._db.run(_list)

    async def trusted(self) -> list[Device]:
        """The trusted devices, ordered by name then ID."""
        return await self.devices([DeviceState.TRUSTED])

    async def is_trusted_device(self, device_id: DeviceID) -> bool:
        """Whether `device_id` is trusted now (e.g. to accept its relay invitation)."""
        device = await self.get(device_id)
        return device is not None and device.state is DeviceState.TRUSTED

    async def is_trusted(self, cert_der: bytes) -> bool:
        """True if `cert_der` is exactly the certificate of a trusted device."""
        device = await self.get(DeviceID.from_certificate(cert_der))
        return device is not None and device.state is DeviceState.TRUSTED and (
            device.cert_der == cert_der
        )

    # -- notifications -----------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` after every committed change; returns an unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _announce(self, change: DeviceChanged) -> None:
        if change.old_state == change.new_state:
            return
        log.info(
            "device %s: %s -> %s", change.device_id.short, change.old_state, change.new_state
        )
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("registry listener failed")

    # -- pairing -----------------------------------------------------------------

    async def begin_pairing(self, cert_der: bytes, name: str, *, repair: bool = False) -> Device:
        """Record a device whose pairing is in progress (state `pending`).

        A revoked device can be paired again only with `repair=True`.
        """
        device_id = DeviceID.from_certificate(cert_der)
        now = _ms(self._clock())

        def _begin(conn: Connection) -> tuple[Device | None, Device]:
            old = _fetch(conn, device_id)
            if old is None:
                conn.execute(
                    "INSERT INTO devices (device_id, name, cert_der, state, first_seen) "
                    "VALUES (?, ?, ?, 'pending', ?)",
                    (str(device_id), name, cert_der, now),
                )
            elif old.state is DeviceState.REVOKED and repair:
                conn.execute(
                    "UPDATE devices SET state = 'pending', name = ? WHERE device_id = ?",
                    (name, str(device_id)),
                )
            elif old.state is DeviceState.REVOKED:
                raise IllegalTransition(
                    f"device {device_id.short} was revoked; re-pair it explicitly to trust it again"
                )
            else:
                raise IllegalTransition(f"device {device_id.short} is already {old.state}")
            new = _fetch(conn, device_id)
            assert new is not None  # noqa: S101 (inserted or updated above)
            return old, new

        old, new = await self._db.write(_begin)
        self._announce(DeviceChanged(device_id, old.state if old else None, new.state))
        return new

    async def complete_pairing(
        self, device_id: DeviceID, k_pair: bytes, disc_key: bytes
    ) -> Device:
        """pending → trusted, storing the pair secret and the peer's discovery key."""
        return await self._move(
            device_id, DeviceState.TRUSTED, {DeviceState.PENDING},
            "k_pair = ?, disc_key = ?, revoked_at = NULL", (k_pair, disc_key),
        )

    async def abort_pairing(self, device_id: DeviceID) -> None:
        """Undo `begin_pairing`: a new device disappears, a re-paired one is revoked again."""

        def _abort(conn: Connection) -> Device:
            old = _fetch(conn, device_id)
            if old is None:
                raise UnknownDevice(f"no device {device_id.short} in the registry")
            if old.state is not DeviceState.PENDING:
                raise IllegalTransition(f"device {device_id.short} is {old.state}, not pending")
            if old.revoked_at is None:
                conn.execute("DELETE FROM devices WHERE device_id = ?", (str(device_id),))
            else:
                conn.execute(
                    "UPDATE devices SET state = 'revoked' WHERE device_id = ?", (str(device_id),)
                )
            return old

        old = await self._db.write(_abort)
        new_state = None if old.revoked_at is None else DeviceState.REVOKED
        self._announce(DeviceChanged(device_id, old.state, new_state))

    # -- trust changes -----------------------------------------------------------

    async def block(self, device_id: DeviceID) -> Device:
        """Block a pending or trusted device (reversible); raises IllegalTransition otherwise."""
        return await self._move(
            device_id, DeviceState.BLOCKED, {DeviceState.PENDING, DeviceState.TRUSTED}
        )

    async def unblock(self, device_id: DeviceID) -> Device:
        """Trust a blocked device again; raises IllegalTransition if it never finished pairing."""
        device = await self.require(device_id)
        if device.state is DeviceState.BLOCKED and device.k_pair is None:
            raise IllegalTransition(
                f"device {device_id.short} never finished pairing; pair it instead"
            )
        return await self._move(device_id, DeviceState.TRUSTED, {DeviceState.BLOCKED})

    async def revoke(self, device_id: DeviceID) -> Device:
        """Withdraw trust for good: the pair secret is wiped."""
        return await self._move(
            device_id, DeviceState.REVOKED, {DeviceState.TRUSTED, DeviceState.BLOCKED},
            "k_pair = NULL, disc_key = NULL, revoked_at = ?", (_ms(self._clock()),),
        )

    # -- bookkeeping -------------------------------------------------------------

    async def rename(self, device_id: DeviceID, name: str) -> Device:
        """Change a device's display name; raises UnknownDevice if it is not in the registry."""
        return await self._update(device_id, "name = ?", (name,))

    async def record_seen(
        self,
        device_id: DeviceID,
        addresses: Sequence[str] | None = None,
        relays: Sequence[str] | None = None,
    ) -> Device:
        """Note that the device was just seen, at these addresses and relays."""
        sets: list[str] = ["last_seen = ?"]
        params: list[Any] = [_ms(self._clock())]
        if addresses is not None:
            sets.append("addresses = ?")
            params.append(json.dumps(list(addresses)))
        if relays is not None:
            sets.append("relays = ?")
            params.append(json.dumps(list(relays)))
        return await self._update(device_id, ", ".join(sets), tuple(params))

    async def set_disc_key(self, device_id: DeviceID, disc_key: bytes) -> Device:
        """A trusted peer rotated its discovery key (it told us over a pinned session)."""
        return await self._update(device_id, "disc_key = ?", (disc_key,))

    async def set_policy(self, device_id: DeviceID, policy: dict[str, Any]) -> Device:
        """Store our sync policy for a device: per collection (`*`: the rest) a mode and filter."""
        return await self._update(device_id, "policy = ?", (json.dumps(policy),))

    # -- internals ---------------------------------------------------------------

    async def _update(self, device_id: DeviceID, sets: str, params: tuple[Any, ...]) -> Device:
        def _do(conn: Connection) -> Device:
            if _fetch(conn, device_id) is None:
                raise UnknownDevice(f"no device {device_id.short} in the registry")
            conn.execute(
                f"UPDATE devices SET {sets} WHERE device_id = ?",  # noqa: S608 (our own SQL)
                (*params, str(device_id)),
            )
            new = _fetch(conn, device_id)
            assert new is not None  # noqa: S101
            return new

        return await self._db.write(_do)

    async def _move(
        self,
        device_id: DeviceID,
        to: DeviceState,
        allowed_from: set[DeviceState],
        extra_sets: str = "",
        extra_params: tuple[Any, ...] = (),
    ) -> Device:
        def _do(conn: Connection) -> tuple[DeviceState, Device]:
            old = _fetch(conn, device_id)
            if old is None:
                raise UnknownDevice(f"no device {device_id.short} in the registry")
            if old.state not in allowed_from:
                hint = (
                    "; pair it again to trust it" if old.state is DeviceState.REVOKED else ""
                )
                raise IllegalTransition(
                    f"device {device_id.short} cannot go from {old.state} to {to}{hint}"
                )
            sets = "state = ?" + (f", {extra_sets}" if extra_sets else "")
            conn.execute(
                f"UPDATE devices SET {sets} WHERE device_id = ?",  # noqa: S608 (our own SQL)
                (to.value, *extra_params, str(device_id)),
            )
            new = _fetch(conn, device_id)
            assert new is not None  # noqa: S101
            return old.state, new

        old_state, new = await self._db.write(_do)
        self._announce(DeviceChanged(device_id, old_state, new.state))
        return new
