"""The `p2pgate` command line.

`init`, `id`, `node` and `relay` work offline; every other command talks to the
running node through its local API. Errors are one line on stderr and a non-zero
exit status; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from p2pgate import __version__
from p2pgate.errors import P2PGateError
from p2pgate.identity import Identity
from p2pgate.paths import resolve_data_dir
from p2pgate.relay.cli import add_relay_command
from p2pgate.setup import initialise

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
    data_dir = resolve_data_dir(args.data_dir)
    result = initialise(data_dir)
    print(f"Device ID: {result.identity.device_id}")
    print(f"Name:      {result.name}")
    print(f"Data dir:  {data_dir.root} (identity and encrypted store ready)")
    print(
        "Not built yet: the local API, peer sessions, pairing, discovery and relays. "
        "This node has nothing to serve, so it stops here."
    )
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
    p.set_defaults(func=_cmd_node)

    add_relay_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
