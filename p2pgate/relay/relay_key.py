"""The relay's own Ed25519 key: made on first start, kept in its data dir (mode 0600).

`RelayKey.load_or_create(data_dir)` reads `DATA_DIR/relay.key` (PKCS#8 PEM, refused
if group or others can read it, like the node's `device.key`) or makes one. Creation
is race-free (a new key is linked into place only if no key is there yet), so two
relays started at once on one data dir end up with the same key. The relay ID
(`auth.RelayID`) is derived from the public key, so it is stable for as long as the
file is kept.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pgate.errors import LocalProtocolError
from p2pgate.identity.files import read_secret
from p2pgate.identity.paths import DataDir
from p2pgate.relay.auth import RelayID

__all__ = ["KEY_FILE", "RelayKey", "RelayKeyError"]

KEY_FILE = "relay.key"


class RelayKeyError(LocalProtocolError):
    """The relay key file is damaged, not an Ed25519 key, or readable by others."""


@dataclass(frozen=True)
class RelayKey:
    """The relay's key pair."""

    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> RelayKey:
        """A fresh key (nothing is written)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, data_dir: DataDir) -> RelayKey:
        """The key in `data_dir` (made, mode 0600, if there is none yet)."""
        path = data_dir.root / KEY_FILE
        if not path.exists():
            data_dir.create()
            _create(path, cls.generate().pem)
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> RelayKey:
        """The key in `path`; RelayKeyError if it is damaged or others can read it."""
        try:
            key = serialization.load_pem_private_key(read_secret(path), None)
        except ValueError as exc:
            raise RelayKeyError(f"damaged relay key {path}: {exc}") from None
        except LocalProtocolError as exc:
            raise RelayKeyError(str(exc)) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise RelayKeyError(f"{path} is not an Ed25519 key")
        return cls(key)

    @cached_property
    def public_raw(self) -> bytes:
        """The raw 32-byte public key (what a hello carries)."""
        return self.private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                          serialization.PublicFormat.Raw)

    @cached_property
    def relay_id(self) -> RelayID:
        """This relay's ID, as devices pin it with `?id=`."""
        return RelayID.of_key(self.public_raw)

    @property
    def pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (a secret)."""
        return self.private_key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())

    def sign(self, data: bytes) -> bytes:
        """An Ed25519 signature of `data` with the relay key."""
        return self.private_key.sign(data)

    def __repr__(self) -> str:
        return f"RelayKey({self.relay_id.short})"


def _create(path: Path, pem: bytes) -> None:
    """Write `pem` to `path` (0600, fsynced) unless a key got there first."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        with contextlib.suppress(FileExistsError):  # another relay made it: use that one
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
