"""The relay server stays below the API layer, and the client and server apart
(the cores' I/O-free import is checked in tests/test_cores.py)."""

import subprocess
import sys


def _loaded_after(imports: str, modules: tuple[str, ...]) -> list[str]:
    code = (f"import sys\nimport {imports}\n"
            f"print(','.join(m for m in {modules!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return [m for m in result.stdout.strip().split(",") if m]


def test_relay_server_and_client_do_not_import_the_api_or_each_other():
    assert _loaded_after("p2pgate.relay.server", ("p2pgate.api", "p2pgate.relay.client",
                                                  "p2pgate.pairing")) == []
    assert _loaded_after("p2pgate.relay.client", ("p2pgate.api", "p2pgate.relay.server",
                                                  "p2pgate.relay.splicing")) == []
