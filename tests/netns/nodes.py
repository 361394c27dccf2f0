"""Driving running nodes through their local API from inside their namespaces."""

from __future__ import annotations

import json
import sys
import textwrap

from tests.lab import wait_for

API = textwrap.dedent("""
    import asyncio, json, sys
    from p2pgate.client import Client
    async def main(url, token, op, *args):
        async with Client(url, token) as c:
            if op == "put":
                await c.put("notes", args[0], json.loads(args[1]))
            elif op == "ids":
                docs = await c.list_docs("notes", limit=1000)
                print(json.dumps(sorted(d.id for d in docs.items)))
            elif op == "events":  # every change event so far, by document
                ids = []
                async def collect():
                    async for event in c.events(cursor=0):
                        ids.append(event.id)
                try:
                    await asyncio.wait_for(collect(), 2)
                except asyncio.TimeoutError:
                    pass
                print(json.dumps(ids))
            elif op == "peers":
                print(json.dumps((await c.peers()).items))
    asyncio.run(main(*sys.argv[1:]))
""")


class Devices:
    """Running nodes by name, driven through their local API inside their namespaces."""

    def __init__(self, hosts, nodes):
        self.hosts, self.nodes = hosts, nodes
        for node in nodes.values():
            wait_for(lambda n=node: (n.data_dir.root / "node.json").exists(), what="start")

    def api(self, n, *args):
        out = self.hosts[n].run(sys.executable, "-c", API, self.nodes[n].runtime()["api_url"],
                                self.nodes[n].admin_token(), *args)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else None

    def path(self, n):
        peers = self.api(n, "peers")
        return peers[0]["path"] if peers else None

