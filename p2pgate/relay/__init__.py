"""Relay: the fallback server operators run, and the node's client for it.

Sans-I/O cores (time is an argument): `wire` (control messages, decoded strictly),
`auth` (the relay's proof of its key, device login bound to that key and the relay's
own URL, and the access rule), `access_tokens` (operator-signed JWTs), `broker` (who
is attached, invitations, splice keys), `rendezvous` (where splice halves and pairing
mailboxes meet), `limits` (per-IP admission, bytes per second, signalling),
`refusals` (a refused login said once, with its fix). Relay URLs are made canonical
by `p2pgate.urls` on both sides (`?id=RELAYID` pins a relay's key, `relay_key` keeps
that key in the relay's data dir). asyncio adapters:
`server` (aiohttp endpoints and control connections), `splicing` (the server's byte
splices), `mailbox` (the server's pairing mailboxes), `client` and `mailbox_client`
(the node's side). `config` and `metrics` serve the server;
`access` holds the node's relay tokens (config.toml, the admin API) and each relay's
login status.
"""
