"""Who may call the local API: the admin token and scoped app tokens.

App tokens look like `p2pg_<id>_<secret>`; only SHA-256 of the secret is stored,
and comparisons are constant-time. A token reaches only the collections in its
scopes (`notes:r`, `notes:rw`, `*:r`); the admin token reaches everything. Collection
names are ASCII (the whole name matches `COLLECTION_NAME`), in scopes as in paths, so no
Unicode normalisation can make two of them alike; document IDs are NFC (`routes.params`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from p2pgate.api.cursors import PLAIN, CursorView
from p2pgate.errors import LocalProtocolError
from p2pgate.storage.database import Connection, Database

__all__ = ["AppToken", "Principal", "Scope", "TokenError", "TokenStore", "parse_scope"]

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOKEN = re.compile(r"^p2pg_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})$")


class TokenError(LocalProtocolError):
    """A bad scope, a duplicate or unknown app name."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Access to one collection, or every one ("*"): read only, or read and write."""

    collection: str  # a collection name or "*"
    write: bool

    def __str__(self) -> str:
        return f"{self.collection}:{'rw' if self.write else 'r'}"


def parse_scope(text: str) -> Scope:
    """Parse `COLLECTION:r` or `COLLECTION:rw` (COLLECTION may be `*`); raises TokenError."""
    collection, sep, mode = text.rpartition(":")
    if not sep or mode not in ("r", "rw"):
        raise TokenError(f"scope {text!r} must be COLLECTION:r or COLLECTION:rw")
    if collection != "*" and not COLLECTION_NAME.fullmatch(collection):
        raise TokenError(f"scope {text!r} names no valid collection")
    return Scope(collection, mode == "rw")


RESERVED_NAMES = frozenset({"admin"})


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request."""

    name: str
    admin: bool
    scopes: tuple[Scope, ...] = ()
    token_id: str = "admin"  # noqa: S105 (which token, not a secret: the rate limit keys on it)

    def can_read(self, collection: str) -> bool:
        """Whether the caller may read `collection`."""
        return self.admin or any(s.collection in (collection, "*") for s in self.scopes)

    def can_write(self, collection: str) -> bool:
        """Whether the caller may write `collection`."""
        return self.admin or any(
            s.write and s.collection in (collection, "*") for s in self.scopes
        )


@dataclass(frozen=True, slots=True)
class AppToken:
    """A stored app token: name, scopes, times (Unix seconds) and the secret's SHA-256."""

    token_id: str
    name: str
    scopes: tuple[Scope, ...]
    created_at: float
    expires_at: float | None
    token_hash: bytes

    def __repr__(self) -> str:
        return f"AppToken({self.name!r}, {[str(s) for s in self.scopes]})"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class TokenStore:
    """App tokens kept in the database and mirrored in memory (the node is their only writer)."""

    def __init__(self, db: Database, admin_token: str, clock: Callable[[], float] = time.time):
        self._db = db
        self._admin_hash = _digest(admin_token)
        self._cursor_secret = hmac.digest(admin_token.encode(), b"p2pgate app cursors v1",
                                          "sha256")
        self._clock = clock
        self._apps: dict[str, AppToken] = {}

    async def load(self) -> None:
        """Read the app tokens from the database into memory (call once, before serving)."""
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT token_id, name, scopes, created_at, expires_at, token_hash "
                "FROM app_tokens"
            ).fetchall()
        )
        self._apps = {
            r[0]: AppToken(
                r[0], r[1], tuple(parse_scope(s) for s in json.loads(r[2])),
                r[3] / 1000, None if r[4] is None else r[4] / 1000, bytes(r[5]),
            )
            for r in rows
        }

    def authenticate(self, token: str) -> Principal | None:
        """The principal for `token`, or None if it is unknown, revoked or expired."""
        if hmac.compare_digest(_digest(token), self._admin_hash):
            return Principal("admin", admin=True)
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None
        app = self._apps.get(match[1])
        if app is None or not hmac.compare_digest(_digest(match[2]), app.token_hash):
            return None
        if app.expires_at is not None and self._clock() >= app.expires_at:
            return None
        return Principal(app.name, admin=False, scopes=app.scopes, token_id=f"app:{match[1]}")

    def cursor_view(self, principal: Principal) -> CursorView:
        """How `principal` sees cursors and versions: the admin as they are, each app
        token through its own permutation (see `p2pgate.api.cursors`)."""
        if principal.admin:
            return PLAIN
        return CursorView(hmac.digest(self._cursor_secret, principal.token_id.encode(),
                                      "sha256")[:32])

    def apps(self) -> list[AppToken]:
        """The app tokens, by name."""
        return sorted(self._apps.values(), key=lambda a: a.name)

    async def add(
        self, name: str, scopes: Iterable[str], ttl: float | None = None
    ) -> tuple[AppToken, str]:
        """Create an app token; the plaintext is returned once and never stored."""
        parsed = tuple(parse_scope(s) for s in scopes)
        if not parsed:
            raise TokenError("an app token needs at least one scope")
        if not name or len(name) > 64:
            raise TokenError("an app name has 1 to 64 characters")
        if name.strip().lower() in RESERVED_NAMES:
            raise TokenError(f"{name!r} is reserved; choose another app name")
        if any(a.name == name for a in self._apps.values()):
            raise TokenError(f"an app named {name!r} exists; revoke it first")
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = self._clock()
        app = AppToken(
            token_id, name, parsed, now, None if ttl is None else now + ttl, _digest(secret)
        )

        def _insert(conn: Connection) -> None:
            conn.execute(
                "INSERT INTO app_tokens (token_id, name, token_hash, scopes, created_at, "
                "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    token_id, name, app.token_hash, json.dumps([str(s) for s in parsed]),
                    round(now * 1000),
                    None if app.expires_at is None else round(app.expires_at * 1000),
                ),
            )

        await self._db.write(_insert)
        self._apps[token_id] = app
        return app, f"p2pg_{token_id}_{secret}"

    async def revoke(self, name: str) -> None:
        """Delete the app token named `name`; raises TokenError if there is none."""
        app = next((a for a in self._apps.values() if a.name == name), None)
        if app is None:
            raise TokenError(f"no app named {name!r}")
        await self._db.write(
            lambda c: c.execute("DELETE FROM app_tokens WHERE token_id = ?", (app.token_id,))
        )
        del self._apps[app.token_id]
