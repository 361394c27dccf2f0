"""The node's access tokens for relays, and what each of its relays thinks of us.

Tokens come from `[relay_tokens]` in config.toml and from the admin API (`p2pgate
relay-token set URL TOKEN`), which keeps them in the encrypted store; a token
handed over through the API wins over the config file's. Every URL is canonical
(`p2pgate.urls`), so `http://relay:80/` and `ws://relay` name the same relay.
Tokens are never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from p2pgate.errors import LocalProtocolError
from p2pgate.relay.access_tokens import token_expiry
from p2pgate.relay.client import RelayClient
from p2pgate.relay.stun_probe import StunState
from p2pgate.storage.database import Database
from p2pgate.storage.relay_tokens import relay_tokens, store_relay_token
from p2pgate.urls import relay_base_url

__all__ = ["RelayAccess", "RelayStatus", "UnknownRelay"]

log = logging.getLogger("p2pgate.relay.access")


class UnknownRelay(LocalProtocolError):
    """A token for a relay that is not one of this node's relays."""


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """One of our relays: logged in or not, why it refused us, our token's expiry, and
    whether its STUN port answered our last probe (and where it saw us)."""

    url: str
    logged_in: bool
    has_token: bool
    token_expires_at: int | None
    refusal: str | None
    stun_address: str | None = None
    stun: StunState | None = None  # "ok", "failed", "unknown"; None: the relay runs no STUN
    reflexive_address: str | None = None


class RelayAccess:
    """Tokens for the node's relays (config.toml and stored ones) and their clients."""

    def __init__(self, db: Database, tokens: Mapping[str, str]) -> None:
        self._db = db
        self._tokens = dict(tokens)
        self._clients: dict[str, RelayClient] = {}

    @classmethod
    async def open(cls, db: Database, configured: Mapping[str, str]) -> RelayAccess:
        """The tokens of config.toml (`configured`) overlaid by those stored in `db`."""
        return cls(db, {**configured, **await relay_tokens(db)})

    def token_for(self, url: str) -> str | None:
        """Our access token for relay `url` (any spelling), or None."""
        try:
            return self._tokens.get(relay_base_url(url))
        except ValueError:
            return None

    def attach(self, clients: Sequence[RelayClient]) -> None:
        """The node's own relay clients, which `set_token` reconnects."""
        self._clients = {client.url: client for client in clients}

    async def set_token(self, url: str, token: str) -> RelayStatus:
        """Keep `token` for our relay `url` and log in with it at once.

        ValueError for a URL that is not a relay URL; UnknownRelay for one that is not
        one of ours.
        """
        canonical = relay_base_url(url)
        client = self._clients.get(canonical)
        if client is None:
            raise UnknownRelay(f"{canonical} is not one of this node's relays "
                               "(add it to relays in config.toml or pass --relay)")
        await store_relay_token(self._db, canonical, token)
        self._tokens[canonical] = token
        await client.set_token(token)
        expiry = token_expiry(token)
        shown = "?" if expiry is None else f"{datetime.fromtimestamp(expiry, UTC):%Y-%m-%d %H:%M}"
        log.info("relay %s: new access token handed over (expires %s UTC)", canonical, shown)
        return self.status_of(client)

    def status_of(self, client: RelayClient) -> RelayStatus:
        """What `client`'s relay thinks of us right now."""
        token = self._tokens.get(client.url)
        return RelayStatus(client.url, client.connected, token is not None,
                           token_expiry(token) if token else None, client.refusal,
                           client.stun.address, client.stun.state, client.stun.reflexive)

    def statuses(self) -> list[RelayStatus]:
        """Every one of our relays, in configuration order."""
        return [self.status_of(client) for client in self._clients.values()]
