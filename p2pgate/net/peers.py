"""Who we talk to: current trust, the P2P listener, and dialing a peer.

`Trust` mirrors the registry: the pair secrets used for admission, the pinned TLS
contexts, and the live sessions. Every registry change rebuilds the contexts,
and a device that is no longer trusted has its sessions closed at once.

The listener runs its own accept loop: every connection stays under the caps of
`ConnectionCaps` until admission proves a trusted device (pairing connections stay
under them to the end), must send its first valid bytes within `ADMISSION_TIMEOUT`,
and when the process runs out of descriptors (EMFILE) accepting pauses with a
growing back-off and one log line, instead of spinning.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from p2pgate.errors import P2PGateError, RemoteProtocolError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.net.admission import (
    AdmissionListener,
    Admitted,
    Challenge,
    ConnectionCaps,
    NeedMore,
    Pairing,
    Refused,
    admission_hello,
    admission_tag,
    source_of,
)
from p2pgate.net.frames import PeerHello
from p2pgate.net.session import Session, SessionError, SessionOptions
from p2pgate.net.tls import TlsStream, make_context
from p2pgate.storage.registry import DeviceChanged, DeviceRegistry, DeviceState
from p2pgate.stream import Stream, StreamClosed, TcpStream
from p2pgate.supervisor import Supervisor

__all__ = ["DialFailed", "Listener", "PairingHandler", "Trust", "dial"]

log = logging.getLogger("p2pgate.net")

ADMISSION_TIMEOUT = 5.0
ACCEPT_BACKOFF = (0.05, 2.0)  # first and longest pause when accepting fails for lack of fds
FULL_LOG_EVERY = 60.0  # seconds between "listener full" log lines
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# a P2PG-PAIR connection: the stream, the bytes after the magic, the dialer's source
PairingHandler = Callable[[Stream, bytes, str | None], Awaitable[None]]


class DialFailed(P2PGateError):
    """We could not open a session to that peer at that address."""


class Trust:
    """Who we trust now, for admission and pinned TLS: certificates, pair secrets and
    discovery keys of trusted devices, TLS contexts rebuilt on every trust change, and
    the live sessions per device (closed at once when a device loses trust)."""

    def __init__(self, registry: DeviceRegistry, cert_file: Path, key_file: Path) -> None:
        self.registry = registry
        self._cert_file, self._key_file = cert_file, key_file
        self._certs: dict[DeviceID, bytes] = {}
        self._keys: dict[DeviceID, bytes] = {}
        self._disc: dict[DeviceID, bytes] = {}
        self.server_context: ssl.SSLContext | None = None
        self.client_context: ssl.SSLContext | None = None
        self.sessions: dict[DeviceID, set[Session]] = {}
        self._reload_task: asyncio.Task[None] | None = None
        self._stale = False  # a change arrived that no finished load has read
        self.on_loaded: Callable[[], None] | None = None  # a reload after a change ended
        self._closers = Supervisor(logger=log)  # keeps the closing sessions' tasks referenced
        self._unsubscribe = registry.subscribe(self._on_change)

    async def load(self) -> None:
        """Read the trusted devices from the registry and build both TLS contexts."""
        devices = await self.registry.trusted()
        self._certs = {d.device_id: d.cert_der for d in devices}
        self._keys = {d.device_id: d.k_pair for d in devices if d.k_pair}
        self._disc = {d.device_id: d.disc_key for d in devices if d.disc_key}
        ders = list(self._certs.values())
        # contexts load the key and certificate files: off the event loop
        self.server_context = await asyncio.to_thread(
            make_context, True, self._cert_file, self._key_file, ders)
        self.client_context = await asyncio.to_thread(
            make_context, False, self._cert_file, self._key_file, ders)

    async def close(self) -> None:
        """Stop following the registry."""
        self._unsubscribe()
        if self._reload_task is not None:
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload_task

    def keys(self) -> list[tuple[DeviceID, bytes]]:
        """Every trusted device's pair secret (admission tries each)."""
        return list(self._keys.items())

    def discovery_keys(self) -> dict[DeviceID, bytes]:
        """Trusted peers' discovery keys (to recognise them on the LAN)."""
        return dict(self._disc)

    def learn_disc_key(self, device: DeviceID, disc_key: bytes) -> bool:
        """Record a trusted peer's current discovery key; True if it changed."""
        if device not in self._certs or self._disc.get(device) == disc_key:
            return False
        self._disc[device] = disc_key
        return True

    def key_of(self, device: DeviceID) -> bytes | None:
        """The pair secret of a trusted device (None: not trusted)."""
        return self._keys.get(device)

    def is_trusted(self, der: bytes) -> bool:
        """Whether this exact certificate belongs to a trusted device (the pin)."""
        return self._certs.get(DeviceID.from_certificate(der)) == der

    def _on_change(self, change: DeviceChanged) -> None:
        if change.new_state is not DeviceState.TRUSTED:
            self._certs.pop(change.device_id, None)
            self._keys.pop(change.device_id, None)
            self._disc.pop(change.device_id, None)
            for session in list(self.sessions.get(change.device_id, ())):
                log.info("closing session with %s: device is %s", change.device_id.short,
                         change.new_state or "removed")
                self._closers.fire(f"close session with {change.device_id.short}",
                                   session.close(f"device {change.new_state or 'removed'}"))
        self._stale = True
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = self._closers.fire("reload trusted devices", self._reload())

    async def _reload(self) -> None:
        """Load until no change is left unread (a load under way may have read the
        registry before the latest change), then tell `on_loaded`."""
        while self._stale:
            self._stale = False
            await self.load()
        if self.on_loaded is not None:
            self.on_loaded()

    def track(self, session: Session) -> None:
        """Remember a live session so that revoking its device closes it."""
        self.sessions.setdefault(session.peer, set()).add(session)
        session.on_close(self._forget)

    def _forget(self, session: Session) -> None:
        live = self.sessions.get(session.peer)
        if live is not None:
            live.discard(session)
            if not live:
                del self.sessions[session.peer]


