"""Pinned mutual TLS 1.3 over any `Stream`, with `ssl.MemoryBIO`.

Contexts trust exactly the certificates of trusted devices (as `cadata`), with
partial chains allowed and time checks off (phone clocks are wrong). The
handshake alone never authenticates: afterwards the peer leaf's SHA-256 must be
the device we expect *and* a device the registry trusts right now.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from p2pgate.errors import RemoteProtocolError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.stream import CLOSE_GRACE, Stream, StreamClosed

__all__ = ["NO_CHECK_TIME", "PeerNotTrusted", "TlsStream", "make_context"]

NO_CHECK_TIME = 0x200000  # OpenSSL's X509_V_FLAG_NO_CHECK_TIME
_READ = 65536


class PeerNotTrusted(RemoteProtocolError):
    """The TLS peer is not the trusted device we expected."""


def make_context(server_side: bool, cert_file: Path, key_file: Path,
                 trusted_ders: Iterable[bytes]) -> ssl.SSLContext:
    """A TLS 1.3 context presenting our certificate and requiring one of `trusted_ders`.

    No hostname or validity-time checks; `TlsStream.handshake` pins the peer afterwards.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | NO_CHECK_TIME
    ctx.load_cert_chain(cert_file, key_file)
    pems = "".join(
        x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode()
        for der in trusted_ders
    )
    if pems:
        ctx.load_verify_locations(cadata=pems)
    return ctx


class TlsStream:
    """A TLS connection over another stream; itself a `Stream`."""

    def __init__(self, inner: Stream, obj: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO, peer: DeviceID) -> None:
        self._inner, self._obj = inner, obj
        self._in, self._out = incoming, outgoing
        self.peer = peer
        self.path = inner.path
        self._closed = False

    @property
    def remote_address(self) -> str | None:
        """The inner stream's remote address, or None."""
        return self._inner.remote_address

    @classmethod
    async def handshake(
        cls, inner: Stream, context: ssl.SSLContext, *, server_side: bool,
        expected: DeviceID | None, is_trusted: Callable[[bytes], bool], initial: bytes = b"",
    ) -> TlsStream:
        """Run the TLS handshake over `inner` and pin the peer.

        `expected` is the device we dialed (client) or admitted (server);
        `is_trusted(der)` asks the registry about the peer's certificate now.
        """
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = context.wrap_bio(incoming, outgoing, server_side=server_side)
        if initial:
            incoming.write(initial)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await _flush(inner, outgoing)
                data = await inner.read(_READ)
                if not data:
                    raise StreamClosed("peer closed during the TLS handshake") from None
                incoming.write(data)
            except ssl.SSLError as exc:
                await _flush(inner, outgoing, quiet=True)
                raise PeerNotTrusted(f"TLS handshake failed: {exc.reason or exc}") from None
        await _flush(inner, outgoing)
        der = obj.getpeercert(binary_form=True)
        if der is None:
            raise PeerNotTrusted("peer sent no certificate")
        peer = DeviceID.from_certificate(der)
        if expected is not None and peer != expected:
            raise PeerNotTrusted(f"expected device {expected.short}, got {peer.short}")
        if not is_trusted(der):
            raise PeerNotTrusted(f"device {peer.short} is not trusted")
        return cls(inner, obj, incoming, outgoing, peer)

    async def read(self, max_bytes: int = _READ) -> bytes:
        """Up to `max_bytes` of plaintext, b"" at the end; RemoteProtocolError on a TLS error."""
        while True:
            try:
                return self._obj.read(max_bytes)
            except ssl.SSLWantReadError:
                await _flush(self._inner, self._out)
                data = await self._inner.read(_READ)
                if not data:
                    return b""
                self._in.write(data)
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLError as exc:
                raise RemoteProtocolError(f"TLS error: {exc.reason or exc}") from None

    async def write(self, data: bytes) -> None:
        """Encrypt and send all of `data`; StreamClosed once closed or on a TLS error."""
        if self._closed:
            raise StreamClosed("TLS stream closed")
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise StreamClosed(f"TLS error: {exc.reason or exc}") from None
        await _flush(self._inner, self._out)

    async def close(self) -> None:
        """Send close_notify (best effort) and close the inner stream; a no-op the second time."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ssl.SSLError, ValueError):
            self._obj.unwrap()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_GRACE):  # a dead peer takes no close_notify
                await _flush(self._inner, self._out, quiet=True)
        await self._inner.close()


async def _flush(stream: Stream, outgoing: ssl.MemoryBIO, quiet: bool = False) -> None:
    data = outgoing.read()
    if data:
        try:
            await stream.write(data)
        except StreamClosed:
            if not quiet:
                raise
