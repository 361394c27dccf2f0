"""Admission, pinned TLS and sessions between real devices over loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from p2pgate.net.frames import PeerHello
from p2pgate.net.peers import DialFailed, Listener, dial
from p2pgate.net.session import SessionOptions
from p2pgate.net.tls import NO_CHECK_TIME, PeerNotTrusted, TlsStream, make_context
from p2pgate.stream import memory_pair

from .conftest import pair


@contextlib.asynccontextmanager
async def listening(device, options=None):
    sessions: asyncio.Queue = asyncio.Queue()

    async def on_session(session):
        await sessions.put(session)

    listener = Listener(device.trust, device.hello, on_session,
                        options=options or SessionOptions())
    await listener.start("127.0.0.1", 0)
    try:
        yield listener, sessions
    finally:
        await listener.stop()


async def raw_exchange(port, payload: bytes, wait: float = 1.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if payload:
            writer.write(payload)
            await writer.drain()
        received = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(wait):
                while chunk := await reader.read(4096):
                    received += chunk
        return received
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_trusted_peers_open_a_session_and_talk(devices):
    a, b = await devices("phone"), await devices("desktop")
    await pair(a, b)
    async with listening(b) as (listener, incoming):
        session = await dial(a.trust, a.hello(), b.identity.device_id, "127.0.0.1",
                             listener.port)
        other = await asyncio.wait_for(incoming.get(), 5)
        assert (session.peer, other.peer) == (b.identity.device_id, a.identity.device_id)
        assert (session.peer_name, other.peer_name) == ("desktop", "phone")
        assert session.version == other.version == 2
        await session.send(b"hello desktop")
        assert await other.receive() == b"hello desktop"
        await other.send(b"x" * 200_000)
        assert await session.receive() == b"x" * 200_000
        await session.close("done")
        await other.wait_closed()
        assert other.close_reason == "done"


@pytest.mark.parametrize("payload", [b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                     b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),
                                     b"P2PG-ADMIT\x02" + bytes(16), b"P2PG-ADMIT"])
async def test_a_stranger_receives_zero_bytes(devices, payload):
    b = await devices("desktop")
    async with listening(b) as (listener, _):
        assert await raw_exchange(listener.port, payload, wait=0.5) == b""


async def test_a_stranger_with_a_good_hello_gets_only_a_random_challenge(devices):
    b = await devices("desktop")
    async with listening(b) as (listener, _):
        first = await raw_exchange(listener.port, b"P2PG-ADMIT\x01" + bytes(16) + bytes(32))
        assert first == b""  # a tag before the challenge is refused silently
        one = await raw_exchange(listener.port, b"P2PG-ADMIT\x01" + bytes(16), wait=0.3)
        two = await raw_exchange(listener.port, b"P2PG-ADMIT\x01" + bytes(16), wait=0.3)
        assert len(one) == len(two) == 16
        assert one != two
        assert b.identity.cert_der not in one


async def test_a_replayed_admission_transcript_fails(devices):
    a, b = await devices("phone"), await devices("desktop")
    k = await pair(a, b)
    async with listening(b) as (listener, incoming):
        # record a genuine transcript
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        from p2pgate.net.admission import admission_hello, admission_tag
        hello, nonce = admission_hello()
        writer.write(hello)
        challenge = await reader.readexactly(16)
        tag = admission_tag(k, challenge, nonce)
        writer.write(tag)
        await writer.drain()
        with pytest.raises(TimeoutError):  # admitted: the listener now awaits our ClientHello
            await asyncio.wait_for(reader.read(1), 0.3)
        writer.close()
        await writer.wait_closed()
        # replay it verbatim on a new connection: the challenge differs, so it fails
        assert await raw_exchange(listener.port, hello + tag, wait=0.5) == b""


async def test_unknown_blocked_and_revoked_devices_cannot_connect(devices):
    a, b, stranger = await devices("phone"), await devices("desktop"), await devices("x")
    await pair(a, b)
    # the stranger knows b (as if half-paired) but b does not know the stranger
    await stranger.registry.begin_pairing(b.identity.cert_der, "desktop")
    await stranger.registry.complete_pairing(b.identity.device_id, os.urandom(32), bytes(32))
    await stranger.trust.load()
    async with listening(b) as (listener, _):
        with pytest.raises(DialFailed):
            await dial(stranger.trust, stranger.hello(), b.identity.device_id, "127.0.0.1",
                       listener.port)
        await b.registry.block(a.identity.device_id)
        await b.trust.load()
        with pytest.raises(DialFailed):
            await dial(a.trust, a.hello(), b.identity.device_id, "127.0.0.1", listener.port)
        await b.registry.revoke(a.identity.device_id)
        await b.trust.load()
        with pytest.raises(DialFailed):
            await dial(a.trust, a.hello(), b.identity.device_id, "127.0.0.1", listener.port)


def _leaf(subject_key, issuer_key, not_before, not_after, issuer_cn="p2pgate"):
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p2pgate")])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(issuer_key, None))


async def _handshake_pair(server_ctx, client_ctx, server_trusts, client_trusts):
    s_end, c_end = memory_pair()
    server = asyncio.ensure_future(TlsStream.handshake(
        s_end, server_ctx, server_side=True, expected=None, is_trusted=server_trusts))
    client = asyncio.ensure_future(TlsStream.handshake(
        c_end, client_ctx, server_side=False, expected=None, is_trusted=client_trusts))
    results = await asyncio.gather(server, client, return_exceptions=True)
    for r in results:
        if not isinstance(r, BaseException):
            await r.close()
    return results


def _write(tmp_path, name, key, cert):
    from cryptography.hazmat.primitives import serialization
    kf, cf = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
    kf.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    cf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cf, kf


async def test_a_leaf_signed_by_a_trusted_device_key_is_refused(devices, tmp_path,
                                                                allow_blocking):
    a, b = await devices("phone"), await devices("desktop")
    await pair(a, b)
    forged_key = Ed25519PrivateKey.generate()
    forged = _leaf(forged_key, a.identity.private_key, dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
                   dt.datetime(9999, 1, 1, tzinfo=dt.UTC))
    cf, kf = _write(tmp_path, "forged", forged_key, forged)
    client_ctx = make_context(False, cf, kf, [b.identity.cert_der])
    from cryptography.hazmat.primitives.serialization import Encoding
    der = forged.public_bytes(Encoding.DER)
    results = await _handshake_pair(b.trust.server_context, client_ctx,
                                    b.trust.is_trusted, lambda d: True)
    assert any(isinstance(r, PeerNotTrusted) for r in results)
    assert not b.trust.is_trusted(der)


@pytest.mark.parametrize("years", [10, -10])
async def test_clocks_ten_years_apart_still_connect(tmp_path, years, allow_blocking):
    now = dt.datetime.now(dt.UTC)
    shift = dt.timedelta(days=365 * years)
    keys = [Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()]
    # a device whose clock is `years` off made a certificate valid only around its "now"
    certs = [_leaf(keys[0], keys[0], now + shift - dt.timedelta(days=1),
                   now + shift + dt.timedelta(days=1)),
             _leaf(keys[1], keys[1], now - dt.timedelta(days=1), now + dt.timedelta(days=1))]
    files = [_write(tmp_path, f"d{i}", k, c) for i, (k, c) in enumerate(zip(keys, certs,
                                                                           strict=True))]
    from cryptography.hazmat.primitives.serialization import Encoding
    ders = [c.public_bytes(Encoding.DER) for c in certs]
    server = make_context(True, *files[0], [ders[1]])
    client = make_context(False, *files[1], [ders[0]])
    results = await _handshake_pair(server, client, lambda d: d == ders[1],
                                    lambda d: d == ders[0])
    assert not any(isinstance(r, BaseException) for r in results), results
    # and the flag is what makes it work: without it the skewed certificate is refused
    strict = make_context(False, *files[1], [ders[0]])
    strict.verify_flags &= ~NO_CHECK_TIME
    results = await _handshake_pair(make_context(True, *files[0], [ders[1]]), strict,
                                     lambda d: True, lambda d: True)
    assert any(isinstance(r, BaseException) for r in results)


async def test_revoking_a_device_closes_its_live_session_at_once(devices):
    a, b = await devices("phone"), await devices("desktop")
    await pair(a, b)
    async with listening(b) as (listener, incoming):
        session = await dial(a.trust, a.hello(), b.identity.device_id, "127.0.0.1",
                             listener.port)
        other = await asyncio.wait_for(incoming.get(), 5)
        await b.registry.revoke(a.identity.device_id)
        # hang guards only (well under the 45 s keepalive): the revocation closes them
        await asyncio.wait_for(other.wait_closed(), 10)
        await asyncio.wait_for(session.wait_closed(), 10)
        assert "revoked" in other.close_reason


async def test_garbage_after_admission_closes_one_session_and_the_listener_serves_on(devices):
    a, b = await devices("phone"), await devices("desktop")
    await pair(a, b)
    async with listening(b, SessionOptions(max_frame=1024)) as (listener, incoming):
        bad = await dial(a.trust, a.hello(), b.identity.device_id, "127.0.0.1", listener.port)
        bad_other = await asyncio.wait_for(incoming.get(), 5)
        bad._core.max_frame = 10_000  # this side sends a frame the other refuses
        await bad.send(b"y" * 5000)
        await asyncio.wait_for(bad_other.wait_closed(), 5)
        assert "frame of" in bad_other.close_reason
        good = await dial(a.trust, a.hello(), b.identity.device_id, "127.0.0.1", listener.port)
        good_other = await asyncio.wait_for(incoming.get(), 5)
        await good.send(b"still here")
        assert await good_other.receive() == b"still here"
        await good.close()
        await bad.close()


def test_hello_names_are_checked(devices):
    with pytest.raises(Exception, match="malformed Hello"):
        PeerHello.decode(b"{}")