async def _admit(stream: Stream, trust: Trust) -> Admitted | Pairing | None:
    """Run admission on an accepted stream; None means: close it silently."""
    listener = AdmissionListener(trust.keys())
    async with asyncio.timeout(ADMISSION_TIMEOUT):
        while True:
            data = await stream.read(64)
            if not data:
                return None
            outcome = listener.receive(data)
            if isinstance(outcome, NeedMore):
                continue
            if isinstance(outcome, Challenge):
                await stream.write(outcome.data)
                continue
            if isinstance(outcome, Refused):
                log.debug("admission refused from %s: %s", stream.remote_address,
                          outcome.reason)
                return None
            return outcome


class Listener:
    """Accepts P2P connections: admission, pinned TLS, Hello, then `on_session`."""

    def __init__(self, trust: Trust, hello: Callable[[], PeerHello],
                 on_session: Callable[[Session], Awaitable[None]],
                 pairing: PairingHandler | None = None,
                 options: SessionOptions = SessionOptions(),  # noqa: B008
                 caps: ConnectionCaps[asyncio.Task[None]] | None = None) -> None:
        self._trust = trust
        self._hello = hello
        self._on_session = on_session
        self._pairing = pairing
        self._options = options
        self.caps: ConnectionCaps[asyncio.Task[None]] = (
            caps if caps is not None else ConnectionCaps())
        self._sockets: list[socket.socket] = []
        self._loops = Supervisor(logger=log)
        self._handlers: set[asyncio.Task[None]] = set()
        self._full_logged = float("-inf")
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Listen on HOST:PORT (port 0: any; `port` then holds the one bound)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(socket.SOMAXCONN)
                sock.setblocking(False)
        except OSError as exc:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}"
                          ) from None
        self.port = self._sockets[0].getsockname()[1]
        for sock in self._sockets:
            self._loops.spawn(f"P2P accept on {sock.getsockname()[:2]}",
                              functools.partial(self._accept_loop, sock))

    async def stop(self) -> None:
        """Stop accepting and end the connections still in admission or pairing."""
        await self._loops.stop()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _accept_loop(self, sock: socket.socket) -> None:
        """Accept for ever; out of descriptors, pause (growing back-off, one log line)."""
        loop = asyncio.get_running_loop()
        pause, starved_at, failed = 0.0, 0.0, 0
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                        continue  # that one connection is gone; the next may be fine
                    raise
                if not failed:
                    starved_at = time.monotonic()
                    log.warning("P2P listener cannot accept: %s; pausing accepts and "
                                "retrying (up to every %.0f s)", exc.strerror,
                                ACCEPT_BACKOFF[1])
                failed += 1
                pause = min(ACCEPT_BACKOFF[1], max(ACCEPT_BACKOFF[0], pause * 2))
                await asyncio.sleep(pause)
                continue
            if failed:
                log.warning("P2P listener accepts again after %.1f s (%d tries failed)",
                            time.monotonic() - starved_at, failed)
                pause, failed = 0.0, 0
            self._admit_connection(conn, address)

    def _admit_connection(self, conn: socket.socket, address: tuple[str, int]) -> None:
        source = source_of(str(address[0]))
        task = asyncio.ensure_future(self._serve(conn, source))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        task.add_done_callback(self.caps.leave)
        task.add_done_callback(functools.partial(_close_if_cancelled, conn))  # pushed out
        pushed = self.caps.enter(source, task)
        if pushed is not None:
            pushed.cancel()
            now = time.monotonic()
            if now - self._full_logged >= FULL_LOG_EVERY:
                self._full_logged = now
                log.warning("P2P listener full (%d unauthenticated connections, at most %d "
                            "from one address): pushing out the oldest", len(self.caps),
                            self.caps.per_source)

    async def _serve(self, conn: socket.socket, source: str) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError as exc:
            conn.close()
            log.debug("incoming connection lost before it started: %s", exc)
            return
        except asyncio.CancelledError:
            conn.close()
            raise
        task = asyncio.current_task()
        assert task is not None  # noqa: S101
        await self.handle(TcpStream(reader, writer), source,
                          admitted=functools.partial(self.caps.leave, task))

    async def handle(self, stream: Stream, source: str | None = None,
                     admitted: Callable[[], object] = lambda: None) -> None:
        """Serve one incoming connection on any stream (TCP, relay splice); `source`
        keys the per-source limits (None: a relay splice), `admitted` is called once a
        trusted device is proved."""
        try:
            outcome = await _admit(stream, self._trust)
            if isinstance(outcome, Pairing):
                if self._pairing is None:
                    await stream.close()
                else:
                    await self._pairing(stream, outcome.data, source)
                return
            if outcome is None:
                await stream.close()
                return
            admitted()
            if self._trust.server_context is None:
                raise StreamClosed("trust not loaded")
            tls = await TlsStream.handshake(
                stream, self._trust.server_context, server_side=True,
                expected=outcome.device_id, is_trusted=self._trust.is_trusted,
                initial=outcome.rest)
            session = await Session.establish(tls, self._hello(), self._options)
        except (TimeoutError, StreamClosed, RemoteProtocolError, SessionError) as exc:
            log.info("incoming connection from %s failed: %s", stream.remote_address, exc)
            await stream.close()
            return
        except asyncio.CancelledError:  # the listener is stopping
            await stream.close()
            raise
        self._trust.track(session)
        await self._on_session(session)


