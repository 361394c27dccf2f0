"""Who this device is: its key and certificate, its device ID, its data directory.

`Identity` (Ed25519 key + self-signed certificate), `DeviceID` (SHA-256 of the
certificate, base32 with check characters), `DataDir` (where everything lives) and
0600 secret files. It imports no other part of p2pgate.

`keys` loads `cryptography.x509`, which pulls in `socket` (through `email`): its names
load on first use, so that importing a sans-I/O core that needs only `DeviceID`
stays free of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from p2pgate.identity.deviceid import DeviceID, InvalidDeviceID
from p2pgate.identity.files import SecretFileError, read_secret, write_file, write_secret
from p2pgate.identity.paths import DataDir, resolve_data_dir

if TYPE_CHECKING:
    from p2pgate.identity.keys import Identity, IdentityError, make_certificate

__all__ = [
    "DataDir", "DeviceID", "Identity", "IdentityError", "InvalidDeviceID", "SecretFileError",
    "make_certificate", "read_secret", "resolve_data_dir", "write_file", "write_secret",
]

_FROM_KEYS = ("Identity", "IdentityError", "make_certificate")


def __getattr__(name: str) -> Any:
    if name in _FROM_KEYS:
        return getattr(importlib.import_module("p2pgate.identity.keys"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
