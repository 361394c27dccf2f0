"""Where a node keeps its files: --data-dir, else $P2PGATE_HOME, else the user data dir."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["DataDir", "resolve_data_dir"]

ENV_HOME = "P2PGATE_HOME"


class DataDir:
    """The file layout of one node's data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def create(self) -> None:
        """Create the directory (mode 0700, with parents) if it does not exist."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    @property
    def device_key(self) -> Path:
        """The device's private key (PEM, mode 0600)."""
        return self.root / "device.key"

    @property
    def device_cert(self) -> Path:
        """The device's self-signed certificate (PEM)."""
        return self.root / "device.crt"

    @property
    def database(self) -> Path:
        """The encrypted libSQL database."""
        return self.root / "p2pgate.db"

    @property
    def database_key(self) -> Path:
        """The database encryption key (a secret file)."""
        return self.root / "db.key"

    @property
    def admin_token(self) -> Path:
        """The admin token for the local API (a secret file)."""
        return self.root / "admin.token"

    @property
    def config(self) -> Path:
        """The node's TOML configuration file."""
        return self.root / "config.toml"


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> DataDir:
    """The data dir: `explicit` if given, else $P2PGATE_HOME, else the platform's user data dir."""
    if explicit:
        return DataDir(Path(explicit).expanduser().absolute())
    env = os.environ.get(ENV_HOME)
    if env:
        return DataDir(Path(env).expanduser().absolute())
    return DataDir(Path(platformdirs.user_data_dir("p2pgate", appauthor=False)))


def runtime_file(data_dir: DataDir) -> Path:
    """Written by a running node: its API URL and PID, so CLI commands can find it."""
    return data_dir.root / "node.json"
