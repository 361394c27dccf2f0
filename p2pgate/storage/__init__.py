"""Persistence on libSQL (embedded, encrypted): the database, the sync engine's
storage, the device registry, this device's discovery key and its relay tokens."""

from p2pgate.storage.database import Connection, Database, StoreError, load_key
from p2pgate.storage.keys import discovery_key, new_discovery_key
from p2pgate.storage.registry import (
    Device,
    DeviceChanged,
    DeviceRegistry,
    DeviceState,
    IllegalTransition,
    UnknownDevice,
)
from p2pgate.storage.relay_tokens import relay_tokens, store_relay_token
from p2pgate.storage.syncstore import LibsqlStorage

__all__ = [
    "Connection", "Database", "Device", "DeviceChanged", "DeviceRegistry", "DeviceState",
    "IllegalTransition", "LibsqlStorage", "StoreError", "UnknownDevice", "discovery_key",
    "load_key", "new_discovery_key", "relay_tokens", "store_relay_token",
]
