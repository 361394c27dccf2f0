"""The `p2pgate` command: offline commands (`init`, `id`, `node`, `relay`) and the ones
that talk to the running node through its API."""

from p2pgate.cli.main import main

__all__ = ["main"]
