"""Small, careful file helpers: secrets are written atomically with mode 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from p2pgate.errors import LocalProtocolError

__all__ = ["SecretFileError", "read_secret", "write_file", "write_secret"]


class SecretFileError(LocalProtocolError):
    """A secret file is missing, unreadable or readable by others."""


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` atomically (temp file, fsync, rename) with `mode`."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # umask must not widen or narrow what we asked for
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_secret(path: Path, data: bytes) -> None:
    """Write a secret atomically with mode 0600 (see `write_file`)."""
    write_file(path, data, 0o600)


def read_secret(path: Path) -> bytes:
    """Read a secret file, refusing one that group or others can access (like ssh)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SecretFileError(f"{path} does not exist (run `p2pgate init`)") from None
    if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(
            f"{path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"fix it with: chmod 600 {path}"
        )
    return path.read_bytes()
