"""An async Python client for a node's local API.

    async with Client("http://127.0.0.1:8771", token) as node:
        await node.put("notes", "n1", {"title": "Hello"})
        async for event in node.events():
            ...

Errors from the node raise `ClientError` with its status, code and request ID.
`events()` reconnects after a dropped connection and resumes from the last cursor.
Document IDs are sent in NFC, as the node stores them. Cursors and versions an app
token gets are its own: hand them back with the same token.
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel

from p2pgate.api import models as m
from p2pgate.errors import P2PGateError

__all__ = ["Client", "ClientError", "NodeUnreachable"]

M = TypeVar("M", bound=BaseModel)

KEEPALIVE = 5.0  # below the node's 10 s, so an idle connection is never reused as it closes


class ClientError(P2PGateError):
    """The node answered with an error."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None) -> None:
        super().__init__(message)
        self.status, self.code, self.request_id = status, code, request_id


class NodeUnreachable(P2PGateError):
    """No node answers at the API address."""


class Client:
    """An async client of one node's API; use it with `async with`, or call `close()`."""

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_admin(cls, base_url: str, token_file: Path) -> Client:
        """A client with the admin token read from `token_file`."""
        return cls(base_url, token_file.read_text().strip())

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (a later call opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session, opened on first use with the bearer token."""
        if self._session is None:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=self._timeout,
                connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE))
        return self._session

    async def request(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """One API call: (status, JSON body or None, headers); ClientError or NodeUnreachable."""
        data = None if body is None else json.dumps(body)
        hdrs = {"Content-Type": "application/json", **(headers or {})} if data else headers
        try:
            async with self.session.request(
                method, self.base_url + path, data=data, headers=hdrs, params=params
            ) as resp:
                raw = await resp.read()
                payload = json.loads(raw) if raw else None
                if resp.status >= 400:
                    err = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
                    raise ClientError(resp.status, err.get("code", "http_error"),
                                      err.get("message", resp.reason or ""),
                                      err.get("request_id"))
                return resp.status, payload, dict(resp.headers)
        except aiohttp.ClientConnectionError as exc:
            raise NodeUnreachable(f"no node answers at {self.base_url} ({exc})") from None

    async def _model(self, model: type[M], method: str, path: str, body: Any = None,
                     **kw: Any) -> M:
        _, payload, _ = await self.request(method, path, body, **kw)
        return model.model_validate(payload)

    # -- node ------------------------------------------------------------------------

    async def health(self) -> m.Health:
        """Check that the node is up."""
        return await self._model(m.Health, "GET", "/api/v1/health")

    async def node(self) -> m.NodeInfo:
        """The node's identity, API address, event cursor and garbage collection counts
        (admin token; an app token gets ClientError 403)."""
        return await self._model(m.NodeInfo, "GET", "/api/v1/node")

    # -- documents -------------------------------------------------------------------

    async def declare(self, collection: str, fields: dict[str, str]) -> dict[str, str]:
        """Declare field types of a collection; returns all of them (409 if one would change)."""
        result = await self._model(m.CollectionFields, "PUT", f"/api/v1/collections/{collection}",
                                   {"fields": fields})
        return dict(result.fields)

    async def get(self, collection: str, doc_id: str) -> m.Document:
        """The document; ClientError 404 if it does not exist or is deleted."""
        return await self._model(m.Document, "GET", _doc(collection, doc_id))

    async def put(self, collection: str, doc_id: str, data: dict[str, Any],
                  if_match: str | None = None) -> m.Document:
        """Create or replace a document; with `if_match`, only at that version (412 otherwise)."""
        return await self._model(m.Document, "PUT", _doc(collection, doc_id), data,
                                 headers=_match(if_match))

    async def patch(self, collection: str, doc_id: str, patch: dict[str, Any],
                    if_match: str | None = None) -> m.Document:
        """Merge-patch an existing document; `if_match` as for `put`."""
        return await self._model(m.Document, "PATCH", _doc(collection, doc_id), patch,
                                 headers=_match(if_match))

    async def delete(self, collection: str, doc_id: str, if_match: str | None = None
                     ) -> m.Document:
        """Delete a document; `if_match` as for `put`."""
        return await self._model(m.Document, "DELETE", _doc(collection, doc_id),
                                 headers=_match(if_match))

    async def list_docs(self, collection: str, *, limit: int = 100, after: str | None = None,
                   since: int | None = None) -> m.DocumentList:
        """A page of visible documents by ID, after ID `after` and changed after cursor `since`."""
        params = {"limit": str(limit)}
        if after is not None:
            params["after"] = unicodedata.normalize("NFC", after)
        if since is not None:
            params["since"] = str(since)
        return await self._model(m.DocumentList, "GET",
                                 f"/api/v1/collections/{collection}/docs", params=params)

    async def conflicts(self, collection: str, doc_id: str) -> m.Conflicts:
        """Each `lww` field's last losing concurrent write."""
        return await self._model(m.Conflicts, "GET", _doc(collection, doc_id) + "/conflicts")

    async def events(self, cursor: int | None = None, *, retry: float = 0.5
                     ) -> AsyncIterator[m.Event]:
        """Every change after `cursor` (default: from now), forever; resumes after drops."""
        while True:
            try:
                async with self.session.ws_connect(
                    self.base_url + "/api/v1/events", protocols=("p2pgate.v1",),
                    params=None if cursor is None else {"cursor": str(cursor)},
                    heartbeat=20,
                ) as ws:
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        event = m.Event.model_validate_json(msg.data)
                        cursor = event.cursor
                        yield event
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (401, 403):
                    raise ClientError(exc.status, "unauthorized", exc.message, None) from None
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(retry)

    # -- admin -----------------------------------------------------------------------

    async def add_app(self, name: str, scopes: list[str], ttl: float | None = None
                      ) -> m.AppCreated:
        """Create an app token for `scopes`, valid `ttl` seconds (None: no expiry), shown once."""
        return await self._model(m.AppCreated, "POST", "/api/v1/apps",
                                 {"name": name, "scopes": scopes, "ttl": ttl})

    async def apps(self) -> m.AppList:
        """The app tokens (never the tokens themselves)."""
        return await self._model(m.AppList, "GET", "/api/v1/apps")

    async def revoke_app(self, name: str) -> None:
        """Revoke the app token named `name`."""
        await self.request("DELETE", f"/api/v1/apps/{name}")

    async def devices(self) -> m.DeviceList:
        """The devices the node knows."""
        return await self._model(m.DeviceList, "GET", "/api/v1/devices")

    async def device_action(self, device_id: str, action: str, name: str | None = None
                            ) -> m.DeviceInfo:
        """Rename (with `name`), block, unblock or revoke a device; returns it as it now is."""
        body = {"name": name} if action == "rename" else None
        return await self._model(m.DeviceInfo, "POST", f"/api/v1/devices/{device_id}/{action}",
                                 body)

    async def pair(self, ttl: float = 300.0, repair: bool = False) -> m.PairingOffer:
        """Open a pairing offer valid for `ttl` seconds; `repair` allows a revoked device again."""
        return await self._model(m.PairingOffer, "POST", "/api/v1/pairing",
                                 {"ttl": ttl, "repair": repair})

    async def pairing_status(self, code: str) -> m.PairingStatus:
        """Where the pairing offer of `code` stands."""
        nameplate = code.split("-")[0]
        return await self._model(m.PairingStatus, "GET", f"/api/v1/pairing/{nameplate}")

    async def join(self, code_or_uri: str, address: str | None = None) -> m.PairingStatus:
        """Pair with the device showing this code or URI, at `address` (HOST:PORT) if known."""
        key = "uri" if code_or_uri.strip().lower().startswith("p2pgate://") else "code"
        return await self._model(m.PairingStatus, "POST", "/api/v1/pairing/join",
                                 {key: code_or_uri, "address": address})

    async def peers(self) -> m.PeerList:
        """The peers connected now."""
        return await self._model(m.PeerList, "GET", "/api/v1/peers")

    async def relays(self) -> m.RelayList:
        """The node's relays: logged in or not, and when our access tokens expire."""
        return await self._model(m.RelayList, "GET", "/api/v1/relays")

    async def set_relay_token(self, url: str, token: str) -> m.RelayInfo:
        """Hand the node an access token for its relay `url`; it logs in again at once."""
        return await self._model(m.RelayInfo, "PUT", "/api/v1/relays/token",
                                 {"url": url, "token": token})

    async def policies(self) -> m.PolicyList:
        """The sync policies set for devices."""
        return await self._model(m.PolicyList, "GET", "/api/v1/policies")

    async def set_policy(self, device_id: str, collection: str, mode: str,
                         filter: dict[str, Any] | None = None) -> m.Policy:
        """Set how `collection` syncs with a device: its mode and optional document filter."""
        return await self._model(m.Policy, "PUT", f"/api/v1/policies/{device_id}/{collection}",
                                 {"mode": mode, "filter": filter})


def _doc(collection: str, doc_id: str) -> str:
    from urllib.parse import quote

    doc_id = unicodedata.normalize("NFC", doc_id)
    return f"/api/v1/collections/{quote(collection, safe='')}/docs/{quote(doc_id, safe='')}"


def _match(version: str | None) -> dict[str, str] | None:
    return None if version is None else {"If-Match": f'"{version}"'}
