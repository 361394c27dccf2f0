"""Two connection managers over loopback TCP: real pinned TLS, real libSQL, real sync."""

from __future__ import annotations

import asyncio
import contextlib

from p2pgate.connect import ConnectionManager
from p2pgate.documents import Documents
from p2pgate.net.peers import Listener

from .conftest import pair


@contextlib.asynccontextmanager
async def running(device, **settings):
    documents = await Documents.open(device.db, device.identity.device_id)
    manager = ConnectionManager(device.trust, device.registry, documents,
                                device.identity.device_id, device.hello, **settings)
    listener = Listener(device.trust, device.hello, manager.accepted)
    await listener.start("127.0.0.1", 0)
    manager.start()
    try:
        yield manager, documents, listener
    finally:
        await listener.stop()
        await manager.stop()


async def until(predicate, rounds=1500):
    """Let the managers work until `predicate()` holds; fails past `rounds` checks."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never held")


async def test_a_discovered_peer_gets_one_direct_session_and_documents_sync(devices):
    phone, desk = await devices("phone"), await devices("desk")
    await pair(phone, desk)
    async with running(phone) as (at_phone, phone_docs, _), \
            running(desk) as (at_desk, desk_docs, desk_listener):
        peer = desk.identity.device_id
        await at_phone.discovered(peer, (f"127.0.0.1:{desk_listener.port}",))
        await until(lambda: at_phone.path_of(peer) == "direct"
                    and at_desk.path_of(phone.identity.device_id) == "direct")
        await phone_docs.put("notes", "n1", {"text": "hello"}, None)
        await until(lambda: bool(desk_docs.cursor))
        assert (await desk_docs.get("notes", "n1")).data == {"text": "hello"}
        [entry] = at_phone.peers()
        assert (entry["device_id"], entry["path"]) == (str(peer), "direct")
        # reconnect_all closes the session; the phone dials again by itself
        await at_phone.reconnect_all("keys rotated")
        await until(lambda: at_phone.path_of(peer) == "direct")
    assert at_phone.path_of(peer) is None  # stopped: no session left


class FreezableProxy:
    """A TCP proxy whose forwarding can be frozen: a path that goes silent, both ways,
    with every socket still open (as a blackholed route looks to both ends)."""

    def __init__(self, port):
        self.port, self.flowing = port, asyncio.Event()
        self.flowing.set()
        self.server = None
        self.tasks, self.writers = set(), []

    async def start(self):
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers += [writer, up_writer]

        async def pump(src, dst):
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    await self.flowing.wait()
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(pump(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def stop(self):
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_a_silent_path_is_suspect_within_seconds_of_a_write_and_both_sides_move(devices):
    phone, desk = await devices("phone"), await devices("desk")
    await pair(phone, desk)
    proxy = None
    try:
        async with running(phone) as (at_phone, phone_docs, _), \
                running(desk) as (at_desk, desk_docs, desk_listener):
            proxy = FreezableProxy(desk_listener.port)
            peer, me = desk.identity.device_id, phone.identity.device_id
            await at_phone.discovered(peer, (f"127.0.0.1:{await proxy.start()}",))
            await until(lambda: at_phone.path_of(peer) == "direct"
                        and at_desk.path_of(me) == "direct")
            [entry] = at_phone.peers()
            assert entry["suspect"] is False and entry["last_move"] is None

            proxy.flowing.clear()  # the path goes silent; no setting is changed
            await phone_docs.put("notes", "n1", {"text": "written into the silence"}, None)
            loop = asyncio.get_running_loop()
            written = loop.time()
            await until(lambda: at_phone.peers()[0]["suspect"])
            assert loop.time() - written < 3.0  # max(1 s, 4 x RTT): 1 s here, slack for load

            proxy.flowing.set()  # the replacement dial (made at once) now completes
            await until(lambda: (at_phone.peers() or [{}])[0].get("last_move") is not None
                        and (at_desk.peers() or [{}])[0].get("last_move") is not None)
            assert at_phone.peers()[0]["last_move"]["why"] == "suspect path"
            assert at_desk.peers()[0]["last_move"]["why"] == "the peer lost its path"
            await until(lambda: bool(desk_docs.cursor))
            assert (await desk_docs.get("notes", "n1")).data == {"text": "written into the silence"}
    finally:
        if proxy is not None:
            await proxy.stop()


async def test_a_device_paired_while_the_managers_run_is_dialed_at_once(devices):
    phone, desk = await devices("phone"), await devices("desk")
    async with running(phone) as (at_phone, _, _), \
            running(desk) as (at_desk, _, desk_listener):
        await asyncio.sleep(0.3)  # both dial loops ran: their next refresh is 5 s away
        k_pair = b"k" * 32
        for me, other, seen_at in ((desk, phone, None),
                                   (phone, desk, f"127.0.0.1:{desk_listener.port}")):
            await me.registry.begin_pairing(other.identity.cert_der, other.name)
            if seen_at is not None:  # the joiner knows where it reached the inviter
                await me.registry.record_seen(other.identity.device_id, [seen_at])
            await me.registry.complete_pairing(other.identity.device_id, k_pair, b"d" * 32)
        paired = asyncio.get_running_loop().time()
        peer = desk.identity.device_id
        await until(lambda: at_phone.path_of(peer) == "direct"
                    and at_desk.path_of(phone.identity.device_id) == "direct")
        took = asyncio.get_running_loop().time() - paired
    assert took < 2.5, f"first session {took:.1f} s after pairing (the refresh is 5 s)"


async def test_a_trust_change_during_a_reload_is_not_missed(devices):
    phone, desk, laptop = (await devices("phone"), await devices("desk"),
                           await devices("laptop"))
    registry, trust = phone.registry, phone.trust
    await registry.begin_pairing(desk.identity.cert_der, desk.name)
    gate, reading = asyncio.Event(), asyncio.Event()
    trusted = registry.trusted

    async def stalled_read():  # a reload reads the registry, then waits at the gate
        found = await trusted()
        reading.set()
        await gate.wait()
        return found

    registry.trusted = stalled_read
    await registry.begin_pairing(laptop.identity.cert_der, laptop.name)  # a reload starts
    await asyncio.wait_for(reading.wait(), 10)
    await registry.complete_pairing(desk.identity.device_id, b"k" * 32, b"d" * 32)
    gate.set()  # the reload under way read the registry before the desk was trusted
    await until(lambda: trust.key_of(desk.identity.device_id) == b"k" * 32, rounds=150)
