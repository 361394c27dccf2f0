"""The `p2pgate` command line.

`init`, `id`, `node` and `relay` work offline; every other command talks to the
running node through its local API. Errors are one line on stderr and a non-zero
exit status; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from p2pgate import __version__
from p2pgate.cli.firstrun import initialise
from p2pgate.cli.logs import setup_logging
from p2pgate.cli.relay import add_relay_command
from p2pgate.cli.remote import add_remote_commands
from p2pgate.config import load_config
from p2pgate.errors import P2PGateError
from p2pgate.identity import Identity
from p2pgate.identity.paths import resolve_data_dir

__all__ = ["main"]


def _cmd_init(args: argparse.Namespace) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    result = initialise(data_dir, args.name)
    verb = "Created" if result.created else "Already initialised"
    print(f"{verb}: {data_dir.root}")
    print(f"Device ID: {result.identity.device_id}")
    print(f"Name:      {result.name}")
    return 0


def _cmd_id(args: argparse.Namespace) -> int:
    print(Identity.load(resolve_data_dir(args.data_dir)).device_id)
    return 0


def _cmd_node(args: argparse.Namespace) -> int:
    from p2pgate.node import Node

    data_dir = resolve_data_dir(args.data_dir)
    config = load_config(data_dir.config, {
        "api": args.api, "listen": args.listen, "relays": args.relay or None,
        "bootstrap": args.bootstrap or None, "mdns": False if args.no_mdns else None,
        "dht": False if args.no_dht else None, "log_format": "json" if args.log_json else None,
    })
    setup_logging(config.log_format, args.debug)
    result = initialise(data_dir, config.name)
    node = Node(data_dir, config, result.identity, result.name)

    async def _serve() -> None:
        await node.start()
        print(f"p2pgate node {result.name!r} is running.", flush=True)
        print(f"  Device ID: {result.identity.device_id}")
        print(f"  API:       {node.api_url}  (admin token in {data_dir.admin_token})")
        print("  Next: give an app a token with "
              "`p2pgate app add NAME --scope COLLECTION:rw`; stop with Ctrl-C.", flush=True)
        await node.serve_until_stopped()

    asyncio.run(_serve())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pgate", description="Peer-to-peer device gateway.")
    parser.add_argument("--version", action="version", version=f"p2pgate {__version__}")
    parser.add_argument(
        "--data-dir", help="data directory (default: $P2PGATE_HOME, else the user data dir)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create this device's identity and store")
    p.add_argument("--name", help="a name for this device, shown to paired devices")
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("id", help="print this device's ID")
    p.set_defaults(func=_cmd_id)

    p = sub.add_parser("node", help="run the node in the foreground")
    p.add_argument("--api", help="local API address HOST:PORT (default 127.0.0.1:8771)")
    p.add_argument("--listen", help="P2P listen address HOST:PORT (default 0.0.0.0:7771)")
    p.add_argument("--relay", action="append", metavar="URL", help="relay URL (repeatable)")
    p.add_argument("--bootstrap", action="append", metavar="HOST:PORT",
                   help="DHT bootstrap node (repeatable)")
    p.add_argument("--no-mdns", action="store_true", help="no LAN discovery")
    p.add_argument("--no-dht", action="store_true", help="no DHT")
    p.add_argument("--log-json", action="store_true", help="log JSON lines")
    p.set_defaults(func=_cmd_node)

    add_relay_command(sub)
    add_remote_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on `argv` (default: sys.argv); the exit status, 1 on our errors, 130 on ^C."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except P2PGateError as exc:
        if args.debug:
            raise
        print(f"p2pgate: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
