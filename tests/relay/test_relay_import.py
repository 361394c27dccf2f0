"""The relay's cores load no I/O, and the relay server stays below the API layer."""

import ast
import subprocess
import sys
from pathlib import Path

import p2pgate

CORES = ("p2pgate.relay.broker", "p2pgate.relay.rendezvous", "p2pgate.relay.limits",
         "p2pgate.relay.auth", "p2pgate.ratelimit")


def _loaded_after(imports: str, modules: tuple[str, ...]) -> list[str]:
    code = (f"import sys\nimport {imports}\n"
            f"print(','.join(m for m in {modules!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return [m for m in result.stdout.strip().split(",") if m]


def test_relay_cores_load_no_io_modules():
    assert _loaded_after(", ".join(CORES), ("asyncio", "aiohttp", "socket", "ssl")) == []


def test_relay_cores_read_no_clock():
    """`time` is always loaded by the interpreter, so look at what the cores import."""
    root = Path(p2pgate.__file__).parent.parent
    for core in CORES:
        tree = ast.parse((root / (core.replace(".", "/") + ".py")).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom)}
        assert not imported & {"time", "asyncio", "aiohttp", "socket", "ssl"}, core


def test_relay_server_and_client_do_not_import_the_api_or_each_other():
    assert _loaded_after("p2pgate.relay.server", ("p2pgate.api", "p2pgate.relay.client",
                                                  "p2pgate.pairing")) == []
    assert _loaded_after("p2pgate.relay.client", ("p2pgate.api", "p2pgate.relay.server",
                                                  "p2pgate.relay.splicing")) == []
