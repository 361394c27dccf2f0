"""One WebRTC endpoint for the netns test: `webrtc_peer DATA_DIR RELAY_URL PEER_ID ROLE`.

Both roles log in to the relay and exchange the sealed offer/answer through its
control connection. `offer` dials admission + pinned TLS + a Session over the data
channel and sends `TOTAL` bytes, then closes; `answer` serves the channel with
`Listener.handle` and receives. `glare` offers too, once the file DATA_DIR/go
appears, and takes whichever role the tie-break leaves it. Each prints `ready` once
logged in to the relay, then one JSON line of results.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
import time
from pathlib import Path

from p2pgate.identity import Identity
from p2pgate.identity.deviceid import DeviceID
from p2pgate.identity.paths import DataDir
from p2pgate.net import Listener, PeerHello, Session, SessionError, Trust, dial
from p2pgate.net.rtc_signalling import RtcSignalling
from p2pgate.net.webrtc import WebRtcFailed
from p2pgate.relay.client import RelayClient
from p2pgate.storage.database import Database, load_key
from p2pgate.storage.registry import DeviceRegistry

TOTAL = 4 << 20
CHUNK = 64 << 10


def pattern(total: int) -> bytes:
    return hashlib.shake_256(b"p2pgate webrtc").digest(total)


async def main(root: str, relay_url: str, peer_text: str, role: str) -> None:
    data_dir = DataDir(Path(root))
    identity = Identity.load(data_dir)
    db = await Database.open(data_dir.database, load_key(data_dir.database_key))
    trust = Trust(DeviceRegistry(db), data_dir.device_cert, data_dir.device_key)
    await trust.load()
    peer = DeviceID.parse(peer_text)
    hello = PeerHello(str(identity.device_id), role)

    async def trusted(device: DeviceID) -> bool:
        return trust.key_of(device) is not None

    async def no_splice(stream: object) -> None:
        return None

    relay = RelayClient(relay_url, identity, trusted, no_splice)  # type: ignore[arg-type]
    relay_task = asyncio.ensure_future(relay.run())
    result: dict[str, object] = {"role": role}
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def received(session: Session) -> None:
        digest, got, first, last = hashlib.sha256(), 0, 0.0, 0.0
        with contextlib.suppress(SessionError):
            while True:
                payload = await session.receive()
                first = first or time.monotonic()
                digest.update(payload)
                got += len(payload)
                last = time.monotonic()
        result.update(bytes=got, sha256=digest.hexdigest(), close_reason=session.close_reason,
                      mb_per_s=round(got / max(last - first, 1e-6) / 1e6, 2))
        await session.close()
        done.set_result(None)

    listener = Listener(trust, lambda: hello, received)

    async def on_stream(device: DeviceID, stream: object) -> None:
        result.update(path=stream.path, remote=stream.remote_address,  # type: ignore[attr-defined]
                      answered=True)
        await listener.handle(stream)  # type: ignore[arg-type]

    signalling = RtcSignalling(relay, identity.device_id, trust.key_of, on_stream)
    try:
        async with asyncio.timeout(40):
            await relay.wait_connected()
            if relay.stun_address:  # the relay's STUN port, from its welcome
                signalling.stun_url = result["stun"] = f"stun:{relay.stun_address}"
            print("ready", flush=True)
            stream = None
            if role == "glare":
                for _ in range(3000):  # the test starts both at once
                    if (data_dir.root / "go").exists():
                        break
                    await asyncio.sleep(0.01)
                started = time.monotonic()
                try:
                    stream = await signalling.connect(peer)
                except WebRtcFailed as exc:
                    result["lost"] = str(exc)
            if role == "offer" or stream is not None:
                if stream is None:
                    started = time.monotonic()
                    stream = await signalling.connect(peer)
                result.update(connect_s=round(time.monotonic() - started, 3),
                              path=stream.path, remote=stream.remote_address)
                session = await dial(trust, hello, peer, "webrtc", 0, stream=stream)
                result["session_s"] = round(time.monotonic() - started, 3)
                data, sent_at = pattern(TOTAL), time.monotonic()
                for i in range(0, TOTAL, CHUNK):
                    await session.send(data[i:i + CHUNK])
                await session.close("all sent")
                result.update(bytes=TOTAL, sha256=hashlib.sha256(data).hexdigest(),
                              send_s=round(time.monotonic() - sent_at, 3))
            else:
                await done
    finally:
        result["refused"] = signalling.refused
        print(json.dumps(result), flush=True)
        await signalling.close()
        relay_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay_task
        await trust.close()
        await db.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
