"""Every sans-I/O core loads no I/O module and reads no clock (one check for all).

A core is loaded by its file in a fresh interpreter, so that its package's adapters
(`__init__` may import them) are not counted against it; `[tool.importlinter]`'s
"Sans-I/O cores" contract holds the same line statically.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO = ("asyncio", "aiohttp", "socket", "ssl", "libsql", "zeroconf", "kademlia")
CORES = [
    "p2pgate/pairing/offers.py", "p2pgate/pairing/handshake.py", "p2pgate/pairing/wire.py",
    "p2pgate/relay/broker.py", "p2pgate/relay/rendezvous.py", "p2pgate/relay/limits.py",
    "p2pgate/relay/auth.py", "p2pgate/relay/refusals.py", "p2pgate/relay/wire.py",
    "p2pgate/relay/stun.py", "p2pgate/relay/stun_probe.py",
    "p2pgate/connect/core.py", "p2pgate/documents/driver.py", "p2pgate/documents/fairqueue.py",
    "p2pgate/discovery/refresh.py", "p2pgate/net/frames.py", "p2pgate/net/admission.py",
    "p2pgate/net/rtc_signal.py", "p2pgate/ratelimit.py", "p2pgate/urls.py",
]


def loaded_by(path: str) -> list[str]:
    """I/O modules in `sys.modules` after loading the file at `path` alone."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('core_under_test', {path!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['core_under_test'] = module\n"
        "spec.loader.exec_module(module)\n"
        f"print(','.join(m for m in {IO!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return [m for m in out.stdout.strip().split(",") if m]


@pytest.mark.parametrize("core", CORES)
def test_a_core_loads_no_io_and_reads_no_clock(core):
    assert loaded_by(str(ROOT / core)) == []
    tree = ast.parse((ROOT / core).read_text())  # `time` is always loaded: read the imports
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert not imported & {"time", *IO}, core


def test_importing_sync_loads_no_io():
    code = ("import sys, sync, sync.replica, sync.session, sync.codec, sync.storage\n"
            f"print(','.join(m for m in {(*IO, 'sqlite3', 'p2pgate', 'pycrdt')!r}"
            " if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