def _close_if_cancelled(conn: socket.socket, task: asyncio.Task[None]) -> None:
    """A task cancelled before it ran never took its socket: close it here."""
    if task.cancelled():
        conn.close()


async def dial(trust: Trust, hello: PeerHello, peer: DeviceID, host: str, port: int, *,
               stream: Stream | None = None,
               options: SessionOptions = SessionOptions()) -> Session:  # noqa: B008
    """Open a session to `peer` at host:port (or over `stream`, e.g. a relay splice)."""
    k_pair = trust.key_of(peer)
    if k_pair is None or trust.client_context is None:
        raise DialFailed(f"device {peer.short} is not trusted")
    try:
        if stream is None:
            stream = await TcpStream.connect(host, port)
        first, nonce = admission_hello()
        await stream.write(first)
        async with asyncio.timeout(ADMISSION_TIMEOUT):
            challenge = b""
            while len(challenge) < 16:
                data = await stream.read(16 - len(challenge))
                if not data:
                    raise DialFailed(f"{host}:{port} refused admission")
                challenge += data
        await stream.write(admission_tag(k_pair, challenge, nonce))
        tls = await TlsStream.handshake(stream, trust.client_context, server_side=False,
                                        expected=peer, is_trusted=trust.is_trusted)
        session = await Session.establish(tls, hello, options)
    except (TimeoutError, StreamClosed, RemoteProtocolError, SessionError) as exc:
        if stream is not None:
            await stream.close()
        raise DialFailed(f"no session with {peer.short} at {host}:{port}: {exc}") from None
    except (DialFailed, asyncio.CancelledError):
        if stream is not None:
            await stream.close()
        raise
    trust.track(session)
    return session
