"""The relay client with access tokens, against an in-process relay over loopback:
a token handed over while logged in takes effect at once (a new login), the URL it is
given in any accepted form is the one the relay checks."""

from __future__ import annotations

import asyncio
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pgate.identity import Identity
from p2pgate.relay.access_tokens import issue_token, key_id, public_key_text
from tests.relay.test_relay import device, relay


async def test_a_new_token_logs_in_again_at_once_and_a_bad_one_is_refused():
    signer = Ed25519PrivateKey.generate()
    keys = {key_id(signer.public_key()): public_key_text(signer.public_key())}
    ident = Identity.generate()
    now = time.time()
    first = issue_token(signer, ident.device_id, "fleet", 3600, now)
    later = issue_token(signer, ident.device_id, "fleet", 7200, now)
    async with relay(access="token", token_keys=keys, audience="fleet") as r:
        http_url = r.url.replace("ws://", "http://") + "/"
        async with device(http_url, ident, token=first) as (client, _, _):
            await asyncio.wait_for(client.wait_connected(), 5)
            logins, refusals = asyncio.Queue(), asyncio.Queue()
            client.on_connected = lambda: logins.put_nowait(client.token_expires_at)
            client.on_refused = refusals.put_nowait
            assert client.url == r.url
            await client.set_token(later)
            assert await asyncio.wait_for(logins.get(), 5) == int(now) + 7200
            assert client.refusal is None

            wrong = issue_token(signer, ident.device_id, "other-fleet", 3600, now)
            await client.set_token(wrong)
            assert await asyncio.wait_for(refusals.get(), 5) == "token_wrong_audience"
            assert client.refusal == "token_wrong_audience"
            assert not client.connected
            await client.set_token(later)
            assert await asyncio.wait_for(logins.get(), 5) == int(now) + 7200
        assert r.server.metrics.value("auth_failures_total", reason="token_wrong_audience") >= 1
        assert r.server.metrics.value("auth_failures_total", reason="bad_signature") == 0
