"""Pairing mailboxes on a real relay over loopback: allocated nameplates, boxes that
die with their inviter, squatter caps, capped splices and the relay's access mode;
pairing services of real devices meet through them."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pgate.identity import Identity
from p2pgate.pairing.codes import make_uri
from p2pgate.pairing.service import PairingFailed, PairingService
from p2pgate.relay.access_tokens import issue_token, key_id, public_key_text
from p2pgate.relay.client import RelayUnavailable
from p2pgate.relay.mailbox import SPLICE_BYTES
from p2pgate.relay.mailbox_client import hold_box, join_box
from tests.net.conftest import devices  # noqa: F401 (fixture)
from tests.relay.test_relay import relay


async def until(check, what):
    """Poll the relay's state (it has no event to await) for up to 5 s."""
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


@contextlib.asynccontextmanager
async def services(devices, url, *names):  # noqa: F811
    """A pairing service per name, on real devices, whose relay is `url` (no LAN)."""
    made = []
    for i, name in enumerate(names):
        d = await devices(name)
        made.append((d, PairingService(d.identity, d.registry, lambda n=name: n,
                                       bytes([65 + i]) * 32, lambda: [], relays=lambda: [url])))
    try:
        yield made
    finally:
        for _, svc in made:
            await svc.close()


async def test_two_inviters_at_once_get_different_nameplates_and_each_joiner_its_own(devices):  # noqa: F811
    async with relay() as r, services(devices, r.url, "desk", "laptop", "phone", "tv") as made:
        (_, desk), (_, laptop), (_, phone), (_, tv) = made
        for svc in (desk, laptop):  # both would pick nameplate 7 on their own
            svc._book._make = lambda: ("7-acid-acorn", "a" * 26)
        (offer_d, _), (offer_l, _) = await asyncio.gather(desk.open_offer(), laptop.open_offer())
        assert offer_d.nameplate != offer_l.nameplate
        assert {offer_d.code.split("-", 1)[1], offer_l.code.split("-", 1)[1]} == {"acid-acorn"}
        result = await phone.join(offer_l.code)  # no LAN: through the relay's mailbox
        assert result.peer.name == "laptop"
        assert laptop.status(offer_l.nameplate).state == "paired"
        assert desk.status(offer_d.nameplate).failures == 0  # no try burned on the other
        assert (await tv.join(offer_d.code)).peer.name == "desk"
        await until(lambda: len(r.server.mailboxes.boxes) == 0, "paired offers' boxes closed")


async def test_pairing_by_uri_through_the_relay_and_the_exchange_is_small(devices):  # noqa: F811
    async with relay() as r, services(devices, r.url, "desk", "phone") as made:
        (_, desk), (_, phone) = made
        offer, uri = await desk.open_offer()
        assert "r=ws%3A%2F%2F127.0.0.1" in uri
        result = await phone.join(uri)
        assert result.peer.name == "desk"
        spliced = r.server.metrics.value("bytes_total")
        assert 0 < spliced < SPLICE_BYTES  # both directions of a whole pairing exchange
        print(f"pairing exchange through the mailbox: {spliced} bytes")


async def test_a_box_dies_with_its_inviter_socket_slot_freed_joiner_told():
    identity = Identity.generate()
    async with relay() as r:
        box = await hold_box(r.url, identity, None, nameplate="new")
        assert 1 <= box.nameplate <= 99
        assert r.server.mailboxes.boxes.boxes_of("127.0.0.1") == 1
        joining = asyncio.ensure_future(join_box(r.url, identity, None, nameplate=box.nameplate))
        assert await asyncio.wait_for(box.next_joiner(), 5)  # told of the joiner ...
        started = asyncio.get_running_loop().time()
        await box.close()  # ... and gone before it answers
        with pytest.raises(RelayUnavailable, match="nobody is waiting"):
            await asyncio.wait_for(joining, 5)
        assert asyncio.get_running_loop().time() - started < 2  # at once, not after a wait
        await until(lambda: r.server.mailboxes.boxes.boxes_of("127.0.0.1") == 0, "slot freed")
        assert r.server.admission.open_connections("127.0.0.1") == 0
        with pytest.raises(RelayUnavailable, match="nobody is waiting"):
            await join_box(r.url, identity, None, nameplate=box.nameplate)  # never spliced


async def test_squatters_are_capped_and_joiners_cannot_scan_quickly():
    identity = Identity.generate()
    async with relay() as r:
        held = [await hold_box(r.url, identity, None, nameplate="new") for _ in range(8)]
        with pytest.raises(RelayUnavailable, match="too many open pairing offers"):
            await hold_box(r.url, identity, None, nameplate="new")
        await held.pop().close()
        await until(lambda: r.server.mailboxes.boxes.boxes_of("127.0.0.1") == 7, "slot freed")
        held.append(await hold_box(r.url, identity, None, nameplate="new"))  # the slot is back
        shown = {b.nameplate for b in held}
        free = next(n for n in range(1, 100) if n not in shown)
        for _ in range(6):
            with pytest.raises(RelayUnavailable, match="nobody is waiting"):
                await join_box(r.url, identity, None, nameplate=free)
        with pytest.raises(RelayUnavailable, match="too many pairing attempts"):
            await join_box(r.url, identity, None, nameplate=held[0].nameplate)
        for box in held:
            await box.close()


