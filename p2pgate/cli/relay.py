"""`p2pgate relay`: run a relay, make a token-signing key, issue access tokens."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pgate.cli.logs import setup_logging
from p2pgate.errors import LocalProtocolError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.identity.files import read_secret, write_secret
from p2pgate.identity.paths import resolve_data_dir
from p2pgate.relay.access_tokens import MAX_TTL, issue_token, key_id, public_key_text
from p2pgate.relay.config import RelayConfig, load_relay_config
from p2pgate.relay.relay_key import RelayKey
from p2pgate.relay.server import RelayServer

__all__ = ["add_relay_command"]

log = logging.getLogger("p2pgate.relay")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not match:
        raise LocalProtocolError(f"bad duration {text!r}; use e.g. 3600, 90m, 12h or 7d")
    seconds = int(match[1]) * _UNITS[match[2] or "s"]
    if not 0 < seconds <= MAX_TTL:
        raise LocalProtocolError("a token lives at most 30 days")
    return seconds


def _keygen(args: argparse.Namespace) -> int:
    path = Path(args.key)
    if path.exists():
        raise LocalProtocolError(f"{path} exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    write_secret(path, key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    pub = key.public_key()
    print(f"Signing key written to {path} (keep it off the relays).")
    print("Add this to every relay's config:")
    print('access = "token"')
    print(f'token_keys = {{ "{key_id(pub)}" = "{public_key_text(pub)}" }}')
    return 0


def _token(args: argparse.Namespace) -> int:
    if not args.device:
        raise LocalProtocolError("relay token needs --device ID")
    loaded = serialization.load_pem_private_key(read_secret(Path(args.key)), None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise LocalProtocolError(f"{args.key} is not an Ed25519 key")
    device = DeviceID.parse(args.device)
    print(issue_token(loaded, device, args.audience, parse_duration(args.ttl), time.time()))
    return 0


def _urls_to_give(config: RelayConfig, key: RelayKey, port: int) -> str:
    """The relay URL(s) devices should use, each pinning this relay's ID."""
    pin = f"?id={key.relay_id}"
    if config.public_url is not None:
        return config.public_url + pin
    host = config.listen[0]
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (naming the wildcard, not binding it)
        return (f"ws://THIS-HOST-IP:{port}{pin} (a host name needs public_url in the "
                "config)")
    shown = f"[{host}]" if ":" in host else host
    return f"ws://{shown}:{port}{pin}"


async def _serve(config_path: Path | None, overrides: dict[str, Any]) -> None:
    config = load_relay_config(config_path, overrides)
    key = RelayKey.load_or_create(resolve_data_dir(config.data_dir))
    server = RelayServer(config, key)
    runner = web.AppRunner(server.application(), access_log=None, shutdown_timeout=5)
    await runner.setup()
    host, port = config.listen
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    await server.start_stun()
    print(f"p2pgate relay listening on {host}:{bound} (access: {config.access})")
    stun_host = config.stun_host or host
    if server.stun is not None:
        print(f"STUN on UDP {stun_host}:{server.stun.port}")
    else:
        print("STUN: off" if not config.stun_port else
              f"STUN: off (UDP {stun_host}:{config.stun_port} could not be bound)")
    print(f"relay ID: {key.relay_id}", flush=True)
    log.info("devices use: --relay %s", _urls_to_give(config, key, bound))
    dht = None
    if config.dht_port is not None:  # a DHT bootstrap node beside the relay
        from p2pgate.discovery.dht.node import DhtNode

        dht = DhtNode()
        await dht.listen(config.dht_port, interface=host)
        log.info("DHT bootstrap node on UDP %s:%d", host, config.dht_port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def _reload() -> None:
        try:
            server.reload(load_relay_config(config_path, overrides))
        except LocalProtocolError as exc:
            log.error("config reload failed, keeping the old one: %s", exc)

    loop.add_signal_handler(signal.SIGHUP, _reload)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("draining (up to %.0f s)", server.config.drain_timeout)
        await server.drain()
    finally:
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if dht is not None:
            dht.stop()
        await runner.cleanup()
        log.info("relay stopped")


def _relay(args: argparse.Namespace) -> int:
    if args.action == "keygen":
        return _keygen(args)
    if args.action == "token":
        return _token(args)
    config_path = Path(args.config) if args.config else None
    overrides = {"listen": args.listen, "dht_port": args.dht_port, "data_dir": args.data_dir,
                 "stun_port": args.stun_port}
    config = load_relay_config(config_path, overrides)  # a bad config fails before start
    RelayKey.load_or_create(resolve_data_dir(config.data_dir))  # ...and so does a bad key
    setup_logging("json" if args.log_json else "human", args.debug)
    asyncio.run(_serve(config_path, overrides))
    return 0


def add_relay_command(sub: Any) -> None:
    """Add the `relay` subcommand (serve, keygen, token) to `sub`, an argparse subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "relay", help="run a relay server, or make relay signing keys and access tokens")
    p.add_argument("action", nargs="?", default="serve", choices=["serve", "keygen", "token"])
    p.add_argument("--listen", help="HOST:PORT to serve on (default 0.0.0.0:8443)")
    p.add_argument("--config", help="relay config file (TOML)")
    p.add_argument("--data-dir", default=argparse.SUPPRESS,  # (also before `relay`)
                   help="where the relay's key (relay.key, its relay ID) lives (default: "
                   "data_dir in the config, else $P2PGATE_HOME, else the user data dir)")
    p.add_argument("--dht-port", type=int, help="also run a DHT bootstrap node on this UDP port")
    p.add_argument("--stun-port", type=int, help="UDP port answering STUN Binding requests "
                   "(default 3478; 0 = off)")
    p.add_argument("--log-json", action="store_true", help="log JSON lines")
    p.add_argument("--key", default="relay-signing.key",
                   help="signing key file (keygen, token)")
    p.add_argument("--device", help="device ID the token is for (token)")
    p.add_argument("--ttl", default="7d", help="token lifetime, e.g. 12h or 30d (token)")
    p.add_argument("--audience", default="p2pgate", help="fleet name (token)")
    p.set_defaults(func=_relay)
