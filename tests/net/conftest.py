"""Real devices for net tests: identities on disk, registries on real libSQL files."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import pytest

from p2pgate.identity import Identity
from p2pgate.identity.paths import DataDir
from p2pgate.net.frames import PeerHello
from p2pgate.net.peers import Trust
from p2pgate.storage.database import Database
from p2pgate.storage.registry import DeviceRegistry


@dataclass
class Device:
    name: str
    identity: Identity
    data_dir: DataDir
    db: Database
    registry: DeviceRegistry
    trust: Trust

    def hello(self) -> PeerHello:
        return PeerHello(str(self.identity.device_id), self.name)


async def pair(a: Device, b: Device, k_pair: bytes | None = None) -> bytes:
    k = k_pair or os.urandom(32)
    for me, other in ((a, b), (b, a)):
        await me.registry.begin_pairing(other.identity.cert_der, other.name)
        await me.registry.complete_pairing(other.identity.device_id, k, os.urandom(32))
        await me.trust.load()
    return k


@pytest.fixture
async def devices(tmp_path):
    made: list[Device] = []

    async def make(name: str) -> Device:
        data_dir = DataDir(tmp_path / name)
        identity = Identity.generate()
        await asyncio.to_thread(identity.save, data_dir)
        db = await Database.open(data_dir.root / "db", "k" * 32)
        registry = DeviceRegistry(db)
        trust = Trust(registry, data_dir.device_cert, data_dir.device_key)
        await trust.load()
        device = Device(name, identity, data_dir, db, registry, trust)
        made.append(device)
        return device

    yield make
    for device in made:
        await device.trust.close()
        for sessions in list(device.trust.sessions.values()):
            for session in list(sessions):
                await session.close()
        await device.db.close()