async def test_a_mailbox_splice_is_capped_in_bytes():
    identity = Identity.generate()
    async with relay() as r:
        box = await hold_box(r.url, identity, None, nameplate="new")
        joining = asyncio.ensure_future(join_box(r.url, identity, None, nameplate=box.nameplate))
        inviter = await box.answer(await asyncio.wait_for(box.next_joiner(), 5))
        joiner = await asyncio.wait_for(joining, 5)
        got = 0
        with contextlib.suppress(Exception):
            for _ in range(64):  # 1 MiB offered, in 16 KiB frames
                await joiner.write(b"x" * (16 << 10))
        async with asyncio.timeout(5):
            while chunk := await inviter.read():
                got += len(chunk)
        assert got <= SPLICE_BYTES  # the relay cut the splice: no open relay
        assert r.server.metrics.value("refusals_total", reason="mailbox_bytes") == 1
        for stream in (inviter, joiner):
            await stream.close()
        await box.close()


async def test_an_allowlist_relay_serves_mailboxes_only_to_its_allowed_devices(devices):  # noqa: F811
    a, b = Identity.generate(), Identity.generate()
    async with relay(access="allowlist", allowlist=(str(a.device_id),)) as r:
        with pytest.raises(RelayUnavailable, match="only to its allowed devices"):
            await hold_box(r.url, b, None, nameplate="new")  # a device it does not know
        async with aiohttp.ClientSession() as s, s.ws_connect(r.url + "/v1/mailbox") as ws:
            hello = await ws.receive_json()
            assert hello["login"] is True
            await ws.send_json({"role": "joiner", "nameplate": 1})  # anonymous
            assert (await ws.receive_json())["reason"] == "login_required"
        box = await hold_box(r.url, a, None, nameplate="new")  # an allowed device may
        with pytest.raises(RelayUnavailable, match="only to its allowed devices"):
            await join_box(r.url, b, None, nameplate=box.nameplate)
        assert r.server.mailboxes.answers.get_timer() is None  # nobody was told of b
        await box.close()
    async with relay(access="allowlist") as r, services(devices, r.url, "desk", "phone") as made:
        (_, desk), (_, phone) = made
        offer, _ = await desk.open_offer()  # no relay nameplate: picked here, LAN only
        with pytest.raises(PairingFailed, match="only to its allowed devices"):
            await phone.join(offer.code)


async def test_the_first_relay_allocates_and_another_relay_where_it_is_taken_carries_the_uri(
        devices):  # noqa: F811
    squatter = Identity.generate()
    async with relay() as r1, relay() as r2:
        taken = await hold_box(r2.url, squatter, None, nameplate=42)
        d, p = await devices("desk"), await devices("phone")
        desk = PairingService(d.identity, d.registry, lambda: "desk", b"A" * 32, lambda: [],
                              relays=lambda: [r1.url, r2.url])
        phone = PairingService(p.identity, p.registry, lambda: "phone", b"B" * 32, lambda: [],
                               relays=lambda: [r2.url])
        desk.nameplates_in_use = lambda: frozenset(range(1, 100)) - {42}  # seen on the LAN
        try:
            offer, uri = await desk.open_offer()
            assert offer.nameplate == 42  # r1's choice, avoiding the LAN's nameplates
            await until(lambda: len(r2.server.mailboxes.boxes) == 2, "the URI's box on r2")
            assert uri.count("127.0.0.1") == 2  # both relays in the QR code
            only_r2 = make_uri(offer.code, offer.secret, [], [r2.url])
            assert (await phone.join(only_r2)).peer.name == "desk"
            assert r1.server.metrics.value("bytes_total") == 0  # it went through r2
        finally:
            await desk.close()
            await taken.close()


async def test_a_token_relay_serves_mailboxes_only_to_devices_with_a_valid_token():
    signer, a, b = Ed25519PrivateKey.generate(), Identity.generate(), Identity.generate()
    keys = {key_id(signer.public_key()): public_key_text(signer.public_key())}
    now = time.time()
    token_a = issue_token(signer, a.device_id, "fleet", 3600, now)
    expired_b = issue_token(signer, b.device_id, "fleet", 10, now - 1000)
    async with relay(access="token", token_keys=keys, audience="fleet") as r:
        with pytest.raises(RelayUnavailable, match="only to devices with a valid token"):
            await hold_box(r.url, a, None, nameplate="new")
        box = await hold_box(r.url, a, token_a, nameplate="new")
        with pytest.raises(RelayUnavailable, match=r"valid token \(token_expired\)"):
            await join_box(r.url, b, expired_b, nameplate=box.nameplate)
        with pytest.raises(RelayUnavailable, match="only to devices with a valid token"):
            await join_box(r.url, b, token_a, nameplate=box.nameplate)  # a's token, not b's
        await box.close()


async def test_a_box_closes_when_its_offer_s_time_runs_out():
    identity = Identity.generate()
    async with relay() as r:
        box = await hold_box(r.url, identity, None, nameplate="new", ttl=1)
        with pytest.raises(RelayUnavailable, match="relay closed the mailbox"):
            await asyncio.wait_for(box.next_joiner(), 5)
        assert len(r.server.mailboxes.boxes) == 0
        with pytest.raises(RelayUnavailable, match="nobody is waiting"):
            await join_box(r.url, identity, None, nameplate=box.nameplate)
        await box.close()
