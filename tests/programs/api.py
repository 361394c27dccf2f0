"""Call a running node's API once and print the JSON answer: URL TOKEN METHOD PATH [BODY].

Prints `{"status": N, "body": ...}` so a test sees refusals as well as successes.
"""

from __future__ import annotations

import asyncio
import json
import sys

from p2pgate.client import Client, ClientError


async def main(url: str, token: str, method: str, path: str, body: str = "") -> None:
    async with Client(url, token) as client:
        try:
            status, payload, _ = await client.request(method, path,
                                                      json.loads(body) if body else None)
        except ClientError as exc:
            status, payload = exc.status, {"error": {"code": exc.code, "message": str(exc)}}
    print(json.dumps({"status": status, "body": payload}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
