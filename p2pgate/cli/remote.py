"""CLI commands that talk to the running node through its API with the admin token."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import segno
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from p2pgate.api import models as m
from p2pgate.client import Client, ClientError, NodeUnreachable
from p2pgate.config import load_config
from p2pgate.errors import P2PGateError
from p2pgate.identity.paths import DataDir, resolve_data_dir, runtime_file

__all__ = ["add_remote_commands"]


class CommandError(P2PGateError):
    pass


def _api_url(data_dir: DataDir) -> str:
    try:
        return str(json.loads(runtime_file(data_dir).read_text())["api_url"])
    except (FileNotFoundError, ValueError, KeyError):
        return load_config(data_dir.config).api_url


def _run(args: argparse.Namespace, action: Callable[[Client], Awaitable[Any]]) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    if not data_dir.admin_token.exists():
        raise CommandError(f"no node data in {data_dir.root} (run `p2pgate init`)")

    async def _go() -> Any:
        async with Client.for_admin(_api_url(data_dir), data_dir.admin_token) as client:
            return await action(client)

    try:
        result = asyncio.run(_go())
    except NodeUnreachable:
        raise CommandError("no node is running (start one with `p2pgate node`)") from None
    except ClientError as exc:
        raise CommandError(f"{exc} [{exc.code}]") from None
    if args.json:
        payload = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
        print(json.dumps(payload, indent=2))
    elif result is not None:
        Console().print(result)
    return 0


def _progress(backlog: int, total: int, width: int = 20) -> str:
    """A text progress bar of what the peer already holds of our changes."""
    done = 1.0 if total == 0 else (total - backlog) / total
    filled = round(done * width)
    label = "synced" if backlog == 0 else f"{backlog} to send"
    return f"{'█' * filled}{'░' * (width - filled)} {done:4.0%} {label}"


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    return table


def _status(args: argparse.Namespace) -> int:
    async def action(c: Client) -> Any:
        info, peers, relays = await c.node(), await c.peers(), await c.relays()
        if args.json:
            return {"node": info.model_dump(), "peers": peers.items,
                    "relays": relays.model_dump()["items"]}
        lines = [
            f"[bold]{info.name}[/bold]  {info.device_id}",
            f"API {info.api_url}   p2pgate {info.version}   cursor {info.cursor}",
            *(_relay_line(r) for r in relays.items),
        ]
        if not peers.items:
            lines.append("No peers connected.")
            return "\n".join(lines)
        table = _table("Peers", ["name", "id", "path", "address", "rtt", "sync", "last move"], [
            [p["name"], p["device_id"][:7],
             p["path"] + (" (suspect)" if p.get("suspect") else ""), p["address"],
             "" if p.get("rtt_ms") is None else f"{p['rtt_ms']:.1f} ms",
             _progress(p.get("backlog", 0), p.get("changes", 0)), _move(p.get("last_move"))]
            for p in peers.items
        ])
        console = Console()
        console.print("\n".join(lines))
        return table

    return _run(args, action)


def _move(move: dict[str, Any] | None) -> str:
    """A peer's last move between paths: "direct → relay 14:02:31 (suspect path)"."""
    if not move:
        return ""
    at = datetime.fromtimestamp(move["at"]).strftime("%H:%M:%S")
    return f"{move['from']} → {move['to']} {at} ({move['why']})"


def _relay_line(relay: m.RelayInfo) -> str:
    """One relay in `status`: logged in or why not, when our token expires, and whether
    its STUN server answered our probe."""
    state = "logged in" if relay.logged_in else (
        f"not logged in ({relay.refusal})" if relay.refusal else "not logged in")
    if relay.token_expires_at is not None:
        expiry = datetime.fromtimestamp(relay.token_expires_at, UTC)
        state += f", token expires {expiry:%Y-%m-%d %H:%M} UTC"
    elif not relay.has_token:
        state += ", no token"
    if relay.stun == "ok":
        state += f", STUN answers (it sees us at {relay.reflexive_address})"
    elif relay.stun == "failed":
        state += ", STUN does not answer (WebRTC uses host candidates only)"
    return f"Relay {relay.url}: {state}"


def _relay_token(args: argparse.Namespace) -> int:
    async def action(c: Client) -> Any:
        from_stdin = args.token == "-"  # noqa: S105 (the stdin marker, not a secret)
        token = sys.stdin.readline().strip() if from_stdin else args.token
        relay = await c.set_relay_token(args.url, token)
        if args.json:
            return relay
        expiry = "" if relay.token_expires_at is None else (
            f" (expires {datetime.fromtimestamp(relay.token_expires_at, UTC):%Y-%m-%d %H:%M} "
            "UTC)")
        return f"Token for relay {relay.url} handed to the node{expiry}; it logs in again now."

    return _run(args, action)


def _devices(args: argparse.Namespace) -> int:
    async def action(c: Client) -> Any:
        if args.action == "list":
            devices = await c.devices()
            if args.json:
                return devices
            return _table("Devices", ["name", "id", "state", "last seen"], [
                [d.name, d.short_id, d.state, d.last_seen] for d in devices.items
            ])
        if not args.device:
            raise CommandError(f"devices {args.action} needs a device ID")
        if args.action == "rename" and not args.name:
            raise CommandError("devices rename needs a new name")
        device = await c.device_action(args.device, args.action, args.name)
        return device if args.json else f"{device.name} ({device.short_id}) is {device.state}"

    return _run(args, action)


