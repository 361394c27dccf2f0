"""Pairing: a short code or a QR URI, SPAKE2 with key confirmation, then trust.

The words of a short code (`NAMEPLATE-word-word`) carry 16 bits, so nothing that
leaves the device before SPAKE2 may be a function of them: any hash or MAC of the
code lets a stranger test all 6.5 M codes offline in seconds. What each value on the
wire before TLS reveals to a stranger:

- mDNS TXT (`_p2pgate._tcp.local.`): `v` the protocol version; `n` 8 random bytes,
  new at every re-roll; `t` = HMAC(K_disc, n)[:8] under a 256-bit random key that only
  paired peers know; `p` the nameplates of open offers, in plain text. Instance and
  host names are random. A stranger learns that a p2pgate node is there and which
  nameplates are open, nothing about the words or who runs it.
- Admission on the P2P port: a random challenge, answered with HMAC(K_pair, challenge
  ‖ dialer nonce) under the 256-bit pair secret; a stranger receives no byte of
  certificate, ID or name.
- Pairing connections (`P2PG-PAIR`, on the P2P port or through a relay mailbox): the
  nameplate, the kind (code or URI) and SPAKE2 messages, which reveal nothing testable
  offline. The joiner confirms first, so a device that answers a nameplate (a stranger
  who advertises it too) learns one online guess per attempt; the inviter burns the
  code after 3 failed confirmations. Everything after confirmation is AEAD-sealed.
- Relay mailboxes: a code's box is its nameplate, a URI's is named by SHA-256 of its
  128-bit secret; the relay sees the nameplate, as in Magic Wormhole, never the words.

One nameplate for the LAN and the relays (`service.open_offer`, `relay_boxes`): with
relays configured, the first relay that answers allocates the offer's nameplate, as
Magic Wormhole's mailbox server does (never one of its other open offers; 1–99 while
any is free; it avoids the nameplates we and the LAN already show, which we send it),
and the mDNS advertisement shows that same number. The other relays are asked for it
too; one where another offer holds it carries only the URI's box (the code then works
on the LAN and the first relay). With no relay answering, the nameplate is picked here
(`create_offer`) and claimed on each relay later. The box is held by the inviter's
connection and closes with the offer (paired, or expired; a burned one stays shown
until it expires so a joiner learns it burned); if the relay drops it, it is claimed
again. A joiner on another network meets it by nameplate (code) or box (URI) through
the relays it knows (its own for a code, the URI's `r=`).
- DHT records: keys and values derived from K_pair (HKDF, per 24 h epoch); opaque to
  anyone without the pair secret.
- The QR URI carries the code, the 128-bit secret, addresses and relays; it is shown
  to the user and never sent by the node.
"""
