"""The node's side of a relay's pairing mailboxes (protocol: `p2pgate.relay.mailbox`).

`hold_box` opens an inviter's box: the relay allocates its nameplate (`"new"`) or
lets us claim the one we show, and the box lives as long as the returned `HeldBox`'s
connection. `HeldBox.next_joiner()` waits for a joiner, `answer(key)` opens the splice
to it. `join_box` is the joiner's side. On a relay that requires a login (its access
is `allowlist` or `token`) both sign in with the device key (and token), as on the
control connection. Every failure is a `RelayUnavailable` whose message says why.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Collection
from typing import Any

import aiohttp

from p2pgate.identity import Identity
from p2pgate.relay.auth import AuthRefused, RelayID, check_relay_proof, login_message
from p2pgate.relay.client import RelayUnavailable, SpliceStream
from p2pgate.urls import canonical_relay_url, relay_base_url, relay_url_id

__all__ = ["HeldBox", "MailboxRefused", "hold_box", "join_box"]

_REASONS = {
    "absent": "nobody is waiting with this code at {url} (the offer is closed, or was "
              "never there)",
    "join_rate": "relay {url}: too many pairing attempts from this network; wait a minute",
    "box_tries": "relay {url}: this network tried this code too often; ask for a new code",
    "ip_mailboxes": "relay {url}: this network holds too many open pairing offers",
    "mailboxes_full": "relay {url}: no pairing mailbox free; try again later",
    "nameplates_full": "relay {url}: no nameplate free; try again later",
    "nameplate_taken": "relay {url}: another offer shows this nameplate there",
    "login_required": "relay {url} serves pairing mailboxes only to its allowed devices",
    "not_allowed": "relay {url} serves pairing mailboxes only to its allowed devices, and "
                   "this device is not one of them",
}


class MailboxRefused(RelayUnavailable):
    """The relay refused a mailbox request; `reason` is its short word for why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _canonical(url: str) -> str:
    try:
        return canonical_relay_url(url)
    except ValueError as exc:
        raise RelayUnavailable(f"relay {url}: {exc}") from None


def _why(reason: str, url: str) -> str:
    if reason.startswith("token_"):
        return (f"relay {url} serves pairing mailboxes only to devices with a valid token "
                f"({reason}); ask its operator for one")
    return _REASONS.get(reason, "relay {url} refused the pairing mailbox: " + reason
                        ).format(url=url)


@contextlib.asynccontextmanager
async def _errors(url: str) -> AsyncIterator[None]:
    try:
        yield
    except (aiohttp.ClientError, aiohttp.WSMessageTypeError, OSError, ValueError) as exc:
        raise RelayUnavailable(f"relay {url}: {exc or type(exc).__name__}") from None


async def _receive(ws: aiohttp.ClientWebSocketResponse, wait: float | None
                   ) -> dict[str, Any]:
    msg = await ws.receive(timeout=wait)
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise ConnectionResetError("the relay closed the mailbox connection")
    data = json.loads(msg.data)
    if not isinstance(data, dict):
        raise ValueError("the relay's answer is not a JSON object")
    return data


async def _open(url: str, request: dict[str, Any], identity: Identity | None,
                token: str | None) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    """A mailbox connection that said hello (proving the relay's key, pinned by the
    URL's `?id=` if it has one) and sent `request` (logged in if asked)."""
    base, pin = relay_base_url(url), relay_url_id(url)
    pinned = RelayID.parse(pin) if pin else None
    challenge = secrets.token_urlsafe(24)
    session = aiohttp.ClientSession()
    try:
        async with _errors(url):
            ws = await session.ws_connect(f"{base}/v1/mailbox?challenge={challenge}",
                                          heartbeat=30, max_msg_size=64 << 10)
            try:
                hello = await _receive(ws, 10)
                if hello.get("t") != "hello":
                    raise ValueError("the relay did not say hello")
                try:
                    relay_key = check_relay_proof(hello, challenge, pinned)
                except AuthRefused as exc:
                    raise ValueError(f"refused: {exc.reason}") from None
                if hello.get("login") and identity is not None:
                    request = {**request, "auth": login_message(
                        identity.cert_der, identity.sign, base, relay_key,
                        str(hello.get("nonce")), time.time(), token)}
                await ws.send_json(request)
            except BaseException:
                await ws.close()
                raise
    except BaseException:
        await session.close()
        raise
    return session, ws


