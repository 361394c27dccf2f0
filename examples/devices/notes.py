"""A small notes app on the p2pgate SDK: add, list, watch, conflicts.

    export P2PGATE_API=http://127.0.0.1:8771 P2PGATE_TOKEN=p2pg_...
    python notes.py add "Groceries" "milk, eggs"
    python notes.py list
    python notes.py watch            # every change, from any paired device, as it lands
    python notes.py conflicts ID     # the last concurrent write that lost, per field
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys

from p2pgate.client import Client, ClientError


async def main(args: argparse.Namespace) -> int:
    api = os.environ.get("P2PGATE_API", "http://127.0.0.1:8771")
    token = os.environ.get("P2PGATE_TOKEN")
    if not token:
        print("set P2PGATE_TOKEN (p2pgate app add notes --scope notes:rw)", file=sys.stderr)
        return 2
    async with Client(api, token) as node:
        if args.command == "add":
            note_id = secrets.token_hex(4)
            await node.put("notes", note_id, {"title": args.title, "body": args.body})
            print(note_id)
        elif args.command == "edit":
            await node.patch("notes", args.id, {"title": args.title})
        elif args.command == "list":
            after = None
            while True:
                page = await node.list_docs("notes", after=after)
                for doc in page.items:
                    print(f"{doc.id}  {doc.data.get('title', '')}  {doc.data.get('body', '')}")
                if page.next_after is None:
                    break
                after = page.next_after
        elif args.command == "watch":
            async for event in node.events(cursor=args.cursor):
                verb = "deleted" if event.deleted else "changed"
                print(f"{event.cursor}: {event.id} {verb} by {(event.origin or '?')[:7]}",
                      flush=True)
        elif args.command == "conflicts":
            for field, lost in (await node.conflicts("notes", args.id)).fields.items():
                print(f"{field}: lost {lost.value!r} from {lost.origin[:7]}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add")
    add.add_argument("title")
    add.add_argument("body", nargs="?", default="")
    edit = sub.add_parser("edit")
    edit.add_argument("id")
    edit.add_argument("title")
    sub.add_parser("list")
    watch = sub.add_parser("watch")
    watch.add_argument("--cursor", type=int, default=0)
    conflicts = sub.add_parser("conflicts")
    conflicts.add_argument("id")
    try:
        sys.exit(asyncio.run(main(parser.parse_args())))
    except ClientError as exc:
        print(f"notes: {exc} [{exc.code}]", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
