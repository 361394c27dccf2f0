"""The node: the one composition root that owns and wires every component.

Start-up order: store → registry → tokens → documents → trust → connection
manager → API → P2P listener. Shutdown: stop the listener and peer sessions,
stop accepting requests and let in-flight ones finish, close WebSockets, flush
and close the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from p2pgate.api.events import EventHub
from p2pgate.api.http import build_application
from p2pgate.api.openapi import openapi_document
from p2pgate.api.relays import relay_routes
from p2pgate.api.routes import ApiServices, api_routes
from p2pgate.api.server import ApiSite, api_runner
from p2pgate.api.tokens import TokenStore
from p2pgate.config import NodeConfig
from p2pgate.connect import ConnectionManager
from p2pgate.connect.netwatch import NetworkWatcher
from p2pgate.connect.webrtc_paths import WebRtcPaths
from p2pgate.discovery.dht.node import DhtNode
from p2pgate.discovery.mdns import LanDiscovery, PeerDiscovered, PeerLost, find_inviters
from p2pgate.discovery.wan import WanDiscovery
from p2pgate.documents import Documents
from p2pgate.errors import P2PGateError
from p2pgate.identity import Identity
from p2pgate.identity.deviceid import DeviceID
from p2pgate.identity.files import read_secret, write_file
from p2pgate.identity.paths import DataDir, runtime_file
from p2pgate.net import Listener, PeerHello, Trust
from p2pgate.net.addresses import listen_addresses
from p2pgate.net.session import SessionOptions
from p2pgate.pairing.service import PairingService
from p2pgate.ratelimit import RateLimiter
from p2pgate.relay.access import RelayAccess
from p2pgate.relay.client import RelayClient
from p2pgate.storage.database import Database, load_key
from p2pgate.storage.keys import discovery_key, new_discovery_key
from p2pgate.storage.registry import DeviceChanged, DeviceRegistry
from p2pgate.stream import Stream
from p2pgate.supervisor import Supervisor

__all__ = ["Node", "NodeError"]

log = logging.getLogger("p2pgate.node")

PEER_SHUTDOWN_BUDGET = 3.0  # stop() gives the steps that may wait on a peer this long, in all


class NodeError(P2PGateError):
    """The node could not start (e.g. its API port is taken)."""


class Node:
    """One device's node: builds every component in `start()`, stops them in `stop()`."""

    def __init__(self, data_dir: DataDir, config: NodeConfig, identity: Identity, name: str):
        self.data_dir = data_dir
        self.config = config
        self.identity = identity
        self.name = name
        self._runner: web.AppRunner | None = None
        self._trust: Trust | None = None
        self._manager: ConnectionManager | None = None
        self._listener: Listener | None = None
        self._mdns: LanDiscovery | None = None
        self._supervisor = Supervisor()
        self._disc_key = b""
        self._relays: list[RelayClient] = []
        self._webrtc: WebRtcPaths | None = None
        self._relay_access: RelayAccess | None = None
        self._wan: WanDiscovery | None = None
        self._pairing: PairingService | None = None
        self._db: Database | None = None
        self._stopped = asyncio.Event()
        self.api_url = config.api_url

    async def start(self) -> None:
        """Open the store, start the API, the P2P listener and discovery (NodeError if an
        address is taken)."""
        cfg = self.config
        self._db = db = await Database.open(
            self.data_dir.database, load_key(self.data_dir.database_key),
            durability=cfg.durability,
        )
        registry = DeviceRegistry(db)
        tokens = TokenStore(db, read_secret(self.data_dir.admin_token).decode().strip())
        await tokens.load()
        documents = await Documents.open(db, self.identity.device_id,
                                         event_retention=cfg.event_retention)
        events = EventHub(documents)
        documents.on_change(events.publish)
        self._trust = trust = Trust(registry, self.data_dir.device_cert, self.data_dir.device_key)
        await trust.load()
        self._disc_key = await discovery_key(db)
        self._relay_access = await RelayAccess.open(db, cfg.relay_tokens)
        manager, pairing = self._connections(registry, trust, documents)
        await self._serve_api(tokens, ApiServices(
            device_id=self.identity.device_id, name=lambda: self.name,
            api_url=lambda: self.api_url,
            tokens=tokens, registry=registry, documents=documents, events=events,
            cursor=lambda: documents.cursor, peers=manager.peers, pairing=pairing,
            collected=lambda: documents.collected,
        ))
        port = await self._listen_p2p()
        manager.start()
        for relay in self._relays:
            self._supervisor.spawn(f"relay control {relay.url}", relay.run)
        watcher = NetworkWatcher(lambda _added, _removed: self._network_changed())
        self._supervisor.spawn("network watcher", watcher.run)
        self._supervisor.spawn("garbage collection", lambda: documents.collect_garbage_every(
            cfg.gc_interval, cfg.gc_peer_timeout))
        registry.subscribe(self._on_device_change)
        if self._mdns is not None:
            await self._mdns.start(port)
            log.info("LAN discovery on %s", ", ".join(self._lan_ips()))
        if cfg.dht and cfg.bootstrap:
            await self._start_dht(manager, registry, port)
        write_file(runtime_file(self.data_dir),
                   json.dumps({"api_url": self.api_url, "p2p_port": port,
                               "pid": os.getpid()}).encode())
        log.info("API listening on %s", self.api_url)

    def _connections(self, registry: DeviceRegistry, trust: Trust, documents: Documents
                     ) -> tuple[ConnectionManager, PairingService]:
        """Relay clients, the connection manager, pairing, mDNS and the P2P listener."""
        cfg = self.config
        options = SessionOptions(cfg.keepalive, cfg.keepalive_timeout)
        access = self._relay_access
        assert access is not None  # noqa: S101 (opened by start)
        self._relays = [RelayClient(url, self.identity, registry.is_trusted_device,
                                    self._relayed_session, token=access.token_for(url))
                        for url in cfg.relays]
        access.attach(self._relays)
        if cfg.webrtc and self._relays:
            self._webrtc = WebRtcPaths(self._relays, self.identity.device_id, trust,
                                       self._relayed_session)
        self._manager = manager = ConnectionManager(
            trust, registry, documents, self.identity.device_id, self._hello,
            relays=self._relays, probe_every=cfg.direct_probe_interval, options=options,
            visit=self._visitor_client, webrtc=self._webrtc.open if self._webrtc else None)
        self._pairing = pairing = PairingService(
            self.identity, registry, lambda: self.name, self._disc_key,
            lambda: listen_addresses(cfg.listen[0], self._listener.port if self._listener
                                     else cfg.listen[1]),
            relays=lambda: list(cfg.relays), relay_token=access.token_for)
        if cfg.mdns:  # before the API answers, so that no pairing offer goes unadvertised
            self._mdns = self._lan_discovery(self._disc_key, manager, trust, pairing)
        self._listener = Listener(trust, self._hello, manager.accepted, pairing.handle, options)
        return manager, pairing

    async def _serve_api(self, tokens: TokenStore, services: ApiServices) -> None:
        """The local API on `api` (port 0: any free one; `api_url` then names it)."""
        cfg = self.config
        routes: list[Any] = []
        routes.extend(api_routes(services, lambda: openapi_document(routes)))
        if self._relay_access is not None:
            routes.extend(relay_routes(self._relay_access))
        app = build_application(
            routes, tokens, max_body=cfg.max_body_bytes,
            rate=RateLimiter(cfg.rate_limit, cfg.rate_burst),
            allowed_hosts=(cfg.api[0], *cfg.allowed_hosts), cors_origins=cfg.cors_origins,
        )
        self._runner = api_runner(app)  # timeouts, keep-alive and connection cap: api.server
        await self._runner.setup()
        host, port = cfg.api
        site = ApiSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise NodeError(f"cannot listen on {host}:{port} for the API: {exc.strerror}") from None
        if port == 0:  # tests ask for any free port
            port = self._runner.addresses[0][1]
            shown = f"[{host}]" if ":" in host else host
            self.api_url = f"http://{shown}:{port}"

    async def _listen_p2p(self) -> int:
        """Start the P2P listener; the port it bound."""
        assert self._listener is not None  # noqa: S101 (built by _connections)
        host, port = self.config.listen
        try:
            await self._listener.start(host, port)
        except OSError as exc:
            await self.stop()
            raise NodeError(f"cannot listen on {host}:{port} for peers: {exc.strerror}") from None
        log.info("P2P listening on %s:%d", host, self._listener.port)
        return self._listener.port

    def _lan_ips(self) -> list[str]:
        return [a.rsplit(":", 1)[0] for a in listen_addresses(self.config.listen[0], 0)]

    def _lan_discovery(self, disc_key: bytes, manager: ConnectionManager, trust: Trust,
                       pairing: PairingService) -> LanDiscovery:
        """mDNS wired to the connection manager and to pairing (started later)."""
        ips = self._lan_ips()

        def on_event(event: PeerDiscovered | PeerLost) -> None:
            if isinstance(event, PeerDiscovered):
                self._supervisor.fire("mDNS sighting",
                                      manager.discovered(event.device_id, event.addresses))

        mdns = LanDiscovery(ips, disc_key, trust.discovery_keys, on_event)

        def advertise(nameplates: frozenset[int]) -> None:
            self._supervisor.fire("mDNS pairing advertisement",
                                  mdns.set_pairing_nameplates(nameplates))

        pairing.on_offer_change = advertise
        pairing.nameplates_in_use = mdns.nameplates_in_use
        pairing.find_inviters = lambda nameplate: find_inviters(ips, nameplate)
        return mdns

    def _network_changed(self) -> None:
        """Our addresses changed: probe STUN again, retry peers (WebRTC, direct) now."""
        for relay in self._relays:
            relay.network_changed()
        if self._webrtc is not None:
            self._webrtc.network_changed()
        if self._manager is not None:
            self._manager.network_changed()

    def _visitor_client(self, url: str) -> RelayClient:
        """A client for a peer's relay we only dial through (it accepts no invitation)."""
        async def refuse(_: DeviceID) -> bool:
            return False

        token = self._relay_access.token_for(url) if self._relay_access else None
        return RelayClient(url, self.identity, refuse, self._relayed_session, token=token)

    async def _relayed_session(self, stream: Stream) -> None:
        """A trusted device reached us through a relay splice or a WebRTC data channel:
        admission and pinned TLS run inside it, exactly as on the P2P port."""
        if self._listener is not None:
            await self._listener.handle(stream)
        else:
            await stream.close()

    def _on_device_change(self, change: DeviceChanged) -> None:
        if change.lost_trust:
            self._supervisor.fire("discovery key rotation", self._rotate_discovery_key())

    async def _rotate_discovery_key(self) -> None:
        """A device lost our trust: advertise under a new discovery key, which the
        remaining peers learn from our next Hello; the removed one cannot."""
        assert self._db is not None  # noqa: S101 (the node is running)
        self._disc_key = key = await new_discovery_key(self._db)
        if self._pairing is not None:
            self._pairing.disc_key = key
        if self._mdns is not None:
            await self._mdns.set_disc_key(key)
        if self._manager is not None:
            await self._manager.reconnect_all("discovery key rotated")
        log.info("discovery key rotated")

    async def _start_dht(self, manager: ConnectionManager, registry: DeviceRegistry,
                         port: int) -> None:
        cfg = self.config
        dht = DhtNode()
        await dht.listen(port, interface=cfg.listen[0])  # UDP, on the P2P port number
        self._wan = WanDiscovery(
            dht, registry, self.identity.device_id, self.identity.private_key,
            addresses=lambda: listen_addresses(cfg.listen[0], port), relays=cfg.relays,
            observed=lambda: [relay.observed_address for relay in self._relays],
            on_found=manager.discovered, path_of=manager.path_of,
            lookup_every=cfg.dht_lookup_interval, db=self._db)
        await self._wan.start(list(cfg.bootstrap))
        log.info("DHT node on UDP %s:%d, bootstrapping from %d node(s)", cfg.listen[0], port,
                 len(cfg.bootstrap))

    def _hello(self) -> PeerHello:
        return PeerHello(str(self.identity.device_id), self.name,
                     capabilities=("sync/1",), relays=self.config.relays,
                     disc_key=self._disc_key)

    async def stop(self) -> None:
        """Stop everything; the steps that talk to peers share `PEER_SHUTDOWN_BUDGET`
        (shutdown never waits on a peer), then the store commits and closes."""
        runtime_file(self.data_dir).unlink(missing_ok=True)
        deadline = asyncio.get_running_loop().time() + PEER_SHUTDOWN_BUDGET
        await _step_by("background tasks", self._supervisor.stop(), deadline)
        if self._mdns is not None:
            await _step_by("mDNS", self._mdns.stop(), deadline)
        if self._wan is not None:
            await _step_by("DHT", self._wan.stop(), deadline)
        if self._pairing is not None:
            await _step_by("pairing", self._pairing.close(), deadline)
        if self._listener is not None:
            await _step_by("P2P listener", self._listener.stop(), deadline)
        if self._manager is not None:
            await _step_by("connection manager", self._manager.stop(), deadline)
        if self._webrtc is not None:
            await _step_by("WebRTC attempts", self._webrtc.close(), deadline)
        if self._trust is not None:
            await self._trust.close()
        if self._runner is not None:
            await self._runner.cleanup()  # waits for in-flight requests, closes WebSockets
            self._runner = None
        if self._db is not None:
            await self._db.close()
            self._db = None
        log.info("node stopped")

    def request_stop(self) -> None:
        """Ask `serve_until_stopped()` to stop the node."""
        self._stopped.set()

    async def serve_until_stopped(self) -> None:
        """Serve until SIGINT or SIGTERM (or `request_stop()`), then stop cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._stopped.wait()
            log.info("stopping")
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.stop()


async def _step_by(name: str, step: Coroutine[Any, Any, Any], deadline: float) -> None:
    """Run one shutdown step until the loop time `deadline` at most; one that is late
    (e.g. a write to a dead peer) is cancelled and left behind, logged."""
    task = asyncio.ensure_future(step)
    timeout = max(0.1, deadline - asyncio.get_running_loop().time())
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.warning("shutdown: %s did not stop in time; going on without it", name)
        task.cancel()
    elif not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("shutdown: %s failed: %s: %s", name, type(exc).__name__, exc)