def _app(args: argparse.Namespace) -> int:
    async def action(c: Client) -> Any:
        if args.action == "add":
            if not args.name or not args.scope:
                raise CommandError("usage: p2pgate app add NAME --scope COLLECTION:r|rw ...")
            created = await c.add_app(args.name, args.scope, args.ttl)
            if args.json:
                return created
            return (f"App token for {created.name} ({', '.join(created.scopes)}), "
                    f"shown once:\n{created.token}")
        if args.action == "revoke":
            if not args.name:
                raise CommandError("usage: p2pgate app revoke NAME")
            await c.revoke_app(args.name)
            return {"revoked": args.name} if args.json else f"Revoked {args.name}."
        apps = await c.apps()
        if args.json:
            return apps
        return _table("Apps", ["name", "scopes", "expires"], [
            [a.name, " ".join(a.scopes), a.expires_at or "never"] for a in apps.items
        ])

    return _run(args, action)


def _policy(args: argparse.Namespace) -> int:
    async def action(c: Client) -> Any:
        if args.action == "set":
            if not (args.device and args.collection and args.mode):
                raise CommandError("usage: p2pgate policy set DEVICE COLLECTION MODE")
            flt = json.loads(args.filter) if args.filter else None
            return await c.set_policy(args.device, args.collection, args.mode, flt)
        policies = await c.policies()
        if args.json:
            return policies
        return _table("Policies", ["device", "collection", "mode", "filter"], [
            [p.device_id[:7], p.collection, p.mode, p.filter] for p in policies.items
        ])

    return _run(args, action)


def _pair(args: argparse.Namespace) -> int:
    async def action(c: Client) -> Any:
        offer = await c.pair(args.ttl, args.repair)
        if not args.json:
            qr = segno.make(offer.uri, error="m")
            out = io.StringIO()
            qr.terminal(out=out, compact=True)
            print(f"Pairing code:  {offer.code}\n")
            print(out.getvalue())
            print(f"or this URI:   {offer.uri}")
            print("On the other device run:  p2pgate join CODE-OR-URI", flush=True)
        while True:  # the node's API has no push for this; poll it
            status = await c.pairing_status(offer.code)
            if status.state != "waiting":
                break
            await asyncio.sleep(0.5)
        if status.state != "paired":
            raise CommandError(f"pairing {status.state}: {status.reason or 'no device joined'}")
        if args.json:
            return status
        return (f"Paired with {status.name} ({status.device_id}).\n"
                f"Verification: {status.verification} (the other device shows the same)")

    return _run(args, action)


def _join(args: argparse.Namespace) -> int:
    async def action(c: Client) -> Any:
        status = await c.join(args.code, args.address)
        if args.json:
            return status
        return (f"Paired with {status.name} ({status.device_id}).\n"
                f"Verification: {status.verification} (the other device shows the same)")

    return _run(args, action)


def add_remote_commands(sub: Any) -> None:
    """Add the subcommands that talk to a running node's API to `sub`, an argparse subparsers."""
    def add(name: str, help_text: str, func: Callable[[argparse.Namespace], int]
            ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        return p

    add("status", "show the running node and its peers", _status)

    p = add("pair", "show a pairing code and QR code, wait for the other device", _pair)
    p.add_argument("--ttl", type=float, default=300.0, help="seconds the code stays valid")
    p.add_argument("--repair", action="store_true", help="pair again with a revoked device")

    p = add("join", "pair with a device that shows a code or QR code", _join)
    p.add_argument("code", metavar="CODE|URI")
    p.add_argument("--address", help="HOST:PORT of the other device (if the code has none)")

    p = add("relay-token", "hand the running node an access token for one of its relays",
            _relay_token)
    p.add_argument("action", choices=["set"])
    p.add_argument("url", metavar="URL", help="the relay's URL, as in config.toml or --relay")
    p.add_argument("token", metavar="TOKEN",
                   help="the token its operator made (p2pgate relay token --device ID); "
                   "- reads it from stdin")

    p = add("devices", "list, rename, block, unblock or revoke devices", _devices)
    p.add_argument("action", nargs="?", default="list",
                   choices=["list", "rename", "block", "unblock", "revoke"])
    p.add_argument("device", nargs="?", help="device ID (forgiving: case, dashes, spaces)")
    p.add_argument("name", nargs="?", help="new name (rename)")

    p = add("app", "manage app tokens", _app)
    p.add_argument("action", nargs="?", default="list", choices=["add", "list", "revoke"])
    p.add_argument("name", nargs="?")
    p.add_argument("--scope", action="append", help="COLLECTION:r or COLLECTION:rw (repeat)")
    p.add_argument("--ttl", type=float, help="lifetime in seconds")

    p = add("policy", "show or set per-device sync policies", _policy)
    p.add_argument("action", nargs="?", default="list", choices=["list", "set"])
    p.add_argument("device", nargs="?")
    p.add_argument("collection", nargs="?")
    p.add_argument("mode", nargs="?", choices=["both", "send", "receive", "none"])
    p.add_argument("--filter", help="document filter as JSON")
