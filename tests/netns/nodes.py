"""Driving running nodes from inside their namespaces: the one helper for a set of
devices (their API through `tests.programs`, and the `p2pgate` CLI)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.lab import wait_for


class Devices:
    """Running nodes by name, driven through their local API inside their namespaces."""

    def __init__(self, hosts, nodes, wait=True):
        self.hosts, self.nodes = hosts, nodes
        if wait:
            for n in nodes:
                self.wait_started(n)

    def wait_started(self, n):
        wait_for(lambda: (self.nodes[n].data_dir.root / "node.json").exists(),
                 what=f"{n} start")

    def _app(self, n):
        return str(self.nodes[n].runtime()["api_url"]), self.nodes[n].admin_token()

    def notes(self, n, *args, timeout=60):
        """Run an op of `tests.programs.notes` on device n; its JSON answer (or None)."""
        out = self.hosts[n].run(sys.executable, "-m", "tests.programs.notes", *self._app(n),
                                *args, timeout=timeout)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else None

    api = notes  # the older name

    def call(self, n, method, path, body=""):
        """One raw API call on device n: {"status": ..., "body": ...}."""
        out = self.hosts[n].run(sys.executable, "-m", "tests.programs.api", *self._app(n),
                                method, path, body)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def cli(self, n, *args, timeout=60):
        """`p2pgate --data-dir … ARGS` on device n (the completed process)."""
        return self.hosts[n].run(sys.executable, "-m", "p2pgate", "--data-dir",
                                 str(self.nodes[n].data_dir.root), *args, timeout=timeout)

    def spawn_notes(self, n, *args):
        """Start `tests.programs.notes` on device n in the background (stdout piped)."""
        return subprocess.Popen(["ip", "netns", "exec", self.hosts[n].ns, sys.executable, "-m",
                                 "tests.programs.notes", *self._app(n), *args],
                                stdout=subprocess.PIPE, text=True)

    def peers(self, n):
        """Peers from `p2pgate status` (None while the node does not answer)."""
        out = self.cli(n, "status", "--json")
        return json.loads(out.stdout)["peers"] if out.returncode == 0 else None

    def path(self, n):
        peers = self.notes(n, "peers")
        return peers[0]["path"] if peers else None