async def _refusal(ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession,
                   data: dict[str, Any], url: str) -> MailboxRefused:
    await ws.close()
    await session.close()
    reason = "absent" if data.get("t") == "absent" else str(data.get("reason", "?"))[:40]
    return MailboxRefused(_why(reason, url), reason)


class HeldBox:
    """An inviter's open box on one relay; it lives until `close()` or the relay ends it."""

    def __init__(self, url: str, session: aiohttp.ClientSession,
                 ws: aiohttp.ClientWebSocketResponse, nameplate: int | None) -> None:
        self.url = url
        self.nameplate = nameplate
        self._session = session
        self._ws = ws

    async def next_joiner(self) -> str:
        """The key of the next joiner, or RelayUnavailable when the box is gone."""
        async with _errors(self.url):
            data = await _receive(self._ws, None)
        if data.get("t") != "joiner" or not isinstance(data.get("key"), str):
            raise RelayUnavailable(f"relay {self.url} closed the pairing box")
        return str(data["key"])[:64]

    async def answer(self, key: str) -> SpliceStream:
        """The splice to the joiner announced with `key`."""
        session, ws = await _open(self.url, {"role": "answer", "key": key}, None, None)
        return await _spliced(self.url, session, ws)

    async def close(self) -> None:
        """Close the box (the relay frees it and its slot at once)."""
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            await self._ws.close()
        await self._session.close()


async def _spliced(url: str, session: aiohttp.ClientSession,
                   ws: aiohttp.ClientWebSocketResponse, wait: float = 15.0) -> SpliceStream:
    try:
        async with _errors(url):
            data = await _receive(ws, wait)
    except BaseException:
        await ws.close()
        await session.close()
        raise
    if data.get("t") != "spliced":
        raise await _refusal(ws, session, data, url)
    return SpliceStream(ws, session, None, url)


async def hold_box(url: str, identity: Identity, token: str | None, *,
                   nameplate: int | str | None, avoid: Collection[int] = (),
                   box: str | None = None, ttl: float | None = None) -> HeldBox:
    """Open an inviter's box at `url`: `nameplate` "new" (the relay allocates one, not in
    `avoid` if it can), a number (claim it), or None (only the URI's `box`)."""
    url = _canonical(url)
    request: dict[str, Any] = {"role": "inviter", "nameplate": nameplate,
                               "avoid": sorted(avoid)[:200], "box": box}
    if ttl is not None:
        request["ttl"] = max(1.0, min(ttl, 3600.0))
    session, ws = await _open(url, request, identity, token)
    try:
        async with _errors(url):
            data = await _receive(ws, 10)
    except BaseException:
        await ws.close()
        await session.close()
        raise
    if data.get("t") != "open":
        raise await _refusal(ws, session, data, url)
    shown = data.get("nameplate")
    return HeldBox(url, session, ws, shown if type(shown) is int else None)


async def join_box(url: str, identity: Identity, token: str | None, *,
                   nameplate: int | None = None, box: str | None = None) -> SpliceStream:
    """The joiner's splice to the inviter holding `nameplate` (a code) or `box` (a URI)."""
    url = _canonical(url)
    request: dict[str, Any] = ({"role": "joiner", "nameplate": nameplate}
                               if nameplate is not None else {"role": "joiner", "box": box})
    session, ws = await _open(url, request, identity, token)
    return await _spliced(url, session, ws)
