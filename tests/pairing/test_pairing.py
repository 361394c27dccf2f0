"""Pairing between real devices: SPAKE2 over loopback TCP, real registries."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from p2pgate.discovery.mdns import InvitersFound
from p2pgate.net.peers import Listener
from p2pgate.pairing.codes import BadCode, make_code, parse_code_or_uri
from p2pgate.pairing.service import PairingFailed, PairingService
from p2pgate.storage.registry import DeviceState
from tests.net.conftest import devices  # noqa: F401 (fixture)


def test_codes_parse_forgivingly_and_reject_typos():
    code, secret = make_code()
    assert parse_code_or_uri(code.upper().replace("-", " ")).password == code.encode()
    with pytest.raises(BadCode, match="not a pairing word"):
        parse_code_or_uri(code.rsplit("-", 1)[0] + "-zzzz")
    with pytest.raises(BadCode, match="looks like"):
        parse_code_or_uri("hello")
    with pytest.raises(BadCode, match="secret is damaged"):
        parse_code_or_uri(f"p2pgate://pair?c={code}&k=short")


@contextlib.asynccontextmanager
async def inviter_and_joiner(devices, clock=None):  # noqa: F811
    a, b = await devices("desktop"), await devices("phone")
    kw = {"clock": clock} if clock else {}
    svc_a = PairingService(a.identity, a.registry, lambda: "desktop", b"A" * 32, lambda: [],
                           **kw)
    svc_b = PairingService(b.identity, b.registry, lambda: "phone", b"B" * 32, lambda: [])

    async def no_sessions(_):
        raise AssertionError("no session expected")

    listener = Listener(a.trust, a.hello, no_sessions, pairing=svc_a.handle)
    await listener.start("127.0.0.1", 0)
    try:
        yield a, b, svc_a, svc_b, f"127.0.0.1:{listener.port}"
    finally:
        await listener.stop()


async def test_pairing_by_code_and_by_uri_trusts_both_sides(devices):  # noqa: F811
    async with inviter_and_joiner(devices) as (a, b, svc_a, svc_b, address):
        offer, uri = svc_a.create_offer()
        result_b = await svc_b.join(offer.code, address)
        status = svc_a.status(offer.nameplate)
        assert status.state == "paired"
        assert status.result.verification == result_b.verification
        assert status.result.k_pair == result_b.k_pair
        da = await a.registry.require(b.identity.device_id)
        db = await b.registry.require(a.identity.device_id)
        assert (da.state, db.state) == (DeviceState.TRUSTED, DeviceState.TRUSTED)
        assert da.k_pair == db.k_pair == result_b.k_pair
        assert (da.disc_key, db.disc_key) == (b"B" * 32, b"A" * 32)
        assert db.addresses == (address,)
        # the code is single use
        with pytest.raises(PairingFailed, match="expired or was already used"):
            await svc_b.join(offer.code, address)


async def test_pairing_by_uri(devices):  # noqa: F811
    async with inviter_and_joiner(devices) as (a, b, svc_a, svc_b, address):
        offer, uri = svc_a.create_offer()
        host, port = address.split(":")
        uri = uri.replace("c=", f"a={host}%3A{port}&c=")
        result = await svc_b.join(uri)
        assert svc_a.status(offer.nameplate).state == "paired"
        assert result.peer.name == "desktop"


async def test_wrong_code_fails_clearly_burns_after_three_and_leaves_no_trace(devices):  # noqa: F811
    async with inviter_and_joiner(devices) as (a, b, svc_a, svc_b, address):
        offer, _ = svc_a.create_offer()
        words = offer.code.split("-")
        wrong = "-".join([words[0], words[2], words[1]]) if words[1] != words[2] else (
            f"{words[0]}-acid-acorn")
        for attempt in range(3):
            with pytest.raises(PairingFailed) as err:
                await svc_b.join(wrong, address)
            expected = "too many wrong attempts" if attempt == 2 else "wrong code"
            assert expected in str(err.value)
            assert err.value.code == ("burned" if attempt == 2 else "wrong_code")
            assert svc_a.status(offer.nameplate).failures == attempt + 1
        assert await a.registry.devices() == []
        assert await b.registry.devices() == []
        with pytest.raises(PairingFailed, match="burned after 3 wrong tries") as err:
            await svc_b.join(offer.code, address)  # burned: even the right code fails now
        assert err.value.code == "burned"


async def test_expired_code_fails(devices):  # noqa: F811
    now = [1000.0]
    async with inviter_and_joiner(devices, clock=lambda: now[0]) as (a, b, svc_a, svc_b,
                                                                       address):
        offer, _ = svc_a.create_offer(ttl=60)
        now[0] += 61
        with pytest.raises(PairingFailed, match="expired"):
            await svc_b.join(offer.code, address)
        assert svc_a.status(offer.nameplate).state == "expired"
        assert await b.registry.devices() == []


async def test_raced_joiners_only_one_wins(devices):  # noqa: F811
    async with inviter_and_joiner(devices) as (a, b, svc_a, svc_b, address):
        c = await devices("laptop")
        svc_c = PairingService(c.identity, c.registry, lambda: "laptop", b"C" * 32, lambda: [])
        offer, _ = svc_a.create_offer()
        results = await asyncio.gather(svc_b.join(offer.code, address),
                                       svc_c.join(offer.code, address), return_exceptions=True)
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, PairingFailed)]
        assert len(winners) == 1
        assert len(losers) == 1
        assert len(await a.registry.trusted()) == 1


@contextlib.asynccontextmanager
async def second_inviter(devices, nameplate):  # noqa: F811
    """Another inviter on the LAN whose open offer happens to show `nameplate`."""
    c = await devices("laptop")
    svc_c = PairingService(c.identity, c.registry, lambda: "laptop", b"C" * 32, lambda: [])

    async def no_sessions(_):
        raise AssertionError("no session expected")

    listener = Listener(c.trust, c.hello, no_sessions, pairing=svc_c.handle)
    await listener.start("127.0.0.1", 0)
    svc_c.nameplates_in_use = lambda: frozenset(range(1, 100)) - {nameplate}
    try:
        offer, _ = svc_c.create_offer()
        assert offer.nameplate == nameplate
        yield c, svc_c, offer, f"127.0.0.1:{listener.port}"
    finally:
        await listener.stop()


def _lan(*addresses):
    async def find(nameplate):
        return InvitersFound(tuple((a,) for a in addresses), 0.1)
    return find


async def test_two_inviters_showing_one_nameplate_the_joiner_tries_each(devices):  # noqa: F811
    async with inviter_and_joiner(devices) as (a, b, svc_a, svc_b, address_a):
        offer_a, _ = svc_a.create_offer()
        async with second_inviter(devices, offer_a.nameplate) as (c, svc_c, offer_c, address_c):
            svc_b.find_inviters = _lan(address_a, address_c)
            result = await svc_b.join(offer_c.code)  # the desktop is tried first
            assert result.peer.name == "laptop"
            assert svc_c.status(offer_c.nameplate).state == "paired"
            # the failed confirmation counted against the desktop's offer only
            assert svc_a.status(offer_a.nameplate).failures == 1
            assert svc_a.status(offer_a.nameplate).state == "waiting"
            assert await a.registry.devices() == []


async def test_wrong_words_found_by_nameplate_say_wrong_code_and_count(devices):  # noqa: F811
    async with inviter_and_joiner(devices) as (a, b, svc_a, svc_b, address):
        offer, _ = svc_a.create_offer()
        svc_b.find_inviters = _lan(address)
        words = offer.code.split("-")
        pair = "fig-fox" if words[1:] == ["acid", "acorn"] else "acid-acorn"
        wrong = f"{words[0]}-{pair}"
        with pytest.raises(PairingFailed, match="wrong code") as err:
            await svc_b.join(wrong)
        assert err.value.code == "wrong_code"
        assert svc_a.status(offer.nameplate).failures == 1
        assert await b.registry.devices() == []
        svc_b.find_inviters = _lan()
        with pytest.raises(PairingFailed, match="no device on this LAN shows nameplate") as err:
            await svc_b.join(offer.code)
        assert err.value.code == "not_found"


async def test_advertised_nameplates_follow_the_offers(devices):  # noqa: F811
    now = [1000.0]
    async with inviter_and_joiner(devices, clock=lambda: now[0]) as (a, b, svc_a, svc_b,
                                                                       address):
        shown = []
        svc_a.on_offer_change = shown.append
        svc_a.nameplates_in_use = lambda: frozenset(range(1, 100)) - {7, 8}
        first, _ = svc_a.create_offer(ttl=60)
        second, _ = svc_a.create_offer(ttl=600)
        assert {first.nameplate, second.nameplate} == {7, 8}
        assert shown == [frozenset({first.nameplate}), frozenset({7, 8})]
        await svc_b.join(second.code, address)
        assert shown[-1] == frozenset({first.nameplate})  # paired: no longer shown
        now[0] += 61
        assert svc_a.advertised() == frozenset()  # expired
